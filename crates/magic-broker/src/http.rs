//! `http:egress`: thin glue to `magic_egress`.
//!
//! Owns: parsing the `http.request` call, refusing it when the contract declares no
//! `http:egress` (E2001), handing it to [`magic_egress::Egress::send`] with the merged grant
//! and the execution's deadline, shaping the answer (`status, headers, text, json`) and the
//! audit details (method, host, resolved IP, status, latency). The allowlist and address
//! checks (E2002, E2008) belong to `magic_egress`. Must never: send a request itself.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use magic_contract::{Capability, EgressGrant};
use magic_egress::{Egress, EgressError, EgressRequest};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::capability::{CapabilityModule, Checked, Denial, Performed};
use crate::denial::{denied, not_declared, yaml_scalar};
use crate::{BrokerError, ExecutionContext};

const CAP: &str = "http:egress";

/// The http capability module.
pub(crate) struct HttpModule {
    egress: Egress,
}

impl HttpModule {
    /// A module sending through `egress`.
    pub fn new(egress: Egress) -> Self {
        HttpModule { egress }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestArgs {
    method: String,
    url: String,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    json: Option<Value>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// A checked request with the merged grant.
pub(crate) struct HttpRequest {
    grant: EgressGrant,
    args: RequestArgs,
    host: String,
}

/// The host part of `url`, for audit targets and denial hints (the egress crate parses for
/// real; this is only descriptive).
pub(crate) fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or_default().to_string();
    }
    authority
        .split(':')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// Every `http:egress` entry of the contract merged into one grant, or `None`.
pub(crate) fn merged_grant(capabilities: &[Capability]) -> Option<EgressGrant> {
    let mut out: Option<EgressGrant> = None;
    for c in capabilities {
        if let Capability::HttpEgress(g) = c {
            let m = out.get_or_insert_with(EgressGrant::default);
            m.allow.extend(g.allow.iter().cloned());
            m.allow_ips.extend(g.allow_ips.iter().cloned());
            m.resolve
                .extend(g.resolve.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    out
}

fn egress_error(e: EgressError, host: &str, grant: &EgressGrant) -> BrokerError {
    let code = e.code();
    let message = e.to_string();
    match e {
        // A URL that cannot be fetched at all: no allow entry would help, so none is suggested.
        EgressError::InvalidUrl(_) => BrokerError {
            code,
            message,
            details: Some(serde_json::json!({ "capability": CAP, "target": host })),
        },
        EgressError::NotAllowed { .. } => {
            let mut allow: Vec<String> = grant.allow.clone();
            allow.push(host.to_string());
            let list: Vec<String> = allow.iter().map(|s| yaml_scalar(s)).collect();
            denied(
                code,
                CAP,
                host,
                format!("http:egress: {{ allow: [{}] }}", list.join(", ")),
                message,
            )
        }
        EgressError::PrivateAddress { ip, .. } => denied(
            code,
            CAP,
            host,
            format!(
                "http:egress: {{ allow: [{}], allow_ips: [\"{ip}\"] }}",
                yaml_scalar(host)
            ),
            message,
        ),
        _ => BrokerError::new(code, message),
    }
}

#[async_trait::async_trait]
impl CapabilityModule for HttpModule {
    type Request = HttpRequest;

    fn check(
        &self,
        ctx: &ExecutionContext,
        op: &str,
        args: Value,
    ) -> Result<Checked<HttpRequest>, Denial> {
        if op != "request" {
            return Err(Denial::invalid(
                Some(CAP),
                format!("unknown operation http.{op}"),
            ));
        }
        let args: RequestArgs = serde_json::from_value(args).map_err(|e| {
            Denial::invalid(Some(CAP), format!("invalid arguments to http.request: {e}"))
        })?;
        let host = host_of(&args.url);
        let Some(grant) = merged_grant(&ctx.contract.capabilities) else {
            return Err(Denial::new(
                CAP,
                host.clone(),
                not_declared(
                    CAP,
                    &host,
                    format!("http:egress: {{ allow: [{}] }}", yaml_scalar(&host)),
                ),
            ));
        };
        if args.json.is_some() && args.body.is_some() {
            return Err(Denial::invalid(
                Some(CAP),
                "http.request takes json or body, not both",
            ));
        }
        Ok(Checked {
            capability: CAP,
            target: host.clone(),
            request: HttpRequest { grant, args, host },
        })
    }

    async fn perform(&self, ctx: &ExecutionContext, request: HttpRequest) -> Performed {
        let HttpRequest { grant, args, host } = request;
        let mut headers = args.headers.unwrap_or_default();
        let body = match (args.json, args.body) {
            (Some(j), _) => {
                if !headers
                    .keys()
                    .any(|k| k.eq_ignore_ascii_case("content-type"))
                {
                    headers.insert("content-type".into(), "application/json".into());
                }
                Some(j.to_string().into_bytes())
            }
            (None, Some(b)) => Some(b.into_bytes()),
            (None, None) => None,
        };
        let deadline = match args.timeout_ms {
            Some(ms) => ctx.deadline.min(Instant::now() + Duration::from_millis(ms)),
            None => ctx.deadline,
        };
        let method = args.method.to_ascii_uppercase();
        let req = EgressRequest {
            method: method.clone(),
            url: args.url,
            headers,
            body,
            request_id: ctx.request_id.clone(),
            traceparent: ctx.traceparent.clone(),
            deadline,
        };
        let started = Instant::now();
        match self.egress.send(&grant, req).await {
            Ok(resp) => {
                let text = String::from_utf8_lossy(&resp.body).into_owned();
                let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let details = json!({
                    "method": method,
                    "host": resp.host,
                    "resolved_ip": resp.resolved_ip.map(|ip| ip.to_string()),
                    "status": resp.status,
                    "latency_ms": resp.latency.as_secs_f64() * 1000.0,
                });
                Performed {
                    result: Ok(json!({
                        "status": resp.status,
                        "headers": resp.headers,
                        "text": text,
                        "json": parsed,
                    })),
                    details,
                }
            }
            Err(e) => Performed {
                details: json!({
                    "method": method,
                    "host": host,
                    "latency_ms": started.elapsed().as_secs_f64() * 1000.0,
                }),
                result: Err(egress_error(e, &host, &grant)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let cases = [
            ("https://api.stripe.com/v1/x", "api.stripe.com"),
            ("http://API.example.com:8080/", "api.example.com"),
            ("https://user:pw@evil.com/", "evil.com"),
            ("http://[::1]:80/", "::1"),
            ("https://a.com?x=1", "a.com"),
            ("nonsense", "nonsense"),
        ];
        for (url, host) in cases {
            assert_eq!(host_of(url), host, "{url}");
        }
    }

    #[test]
    fn grants_merge() {
        let caps = vec![
            Capability::HttpEgress(EgressGrant {
                allow: vec!["a.com".into()],
                ..Default::default()
            }),
            Capability::HttpEgress(EgressGrant {
                allow: vec!["b.com".into()],
                ..Default::default()
            }),
        ];
        assert_eq!(
            merged_grant(&caps).map(|g| g.allow),
            Some(vec!["a.com".into(), "b.com".into()])
        );
        assert_eq!(merged_grant(&[]), None);
    }
}
