//! The console's pages. Each handler checks the permission of the matching API route first
//! (see `docs/console.md`), then reads only in-memory state or one bounded query.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use magic_contract::{Capability, CapabilityDiff, Contract};
use serde::Deserialize;

use super::activity::{Bucket, BUCKETS, BUCKET_SECS};
use super::html::{self, esc, fmt_bytes, fmt_num, table, url_enc, Chrome, Line};
use super::{html_response, need, need_csrf, Console, Viewer};
use crate::api::RequestId;
use crate::rbac::Permission;
use crate::registry::{parse_version, DeployedVersion};

fn render(v: &Viewer, title: &str, section: &str, refresh: Option<u32>, body: &str) -> Response {
    html_response(
        StatusCode::OK,
        html::page(
            &Chrome {
                title,
                section,
                who: Some(&v.identity.name),
                csrf: v.csrf.as_deref(),
                refresh,
            },
            body,
        ),
    )
}

fn error_page(v: &Viewer, status: StatusCode, section: &str, msg: &str) -> Response {
    html_response(
        status,
        html::page(
            &Chrome {
                title: "Error",
                section,
                who: Some(&v.identity.name),
                csrf: v.csrf.as_deref(),
                refresh: None,
            },
            &html::notice("error", &esc(msg)),
        ),
    )
}

fn cap_badges(names: &[String]) -> String {
    if names.is_empty() {
        return "<span class=\"muted\">none</span>".into();
    }
    names
        .iter()
        .map(|c| format!("<span class=\"cap\">{}</span>", esc(c)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One capability with its options, as `name: {json}`.
fn cap_detail(c: &Capability) -> String {
    let opts = serde_json::to_value(c)
        .ok()
        .and_then(|v| v.get(c.name()).cloned())
        .filter(|v| !v.is_null())
        .map(|v| format!(" <code>{}</code>", esc(&v.to_string())))
        .unwrap_or_default();
    format!("<span class=\"cap\">{}</span>{opts}", esc(c.name()))
}

fn limits(c: &Contract) -> String {
    format!(
        "timeout <span class=\"limit\">{}</span>, cpu <span class=\"limit\">{}</span>, memory <span class=\"limit\">{}</span>",
        esc(&magic_contract::units::format_duration(c.resources.timeout)),
        fmt_num(c.resources.cpu),
        fmt_bytes(c.resources.memory)
    )
}

/// The capability diff as a list (empty-safe).
pub fn diff_html(d: &CapabilityDiff) -> String {
    if d.added.is_empty() && d.widened.is_empty() && d.removed.is_empty() {
        return html::notice(
            "ok",
            "Same capabilities and limits: nothing added, widened or removed.",
        );
    }
    let mut h = String::from("<ul class=\"diff\">");
    for (class, entries) in [
        ("added", &d.added),
        ("widened", &d.widened),
        ("removed", &d.removed),
    ] {
        for e in entries {
            let _ = write!(
                h,
                "<li class=\"{class}\"><b>{class}</b> <span class=\"cap\">{}</span></li>",
                esc(e)
            );
        }
    }
    h.push_str("</ul>");
    if d.widens() {
        h.push_str(&html::notice(
            "warn",
            "The second version may do things the first one could not.",
        ));
    }
    h
}

pub(super) async fn controllers(
    State(c): State<Console>,
    Extension(v): Extension<Viewer>,
) -> Response {
    const S: &str = "/console/controllers";
    if let Err(r) = need(&v, Permission::List, S) {
        return r;
    }
    let rows: Vec<Vec<String>> =
        c.rt.registry
            .list()
            .into_iter()
            .map(|s| {
                vec![
                    format!(
                        "<a href=\"/console/controllers/{}\">{}</a>",
                        url_enc(&s.name),
                        esc(&s.name)
                    ),
                    format!("<b>{}</b>", esc(&s.active_version)),
                    s.versions.to_string(),
                    cap_badges(&s.capabilities),
                ]
            })
            .collect();
    let body = table(
        "Deployed controllers",
        &[
            "Controller",
            "Active version",
            "Versions",
            "Capabilities (active)",
        ],
        &rows,
    );
    render(&v, "Controllers", S, None, &body)
}

#[derive(Deserialize)]
pub(super) struct DiffQuery {
    from: Option<String>,
    to: Option<String>,
    rolled_back: Option<String>,
}

fn version_of(c: &Console, name: &str, version: &str) -> Option<std::sync::Arc<DeployedVersion>> {
    let v = parse_version(version).ok()?;
    c.rt.registry.resolve(name, Some(&v)).ok().map(|(d, _)| d)
}

pub(super) async fn controller(
    State(c): State<Console>,
    Extension(v): Extension<Viewer>,
    Path(name): Path<String>,
    Query(q): Query<DiffQuery>,
) -> Response {
    const S: &str = "/console/controllers";
    if let Err(r) = need(&v, Permission::Status, S) {
        return r;
    }
    let status = match c.rt.registry.status(&name) {
        Ok(s) => s,
        Err(e) => return error_page(&v, StatusCode::NOT_FOUND, S, &e.message),
    };
    let Ok((active, _)) = c.rt.registry.resolve(&name, None) else {
        return error_page(&v, StatusCode::NOT_FOUND, S, "controller vanished");
    };
    let may_rollback = v.identity.may(Permission::Rollback);
    let mut body = String::new();
    if let Some(rb) = &q.rolled_back {
        body.push_str(&html::notice(
            "ok",
            &format!("Rolled back: version <b>{}</b> is now active.", esc(rb)),
        ));
    }
    let _ = write!(
        body,
        "<p>Active version <b>{}</b>. <a href=\"/console/executions?controller={}\">Executions</a> · <a href=\"/console/audit?controller={}\">Audit records</a></p>",
        esc(&status.active_version),
        url_enc(&name),
        url_enc(&name)
    );
    let rows: Vec<Vec<String>> = status
        .versions
        .iter()
        .map(|vi| {
            let action = if vi.active {
                "<b>active</b>".to_string()
            } else if may_rollback {
                format!(
                    "<a href=\"/console/controllers/{}/rollback?to={}\">Roll back to {}…</a>",
                    url_enc(&name),
                    url_enc(&vi.version),
                    esc(&vi.version)
                )
            } else {
                String::new()
            };
            vec![
                esc(&vi.version),
                format!(
                    "<code>{}</code>",
                    esc(vi.digest.get(..19).unwrap_or(&vi.digest))
                ),
                esc(&vi.deployed_at),
                esc(&vi.deployed_by),
                cap_badges(&vi.capabilities),
                action,
            ]
        })
        .collect();
    body.push_str(&table(
        "Versions (newest first)",
        &[
            "Version",
            "Digest",
            "Deployed at",
            "By",
            "Capabilities",
            "Status",
        ],
        &rows,
    ));
    body.push_str("<h2>Active contract</h2><dl class=\"kv\"><dt>Capabilities</dt><dd>");
    if active.contract.capabilities.is_empty() {
        body.push_str("none (everything is denied)");
    } else {
        body.push_str("<ul>");
        for cap in &active.contract.capabilities {
            let _ = write!(body, "<li>{}</li>", cap_detail(cap));
        }
        body.push_str("</ul>");
    }
    let _ = write!(
        body,
        "</dd><dt>Limits</dt><dd>{}</dd></dl>",
        limits(&active.contract)
    );
    // Capability diff between any two versions.
    let versions: Vec<&str> = status.versions.iter().map(|v| v.version.as_str()).collect();
    let from = q
        .from
        .clone()
        .or_else(|| versions.get(1).map(|s| s.to_string()))
        .unwrap_or_else(|| status.active_version.clone());
    let to =
        q.to.clone()
            .unwrap_or_else(|| status.active_version.clone());
    let options = |sel: &str| {
        versions
            .iter()
            .map(|x| {
                format!(
                    "<option{}>{}</option>",
                    if *x == sel { " selected" } else { "" },
                    esc(x)
                )
            })
            .collect::<String>()
    };
    let _ = write!(
        body,
        "<h2 id=\"diff\">Capability diff</h2><form method=\"get\" class=\"search\" action=\"#diff\">\
         <div><label for=\"from\">From version</label><select id=\"from\" name=\"from\">{}</select></div>\
         <div><label for=\"to\">To version</label><select id=\"to\" name=\"to\">{}</select></div>\
         <div><button type=\"submit\">Compare</button></div></form>",
        options(&from),
        options(&to)
    );
    match (version_of(&c, &name, &from), version_of(&c, &name, &to)) {
        (Some(a), Some(b)) => {
            let _ = write!(
                body,
                "<p>From <b>{}</b> to <b>{}</b>:</p>{}",
                esc(&from),
                esc(&to),
                diff_html(&magic_contract::capability_diff(
                    Some(&a.contract),
                    &b.contract
                ))
            );
            if a.contract.resources != b.contract.resources {
                let _ = write!(
                    body,
                    "<p>Limits change from {} to {}.</p>",
                    limits(&a.contract),
                    limits(&b.contract)
                );
            }
        }
        _ => body.push_str(&html::notice("error", "Pick two deployed versions.")),
    }
    render(&v, &format!("Controller {name}"), S, None, &body)
}

#[derive(Deserialize)]
pub(super) struct RollbackQuery {
    to: Option<String>,
}

pub(super) async fn rollback_confirm(
    State(c): State<Console>,
    Extension(v): Extension<Viewer>,
    Path(name): Path<String>,
    Query(q): Query<RollbackQuery>,
) -> Response {
    const S: &str = "/console/controllers";
    if let Err(r) = need(&v, Permission::Rollback, S) {
        return r;
    }
    let Ok((active, _)) = c.rt.registry.resolve(&name, None) else {
        return error_page(&v, StatusCode::NOT_FOUND, S, "no such controller");
    };
    let to = q.to.unwrap_or_default();
    let Some(target) = version_of(&c, &name, &to) else {
        return error_page(
            &v,
            StatusCode::NOT_FOUND,
            S,
            &format!("{name} has no version {to:?}"),
        );
    };
    let mut body = format!(
        "<p>Make version <b>{}</b> of <b>{}</b> active instead of <b>{}</b>? New executions use it at once; \
         the change is audited and can be undone by rolling back again.</p>\
         <h2>What changes</h2><p>Capabilities from the active {} to {}:</p>{}",
        esc(&to),
        esc(&name),
        esc(&active.version.to_string()),
        esc(&active.version.to_string()),
        esc(&to),
        diff_html(&magic_contract::capability_diff(Some(&active.contract), &target.contract))
    );
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/console/controllers/{}/rollback\">{}\
         <input type=\"hidden\" name=\"version\" value=\"{}\"><input type=\"hidden\" name=\"confirm\" value=\"yes\">\
         <button type=\"submit\" class=\"danger\">Yes, roll back to {}</button> \
         <a href=\"/console/controllers/{}\">Cancel</a></form>",
        url_enc(&name),
        v.csrf.as_deref().map(html::csrf_field).unwrap_or_default(),
        esc(&to),
        esc(&to),
        url_enc(&name)
    );
    render(&v, &format!("Roll back {name}?"), S, None, &body)
}

#[derive(Deserialize)]
pub(super) struct RollbackForm {
    csrf: Option<String>,
    version: Option<String>,
    confirm: Option<String>,
}

pub(super) async fn rollback(
    State(c): State<Console>,
    Extension(v): Extension<Viewer>,
    Extension(rid): Extension<RequestId>,
    Path(name): Path<String>,
    Form(f): Form<RollbackForm>,
) -> Response {
    const S: &str = "/console/controllers";
    if let Err(r) = need(&v, Permission::Rollback, S) {
        return r;
    }
    if let Err(r) = need_csrf(&v, f.csrf.as_deref(), S) {
        return r;
    }
    if f.confirm.as_deref() != Some("yes") {
        return error_page(
            &v,
            StatusCode::BAD_REQUEST,
            S,
            "A rollback needs the confirmation step: nothing was changed.",
        );
    }
    let version = match parse_version(f.version.as_deref().unwrap_or_default()) {
        Ok(x) => x,
        Err(e) => return error_page(&v, StatusCode::BAD_REQUEST, S, &e.message),
    };
    let (previous, active) = match c
        .rt
        .registry
        .rollback(&name, &version, &v.identity.name)
        .await
    {
        Ok(x) => x,
        Err(e) => return error_page(&v, e.status(), S, &e.message),
    };
    if let Err(f) = crate::api::audit_admin(
        &c.rt,
        &rid,
        &v.identity,
        "rollback",
        &name,
        Some(&active),
        Some(format!("{name}@{active}")),
        serde_json::json!({ "previous_version": previous, "via": "console" }),
    )
    .await
    {
        return error_page(&v, f.error.status(), S, &f.error.message);
    }
    tracing::info!(request_id = %rid.0, event = "controller_rolled_back", controller = %name, from = %previous, to = %active, actor = %v.identity.name, via = "console");
    Redirect::to(&format!(
        "/console/controllers/{}?rolled_back={}",
        url_enc(&name),
        url_enc(&active)
    ))
    .into_response()
}

#[derive(Deserialize)]
pub(super) struct ExecutionsQuery {
    controller: Option<String>,
    refresh: Option<u32>,
}

fn per_second(b: &Bucket, n: u64) -> Option<f64> {
    Some(n as f64 / BUCKET_SECS as f64).filter(|_| b.start > 0)
}

/// The three charts of one controller's last hour.
fn charts(series: &[Bucket]) -> String {
    let rate: Vec<Option<f64>> = series.iter().map(|b| per_second(b, b.count)).collect();
    // Error rate by code: the four codes with the most errors.
    let mut by_code: BTreeMap<&str, u64> = BTreeMap::new();
    for b in series {
        for (code, n) in &b.errors {
            *by_code.entry(code.as_str()).or_default() += n;
        }
    }
    let mut codes: Vec<(&str, u64)> = by_code.into_iter().collect();
    codes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    codes.truncate(4);
    let classes = ["s2", "s4", "s5", "s1"];
    let error_lines: Vec<Line<'_>> = if codes.is_empty() {
        vec![Line {
            label: "all codes",
            class: "s2",
            values: series.iter().map(|b| per_second(b, 0)).collect(),
        }]
    } else {
        codes
            .iter()
            .zip(classes)
            .map(|((code, _), class)| Line {
                label: code,
                class,
                values: series
                    .iter()
                    .map(|b| per_second(b, b.errors.get(*code).copied().unwrap_or(0)))
                    .collect(),
            })
            .collect()
    };
    let q = |p: f64| -> Vec<Option<f64>> { series.iter().map(|b| b.quantile(p)).collect() };
    let mut h = String::new();
    h.push_str(&html::line_chart(
        "rate",
        "Executions per second (10 s buckets)",
        "/s",
        &[Line {
            label: "rate",
            class: "s1",
            values: rate,
        }],
        "1 hour ago",
        "now",
    ));
    h.push_str(&html::line_chart(
        "errors",
        "Errors per second by code",
        "/s",
        &error_lines,
        "1 hour ago",
        "now",
    ));
    h.push_str(&html::line_chart(
        "latency",
        "Latency percentiles (ms)",
        "ms",
        &[
            Line {
                label: "p50",
                class: "s3",
                values: q(0.5),
            },
            Line {
                label: "p95",
                class: "s5",
                values: q(0.95),
            },
            Line {
                label: "p99",
                class: "s2",
                values: q(0.99),
            },
        ],
        "1 hour ago",
        "now",
    ));
    let total: u64 = series.iter().map(|b| b.count).sum();
    let errors: u64 = series.iter().map(Bucket::error_count).sum();
    let _ = write!(
        h,
        "<p>Last hour on this node: <b>{total}</b> executions, <b>{errors}</b> failed{}.</p>",
        if total > 0 {
            format!(" ({}%)", fmt_num(errors as f64 * 100.0 / total as f64))
        } else {
            String::new()
        }
    );
    h
}

fn executions_table(list: &[super::activity::ExecutionSummary]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|e| {
            vec![
                format!(
                    "<a class=\"mono\" href=\"/console/executions/{}\">{}</a>",
                    url_enc(&e.request_id),
                    esc(&e.request_id)
                ),
                esc(&e.controller),
                esc(&e.version),
                format!(
                    "<span class=\"status-{}\">{}</span>{}",
                    esc(&e.status),
                    esc(&e.status),
                    e.error_code
                        .as_deref()
                        .map(|c| format!(" <code>{}</code>", esc(c)))
                        .unwrap_or_default()
                ),
                format!("{} ms", fmt_num(e.duration_ms)),
                cap_badges(&e.capabilities_used),
                esc(&e.finished_at),
            ]
        })
        .collect();
    table(
        "Recent executions on this node (newest first)",
        &[
            "Request ID",
            "Controller",
            "Version",
            "Status",
            "Duration",
            "Capabilities used",
            "Finished",
        ],
        &rows,
    )
}

pub(super) async fn executions(
    State(c): State<Console>,
    Extension(v): Extension<Viewer>,
    Query(q): Query<ExecutionsQuery>,
) -> Response {
    const S: &str = "/console/executions";
    if let Err(r) = need(&v, Permission::Status, S) {
        return r;
    }
    let activity = &c.rt.metrics.activity;
    let mut names: Vec<String> = c.rt.registry.list().into_iter().map(|s| s.name).collect();
    for n in activity.controllers() {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names.sort();
    let selected = q
        .controller
        .clone()
        .filter(|n| !n.is_empty())
        .filter(|n| names.contains(n));
    let refresh = q.refresh.filter(|s| *s > 0).map(|s| s.clamp(5, 300));
    let mut body = String::new();
    let opts: String = std::iter::once(format!(
        "<option value=\"\"{}>all controllers</option>",
        if selected.is_none() { " selected" } else { "" }
    ))
    .chain(names.iter().map(|n| {
        format!(
            "<option{}>{}</option>",
            if selected.as_deref() == Some(n) {
                " selected"
            } else {
                ""
            },
            esc(n)
        )
    }))
    .collect();
    let ctl_q = selected
        .as_deref()
        .map(|s| format!("controller={}&", url_enc(s)))
        .unwrap_or_default();
    let _ = write!(
        body,
        "<form method=\"get\" class=\"search\"><div><label for=\"controller\">Controller</label>\
         <select id=\"controller\" name=\"controller\">{opts}</select></div>\
         <div><button type=\"submit\">Show</button></div></form><p>{}</p>",
        match refresh {
            Some(_) => format!(
                "Reloading every {} s. <a href=\"/console/executions?{}\">Stop auto-refresh</a>",
                refresh.unwrap_or(10),
                ctl_q.trim_end_matches('&')
            ),
            None => format!(
                "<a href=\"/console/executions?{ctl_q}refresh=10\">Auto-refresh every 10 s</a>"
            ),
        }
    );
    match &selected {
        Some(name) => {
            let _ = write!(body, "<h2>{} over the last hour</h2>", esc(name));
            body.push_str(&charts(&activity.series(name)));
        }
        None => {
            // One compact row per controller instead of charts for all (keeps the page small).
            let rows: Vec<Vec<String>> = names
                .iter()
                .map(|n| {
                    let s = activity.series(n);
                    let total: u64 = s.iter().map(|b| b.count).sum();
                    let errors: u64 = s.iter().map(Bucket::error_count).sum();
                    let mut merged = Bucket {
                        latency: vec![0; s.first().map(|b| b.latency.len()).unwrap_or(0)],
                        ..Bucket::default()
                    };
                    for b in &s {
                        for (m, x) in merged.latency.iter_mut().zip(&b.latency) {
                            *m += x;
                        }
                    }
                    let p = |q: f64| {
                        merged
                            .quantile(q)
                            .map(|x| format!("{} ms", fmt_num(x)))
                            .unwrap_or_else(|| "–".into())
                    };
                    vec![
                        format!(
                            "<a href=\"/console/executions?controller={}\">{}</a>",
                            url_enc(n),
                            esc(n)
                        ),
                        format!("{}/min", fmt_num(total as f64 / 60.0)),
                        total.to_string(),
                        errors.to_string(),
                        p(0.5),
                        p(0.95),
                        p(0.99),
                    ]
                })
                .collect();
            body.push_str(&table(
                "Last hour per controller (pick one for charts)",
                &[
                    "Controller",
                    "Rate",
                    "Executions",
                    "Errors",
                    "p50",
                    "p95",
                    "p99",
                ],
                &rows,
            ));
        }
    }
    body.push_str(&executions_table(&activity.recent(selected.as_deref(), 50)));
    let _ = BUCKETS;
    render(&v, "Executions", S, refresh, &body)
}

fn audit_rows(records: &[magic_audit::AuditRecord]) -> Vec<Vec<String>> {
    records
        .iter()
        .map(|r| {
            let details = if r.details.len() > 200 {
                format!("{}…", r.details.get(..200).unwrap_or_default())
            } else {
                r.details.clone()
            };
            vec![
                r.seq.to_string(),
                esc(&r.timestamp),
                esc(&r.event),
                r.request_id
                    .as_deref()
                    .map(|id| {
                        format!(
                            "<a class=\"mono\" href=\"/console/executions/{}\">{}</a>",
                            url_enc(id),
                            esc(id)
                        )
                    })
                    .unwrap_or_default(),
                esc(&format!(
                    "{}{}",
                    r.controller.as_deref().unwrap_or(""),
                    r.version
                        .as_deref()
                        .map(|v| format!("@{v}"))
                        .unwrap_or_default()
                )),
                esc(r.actor.as_deref().unwrap_or("")),
                esc(r.capability.as_deref().unwrap_or("")),
                esc(r.target.as_deref().unwrap_or("")),
                esc(r.outcome.as_deref().unwrap_or("")),
                format!("<code>{}</code>", esc(&details)),
            ]
        })
        .collect()
}

const AUDIT_HEADERS: [&str; 10] = [
    "Seq",
    "Time",
    "Event",
    "Request ID",
    "Controller",
    "Actor",
    "Capability",
    "Target",
    "Outcome",
    "Details",
];

pub(super) async fn execution(
    State(c): State<Console>,
    Extension(v): Extension<Viewer>,
    Path(request_id): Path<String>,
) -> Response {
    const S: &str = "/console/executions";
    if let Err(r) = need(&v, Permission::Status, S) {
        return r;
    }
    let activity = &c.rt.metrics.activity;
    let mut body = String::new();
    match activity.execution(&request_id) {
        Some(e) => {
            let _ = write!(
                body,
                "<dl class=\"kv\"><dt>Request ID</dt><dd class=\"mono\">{}</dd><dt>Controller</dt><dd><a href=\"/console/controllers/{}\">{}</a> version {}</dd>\
                 <dt>Status</dt><dd class=\"status-{}\">{}{}</dd><dt>Duration</dt><dd>{} ms</dd><dt>Capabilities used</dt><dd>{}</dd>\
                 <dt>Actor</dt><dd>{}</dd><dt>Finished</dt><dd>{}</dd></dl>",
                esc(&e.request_id),
                url_enc(&e.controller),
                esc(&e.controller),
                esc(&e.version),
                esc(&e.status),
                esc(&e.status),
                e.error_code.as_deref().map(|c| format!(" ({})", esc(c))).unwrap_or_default(),
                fmt_num(e.duration_ms),
                cap_badges(&e.capabilities_used),
                esc(&e.actor),
                esc(&e.finished_at)
            );
        }
        None => body.push_str(&html::notice(
            "warn",
            "This node does not remember this execution (it ran elsewhere or is older than the last 500). Its audit records are below.",
        )),
    }
    let logs = activity.logs(&request_id);
    let rows: Vec<Vec<String>> = logs
        .iter()
        .map(|l| vec![esc(&l.level), format!("<code>{}</code>", esc(&l.message))])
        .collect();
    body.push_str("<h2>Log lines</h2>");
    body.push_str(&table(
        "Controller log lines (this node, up to 50)",
        &["Level", "Message"],
        &rows,
    ));
    body.push_str("<h2>Audit records</h2>");
    if v.identity.may(Permission::AuditRead) {
        let filter = magic_audit::SearchFilter {
            request_id: Some(request_id.clone()),
            ..Default::default()
        };
        match c.rt.audit_chain.search(&filter, 200).await {
            Ok(mut records) => {
                records.reverse();
                body.push_str(&table(
                    "Audit records of this request (oldest first)",
                    &AUDIT_HEADERS,
                    &audit_rows(&records),
                ));
            }
            Err(e) => body.push_str(&html::notice(
                "error",
                &format!("The audit log is unavailable: {}", esc(&e.to_string())),
            )),
        }
    } else {
        body.push_str(&html::notice(
            "warn",
            "Reading audit records needs the AuditRead permission (auditor or admin).",
        ));
    }
    render(&v, &format!("Execution {request_id}"), S, None, &body)
}

#[derive(Deserialize)]
pub(super) struct AuditQuery {
    request_id: Option<String>,
    controller: Option<String>,
    actor: Option<String>,
    event: Option<String>,
    before: Option<u64>,
    verify: Option<String>,
}

/// Records per audit page.
const AUDIT_PAGE: u64 = 50;

pub(super) async fn audit(
    State(c): State<Console>,
    Extension(v): Extension<Viewer>,
    Query(q): Query<AuditQuery>,
) -> Response {
    const S: &str = "/console/audit";
    if let Err(r) = need(&v, Permission::AuditRead, S) {
        return r;
    }
    let mut body = String::new();
    // Verification status and the latest checkpoint.
    if q.verify.is_some() {
        match c.rt.audit_chain.verify().await {
            Ok(report) => {
                if let Ok(mut slot) = c.verified.lock() {
                    *slot = Some((magic_audit::record::now_timestamp(), report));
                }
            }
            Err(e) => body.push_str(&html::notice(
                "error",
                &format!("Verification could not run: {}", esc(&e.to_string())),
            )),
        }
    }
    let last = c.verified.lock().ok().and_then(|s| s.clone());
    body.push_str("<h2>Chain</h2>");
    match last {
        Some((at, r)) if r.is_ok() => body.push_str(&html::notice(
            "ok",
            &format!(
                "Intact as of {}: {} records and {} signed checkpoints checked; head seq {}.",
                esc(&at),
                r.records_checked,
                r.checkpoints_checked,
                r.head_seq
            ),
        )),
        Some((at, r)) => body.push_str(&html::notice(
            "error",
            &format!(
                "TAMPERED as of {}: first bad record {}.",
                esc(&at),
                esc(&r
                    .first_bad
                    .map(|b| format!("seq {}: {}", b.seq, b.reason))
                    .unwrap_or_default())
            ),
        )),
        None => body.push_str(&html::notice(
            "warn",
            "Not verified since this node started.",
        )),
    }
    body.push_str("<form method=\"get\" class=\"search\"><input type=\"hidden\" name=\"verify\" value=\"1\"><button type=\"submit\">Verify the whole chain now</button></form>");
    match c.rt.audit_chain.latest_checkpoint().await {
        Ok(Some(cp)) => {
            let _ = write!(
                body,
                "<dl class=\"kv\"><dt>Latest signed checkpoint</dt><dd>seq {} at {}</dd><dt>Head hash</dt><dd class=\"mono\">{}</dd>\
                 <dt>Signed by</dt><dd class=\"mono\">{}</dd><dt>Signature</dt><dd class=\"mono\">{}…</dd><dt>This node's key</dt><dd class=\"mono\">{}</dd></dl>",
                cp.seq,
                esc(&cp.timestamp),
                esc(&cp.head_hash),
                esc(&cp.public_key),
                esc(cp.signature.get(..32).unwrap_or(&cp.signature)),
                esc(&c.rt.audit_chain.public_key_hex())
            );
        }
        Ok(None) => body.push_str("<p>No signed checkpoint yet.</p>"),
        Err(e) => body.push_str(&html::notice("error", &esc(&e.to_string()))),
    }
    // Search.
    let field = |id: &str, label: &str, val: &Option<String>| {
        format!(
            "<div><label for=\"{id}\">{label}</label><input id=\"{id}\" name=\"{id}\" value=\"{}\"></div>",
            esc(val.as_deref().unwrap_or(""))
        )
    };
    let _ = write!(
        body,
        "<h2>Search</h2><form method=\"get\" class=\"search\" role=\"search\">{}{}{}{}<div><button type=\"submit\">Search</button></div></form>",
        field("request_id", "Request ID", &q.request_id),
        field("controller", "Controller", &q.controller),
        field("actor", "Actor", &q.actor),
        field("event", "Event", &q.event)
    );
    let filter = magic_audit::SearchFilter {
        request_id: q.request_id.clone(),
        controller: q.controller.clone(),
        actor: q.actor.clone(),
        event: q.event.clone(),
        before: q.before,
    };
    match c.rt.audit_chain.search(&filter, AUDIT_PAGE + 1).await {
        Ok(mut records) => {
            let more = records.len() as u64 > AUDIT_PAGE;
            records.truncate(AUDIT_PAGE as usize);
            body.push_str(&table(
                "Matching records (newest first)",
                &AUDIT_HEADERS,
                &audit_rows(&records),
            ));
            let base: String = [
                ("request_id", &q.request_id),
                ("controller", &q.controller),
                ("actor", &q.actor),
                ("event", &q.event),
            ]
            .iter()
            .filter_map(|(k, v)| v.as_deref().filter(|v| !v.is_empty()).map(|v| (k, v)))
            .map(|(k, v)| format!("{k}={}&", url_enc(v)))
            .collect();
            body.push_str("<nav aria-label=\"Pages\"><p>");
            if q.before.is_some() {
                let _ = write!(
                    body,
                    "<a href=\"/console/audit?{}\">Newest</a> ",
                    esc(&base)
                );
            }
            if let (true, Some(last)) = (more, records.last()) {
                let _ = write!(
                    body,
                    "<a href=\"/console/audit?{}before={}\" rel=\"next\">Older records →</a>",
                    esc(&base),
                    last.seq
                );
            }
            body.push_str("</p></nav>");
        }
        Err(e) => body.push_str(&html::notice(
            "error",
            &format!("The audit log is unavailable: {}", esc(&e.to_string())),
        )),
    }
    render(&v, "Audit log", S, None, &body)
}

#[derive(Deserialize)]
pub(super) struct ApprovalsQuery {
    status: Option<String>,
    decided: Option<String>,
}

pub(super) async fn approvals(
    State(c): State<Console>,
    Extension(v): Extension<Viewer>,
    Query(q): Query<ApprovalsQuery>,
) -> Response {
    const S: &str = "/console/approvals";
    if let Err(r) = need(&v, Permission::Approve, S) {
        return r;
    }
    let mut body = String::new();
    if let Some(d) = &q.decided {
        body.push_str(&html::notice("ok", &format!("Request {}.", esc(d))));
    }
    if c.rt.config.approvals == crate::approvals::ApprovalMode::Off {
        body.push_str(&html::notice(
            "warn",
            "Approvals are not enabled on this runtime (MAGIC_REQUIRE_APPROVAL): deploys take effect without a second person. Earlier requests are listed below.",
        ));
    }
    let status = match q.status.as_deref() {
        Some("all") => None,
        Some(s @ ("approved" | "rejected" | "pending")) => Some(s),
        _ => Some("pending"),
    };
    let links: String = [
        ("pending", "Pending"),
        ("approved", "Approved"),
        ("rejected", "Rejected"),
        ("all", "All"),
    ]
    .iter()
    .map(|(k, label)| {
        if status.unwrap_or("all") == *k {
            format!("<b>{label}</b>")
        } else {
            format!("<a href=\"/console/approvals?status={k}\">{label}</a>")
        }
    })
    .collect::<Vec<_>>()
    .join(" · ");
    let _ = write!(body, "<nav aria-label=\"Filter\"><p>{links}</p></nav>");
    let list = match c.rt.approvals.list(status).await {
        Ok(l) => l,
        Err(e) => return error_page(&v, e.status(), S, &e.message),
    };
    if list.is_empty() {
        body.push_str("<p>No requests.</p>");
    }
    let csrf = v.csrf.as_deref().map(html::csrf_field).unwrap_or_default();
    for a in list.iter().take(100) {
        let _ = write!(
            body,
            "<section aria-labelledby=\"a-{id}\"><h2 id=\"a-{id}\">{} {} <small>({})</small></h2>\
             <dl class=\"kv\"><dt>Request</dt><dd class=\"mono\">{}</dd><dt>Requested by</dt><dd>{} at {}</dd><dt>Digest</dt><dd class=\"mono\">{}</dd>{}</dl>\
             <p>Capabilities compared with the active version:</p>{}",
            esc(&a.controller),
            esc(&a.version),
            esc(&a.status),
            esc(&a.id),
            esc(&a.requested_by),
            esc(&a.requested_at),
            esc(&a.digest),
            match (&a.decided_by, &a.decided_at) {
                (Some(by), Some(at)) => format!(
                    "<dt>Decided by</dt><dd>{} at {}{}</dd>",
                    esc(by),
                    esc(at),
                    a.reason
                        .as_deref()
                        .map(|r| format!(": {}", esc(r)))
                        .unwrap_or_default()
                ),
                _ => String::new(),
            },
            diff_html(&a.diff),
            id = esc(&a.id),
        );
        if a.status == "pending" {
            let own = a.requested_by == v.identity.name;
            let _ = write!(
                body,
                "<form method=\"post\" action=\"/console/approvals/{id}\" class=\"search\">{csrf}\
                 <div><label for=\"r-{id}\">Reason (optional)</label><input id=\"r-{id}\" name=\"reason\" maxlength=\"1000\"></div>\
                 <div><button type=\"submit\" name=\"decision\" value=\"approve\"{dis}>Approve and deploy</button> \
                 <button type=\"submit\" name=\"decision\" value=\"reject\" class=\"danger\"{dis}>Reject</button></div></form>{own}",
                id = esc(&a.id),
                dis = if own { " disabled" } else { "" },
                own = if own {
                    "<p>You requested this deploy: another identity must decide it.</p>"
                } else {
                    ""
                },
            );
        }
        body.push_str("</section>");
    }
    render(&v, "Deploy approvals", S, None, &body)
}

#[derive(Deserialize)]
pub(super) struct DecisionForm {
    csrf: Option<String>,
    decision: Option<String>,
    reason: Option<String>,
}

pub(super) async fn decide(
    State(c): State<Console>,
    Extension(v): Extension<Viewer>,
    Extension(rid): Extension<RequestId>,
    Path(id): Path<String>,
    Form(f): Form<DecisionForm>,
) -> Response {
    const S: &str = "/console/approvals";
    if let Err(r) = need(&v, Permission::Approve, S) {
        return r;
    }
    if let Err(r) = need_csrf(&v, f.csrf.as_deref(), S) {
        return r;
    }
    let decision = match f.decision.as_deref() {
        Some("approve") => crate::approvals::Decision::Approve,
        Some("reject") => crate::approvals::Decision::Reject,
        _ => {
            return error_page(
                &v,
                StatusCode::BAD_REQUEST,
                S,
                "decision must be approve or reject: nothing was changed",
            )
        }
    };
    let reason = f.reason.filter(|r| !r.trim().is_empty());
    match c
        .rt
        .approvals
        .decide(&c.rt, &rid.0, &id, decision, &v.identity, reason)
        .await
    {
        Ok(a) => Redirect::to(&format!(
            "/console/approvals?decided={}",
            url_enc(&format!(
                "{} {}@{} {}",
                a.id, a.controller, a.version, a.status
            ))
        ))
        .into_response(),
        Err(e) => error_page(&v, e.status(), S, &e.message),
    }
}

pub(super) async fn health(State(c): State<Console>, Extension(v): Extension<Viewer>) -> Response {
    const S: &str = "/console/health";
    if let Err(r) = need(&v, Permission::Status, S) {
        return r;
    }
    let (ready, checks) = c.rt.readiness().await;
    let mut body = if ready {
        html::notice("ok", "Ready: every backing service answers.")
    } else {
        html::notice("error", "Not ready: see the failing checks below.")
    };
    let rows: Vec<Vec<String>> = checks
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, val)| {
                    let s = val.as_str().unwrap_or_default();
                    let class = if s == "ok" { "ok" } else { "bad" };
                    vec![esc(k), format!("<span class=\"{class}\">{}</span>", esc(s))]
                })
                .collect()
        })
        .unwrap_or_default();
    body.push_str(&table(
        "Backing services (as /api/readyz reports them)",
        &["Check", "State"],
        &rows,
    ));
    let mode = match c.rt.config.execution_mode {
        crate::config::ExecutionMode::Process => "process (sandboxed)",
        crate::config::ExecutionMode::Inline => "inline (NOT isolated; development only)",
    };
    let _ = write!(body, "<h2>Execution</h2><p>Mode: <b>{mode}</b>.</p>");
    let zygotes = c.rt.executor.zygotes();
    let rows: Vec<Vec<String>> = zygotes
        .iter()
        .map(|z| {
            vec![
                esc(&z.controller),
                esc(&z.version),
                z.pid
                    .map(|p| format!("<span class=\"ok\">alive</span> (pid {p})"))
                    .unwrap_or_else(|| "<span class=\"bad\">not running</span>".into()),
                z.spares.to_string(),
                z.rss_bytes.map(fmt_bytes).unwrap_or_else(|| "–".into()),
            ]
        })
        .collect();
    body.push_str(&table(
        "Zygotes on this node",
        &[
            "Controller",
            "Version",
            "State",
            "Spare children",
            "Memory (RSS)",
        ],
        &rows,
    ));
    let layers = crate::sandboxed::isolation_layers();
    let rows: Vec<Vec<String>> = layers
        .iter()
        .map(|l| {
            let state = match (l.active, l.required) {
                (true, _) => "<span class=\"ok\">active</span>",
                (false, true) => "<span class=\"bad\">MISSING</span>",
                (false, false) => "unused",
            };
            vec![esc(l.name), state.to_string(), esc(&l.detail)]
        })
        .collect();
    body.push_str(&table(
        "Isolation layers of this host (as magic doctor reports them)",
        &["Layer", "State", "Detail"],
        &rows,
    ));
    render(&v, "Health", S, None, &body)
}
