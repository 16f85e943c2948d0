//! The production policy file (`MAGIC_POLICY_FILE`, YAML).
//!
//! Owns: parsing and validating the file (every problem reported at once, so `serve` can refuse
//! to start with the whole list), and the two pure decisions made with it: whether a contract
//! may be deployed ([`Policy::check_deploy`]) and whether a deployed version may still execute
//! under the policy in force now ([`Policy::check_execute`]). Must never: perform I/O beyond
//! reading the file in [`Policy::load`], or let a version deployed before the policy tightened
//! run past it.
//!
//! ```yaml
//! denied_capabilities: [db:rawsql]          # any capability name of the matrix
//! egress:
//!   allow: ["*.stripe.com", api.github.com] # when set, every contract egress entry must lie inside one
//!   deny:  [evil.example.com, "*.internal"] # no contract egress entry may overlap one
//! resources:                                # ceilings on what contracts may declare
//!   max_timeout: 60s
//!   max_memory: 512Mi
//!   max_cpu: 1
//!   max_temp_size: 50M
//! approvals:
//!   required_for: widening                  # widening | all | none
//! ```
//!
//! A deploy that breaks a rule is refused with `E4002` (403): the package is a valid contract,
//! the runtime's policy does not permit it. `details.violations` lists every broken rule as
//! `{"rule", "message"}`. At execution a version that breaks the policy now is refused before
//! it runs: egress rules with `E2002`, a denied `db:rawsql` with `E2007`, any other rule with
//! `E4002`; the message names the rule.

use std::time::Duration;

use magic_contract::{Capability, Contract, ErrorCode};

use crate::approvals::ApprovalMode;
use crate::error::ApiError;

/// A loaded, valid policy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    /// Capability names no contract may declare.
    pub denied_capabilities: Vec<String>,
    /// When set, every egress entry of a contract must lie inside one of these.
    pub egress_allow: Option<Vec<String>>,
    /// No egress entry of a contract may overlap one of these.
    pub egress_deny: Vec<String>,
    /// Largest timeout a contract may declare.
    pub max_timeout: Option<Duration>,
    /// Largest memory a contract may declare, in bytes.
    pub max_memory: Option<u64>,
    /// Largest CPU share a contract may declare, in cores.
    pub max_cpu: Option<f64>,
    /// Largest `fs:temp` size a contract may declare, in bytes.
    pub max_temp_size: Option<u64>,
    /// When deploys need approval (`None`: the file does not say).
    pub approvals: Option<ApprovalMode>,
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// The rule, as written in the file (`denied_capabilities`, `egress.deny`,
    /// `resources.max_memory`).
    pub rule: String,
    /// What breaks it.
    pub message: String,
}

/// Host part of an egress entry (scheme and port removed), lower-case, without a trailing dot.
fn entry_host(entry: &str) -> String {
    let e = entry.trim().to_ascii_lowercase();
    let e = e
        .split_once("://")
        .map_or(e.as_str(), |(_, r)| r)
        .to_string();
    let host = if let Some(v6) = e.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default().to_string()
    } else {
        e.rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(e.clone(), |(h, _)| h.to_string())
    };
    host.trim_end_matches('.').to_string()
}

/// Whether pattern `p` (`host` or `*.suffix`) matches the concrete host `h`.
fn pattern_matches(p: &str, h: &str) -> bool {
    match p.strip_prefix("*.") {
        Some(suffix) => h.len() > suffix.len() + 1 && h.ends_with(&format!(".{suffix}")),
        None => p == h,
    }
}

/// A concrete host inside pattern `p` (`*.a.com` → `x.a.com`).
fn representative(p: &str) -> String {
    match p.strip_prefix("*.") {
        Some(suffix) => format!("x.{suffix}"),
        None => p.to_string(),
    }
}

/// Whether egress entries `a` and `b` can both match some host.
pub fn egress_overlaps(a: &str, b: &str) -> bool {
    let (a, b) = (entry_host(a), entry_host(b));
    pattern_matches(&a, &representative(&b)) || pattern_matches(&b, &representative(&a))
}

/// Whether every host egress entry `inner` matches is matched by `outer`.
pub fn egress_within(inner: &str, outer: &str) -> bool {
    let (inner, outer) = (entry_host(inner), entry_host(outer));
    match (inner.strip_prefix("*."), outer.strip_prefix("*.")) {
        (Some(i), Some(o)) => i == o || i.ends_with(&format!(".{o}")),
        (Some(_), None) => false,
        (None, _) => pattern_matches(&outer, &inner),
    }
}

fn egress_entries(contract: &Contract) -> Vec<&str> {
    contract
        .capabilities
        .iter()
        .flat_map(|c| match c {
            Capability::HttpEgress(g) => g.allow.iter().map(String::as_str).collect(),
            _ => Vec::new(),
        })
        .collect()
}

impl Policy {
    /// Read and validate a policy file; every problem is listed (`path: field: reason`).
    pub fn load(path: &std::path::Path) -> Result<Policy, Vec<String>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
        Policy::parse(&text).map_err(|problems| {
            problems
                .into_iter()
                .map(|p| format!("{}: {p}", path.display()))
                .collect()
        })
    }

    /// Parse policy YAML; every problem is listed (`field: reason`).
    pub fn parse(text: &str) -> Result<Policy, Vec<String>> {
        use serde_yaml::Value;
        let root: Value = serde_yaml::from_str(text).map_err(|e| vec![format!("not YAML: {e}")])?;
        let mut problems = Vec::new();
        let mut policy = Policy::default();
        let Some(map) = root.as_mapping() else {
            if root.is_null() {
                return Ok(policy);
            }
            return Err(vec!["the policy must be a mapping".into()]);
        };
        let strings = |v: &Value, field: &str, problems: &mut Vec<String>| -> Vec<String> {
            match v.as_sequence() {
                Some(seq) => seq
                    .iter()
                    .enumerate()
                    .filter_map(|(i, item)| match item.as_str() {
                        Some(s) => Some(s.to_string()),
                        None => {
                            problems.push(format!("{field}[{i}]: must be a string"));
                            None
                        }
                    })
                    .collect(),
                None => {
                    problems.push(format!("{field}: must be a list of strings"));
                    Vec::new()
                }
            }
        };
        let scalar_text = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        for (key, value) in map {
            let key = key.as_str().unwrap_or("<non-string key>");
            match key {
                "denied_capabilities" => {
                    for c in strings(value, key, &mut problems) {
                        if magic_contract::CAPABILITY_NAMES.contains(&c.as_str()) {
                            policy.denied_capabilities.push(c);
                        } else {
                            problems.push(format!(
                                "denied_capabilities: unknown capability {c:?} (expected one of {})",
                                magic_contract::CAPABILITY_NAMES.join(", ")
                            ));
                        }
                    }
                }
                "egress" => {
                    let Some(m) = value.as_mapping() else {
                        problems.push("egress: must be a mapping with allow and/or deny".into());
                        continue;
                    };
                    for (k, v) in m {
                        let k = k.as_str().unwrap_or("<non-string key>");
                        let field = format!("egress.{k}");
                        match k {
                            "allow" | "deny" => {
                                let list = strings(v, &field, &mut problems);
                                for e in &list {
                                    let h = entry_host(e);
                                    let bare = h.strip_prefix("*.").unwrap_or(&h);
                                    if bare.is_empty() || bare.contains('*') {
                                        problems.push(format!(
                                            "{field}: {e:?} is not a host or *.suffix entry"
                                        ));
                                    }
                                }
                                if k == "allow" {
                                    policy.egress_allow = Some(list);
                                } else {
                                    policy.egress_deny = list;
                                }
                            }
                            _ => problems.push(format!(
                                "{field}: unknown key (expected allow or deny)"
                            )),
                        }
                    }
                }
                "resources" => {
                    let Some(m) = value.as_mapping() else {
                        problems.push("resources: must be a mapping".into());
                        continue;
                    };
                    for (k, v) in m {
                        let k = k.as_str().unwrap_or("<non-string key>");
                        let field = format!("resources.{k}");
                        let Some(text) = scalar_text(v) else {
                            problems.push(format!("{field}: must be a scalar"));
                            continue;
                        };
                        let bad = |e: String| format!("{field}: {e}");
                        match k {
                            "max_timeout" => match magic_contract::parse_duration(&text) {
                                Ok(d) => policy.max_timeout = Some(d),
                                Err(e) => problems.push(bad(e)),
                            },
                            "max_memory" => match magic_contract::parse_bytes(&text) {
                                Ok(b) => policy.max_memory = Some(b),
                                Err(e) => problems.push(bad(e)),
                            },
                            "max_temp_size" => match magic_contract::parse_bytes(&text) {
                                Ok(b) => policy.max_temp_size = Some(b),
                                Err(e) => problems.push(bad(e)),
                            },
                            "max_cpu" => match magic_contract::parse_cpu(&text) {
                                Ok(c) => policy.max_cpu = Some(c),
                                Err(e) => problems.push(bad(e)),
                            },
                            _ => problems.push(format!(
                                "{field}: unknown key (expected max_timeout, max_memory, max_cpu or max_temp_size)"
                            )),
                        }
                    }
                }
                "approvals" => {
                    let mode = value
                        .as_mapping()
                        .and_then(|m| m.get("required_for"))
                        .and_then(Value::as_str);
                    let extra = value
                        .as_mapping()
                        .map(|m| m.keys().any(|k| k.as_str() != Some("required_for")))
                        .unwrap_or(false);
                    match mode.and_then(ApprovalMode::parse) {
                        Some(m) if !extra => policy.approvals = Some(m),
                        _ => problems.push(
                            "approvals: expected { required_for: widening | all | none }".into(),
                        ),
                    }
                }
                other => problems.push(format!(
                    "{other}: unknown key (expected denied_capabilities, egress, resources or approvals)"
                )),
            }
        }
        if problems.is_empty() {
            Ok(policy)
        } else {
            Err(problems)
        }
    }

    /// Every rule `contract` breaks (empty: it may be deployed / executed).
    pub fn violations(&self, contract: &Contract) -> Vec<Violation> {
        let mut out = Vec::new();
        let mut v = |rule: &str, message: String| {
            out.push(Violation {
                rule: rule.into(),
                message,
            })
        };
        for cap in &contract.capabilities {
            if self.denied_capabilities.iter().any(|d| d == cap.name()) {
                v(
                    "denied_capabilities",
                    format!("{} is denied by the runtime policy", cap.name()),
                );
            }
        }
        for entry in egress_entries(contract) {
            if let Some(deny) = self.egress_deny.iter().find(|d| egress_overlaps(entry, d)) {
                v(
                    "egress.deny",
                    format!("http:egress entry {entry:?} overlaps the denied {deny:?}"),
                );
            }
            if let Some(allow) = &self.egress_allow {
                if !allow.iter().any(|a| egress_within(entry, a)) {
                    v(
                        "egress.allow",
                        format!(
                            "http:egress entry {entry:?} is outside the runtime's egress allow list ({})",
                            allow.join(", ")
                        ),
                    );
                }
            }
        }
        let r = contract.resources;
        let fmt_d = magic_contract::units::format_duration;
        if let Some(max) = self.max_timeout.filter(|m| r.timeout > *m) {
            v(
                "resources.max_timeout",
                format!(
                    "timeout {} is above the ceiling {}",
                    fmt_d(r.timeout),
                    fmt_d(max)
                ),
            );
        }
        if let Some(max) = self.max_memory.filter(|m| r.memory > *m) {
            v(
                "resources.max_memory",
                format!("memory {} bytes is above the ceiling {max} bytes", r.memory),
            );
        }
        if let Some(max) = self.max_cpu.filter(|m| r.cpu > *m) {
            v(
                "resources.max_cpu",
                format!("cpu {} is above the ceiling {max}", r.cpu),
            );
        }
        for cap in &contract.capabilities {
            if let (Capability::FsTemp { size }, Some(max)) = (cap, self.max_temp_size) {
                if *size > max {
                    v(
                        "resources.max_temp_size",
                        format!("fs:temp size {size} bytes is above the ceiling {max} bytes"),
                    );
                }
            }
        }
        out
    }

    /// `Ok` when `contract` may be deployed; otherwise E4002 with every violation.
    pub fn check_deploy(&self, contract: &Contract) -> Result<(), ApiError> {
        let violations = self.violations(contract);
        if violations.is_empty() {
            return Ok(());
        }
        let summary: Vec<String> = violations
            .iter()
            .map(|v| format!("{}: {}", v.rule, v.message))
            .collect();
        Err(ApiError::new(
            ErrorCode::NotPermitted,
            format!(
                "the runtime policy (MAGIC_POLICY_FILE) refuses {} {}: {}",
                contract.name,
                contract.version,
                summary.join("; ")
            ),
        )
        .with_details(serde_json::json!({ "violations": violations })))
    }

    /// `Ok` when a deployed version may still execute under this policy; otherwise the first
    /// violation's code (egress → E2002, `db:rawsql` → E2007, others → E4002).
    pub fn check_execute(&self, contract: &Contract) -> Result<(), ApiError> {
        let violations = self.violations(contract);
        let Some(first) = violations.first() else {
            return Ok(());
        };
        let code = match first.rule.as_str() {
            "egress.deny" | "egress.allow" => ErrorCode::EgressNotAllowed,
            "denied_capabilities" if first.message.starts_with("db:rawsql") => {
                ErrorCode::RawSqlNotApproved
            }
            _ => ErrorCode::NotPermitted,
        };
        Err(ApiError::new(
            code,
            format!(
                "{} {} was deployed before the runtime policy tightened and may not run: {}: {}",
                contract.name, contract.version, first.rule, first.message
            ),
        )
        .with_details(serde_json::json!({ "violations": violations })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contract(caps: &str, resources: &str) -> Contract {
        magic_contract::parse_contract(&format!(
            "name: T\nversion: 1.0.0\ninput: {{}}\noutput: {{}}\ncapabilities: {caps}\nresources: {resources}\n"
        ))
        .unwrap()
        .contract()
        .clone()
    }

    #[test]
    fn parsing_lists_every_problem() {
        let ok = Policy::parse(
            "denied_capabilities: [db:rawsql]\negress: { allow: ['*.stripe.com'], deny: [evil.stripe.com] }\nresources: { max_timeout: 60s, max_memory: 512Mi, max_cpu: 1, max_temp_size: 50M }\napprovals: { required_for: widening }\n",
        )
        .unwrap();
        assert_eq!(ok.denied_capabilities, ["db:rawsql"]);
        assert_eq!(ok.egress_allow, Some(vec!["*.stripe.com".to_string()]));
        assert_eq!(ok.max_timeout, Some(Duration::from_secs(60)));
        assert_eq!(ok.max_memory, Some(512 * 1024 * 1024));
        assert_eq!(ok.max_cpu, Some(1.0));
        assert_eq!(ok.max_temp_size, Some(50_000_000));
        assert_eq!(ok.approvals, Some(ApprovalMode::Widening));
        assert_eq!(Policy::parse("").unwrap(), Policy::default());

        let problems = Policy::parse(
            "denied_capabilities: [db:nuke, 3]\negress: { allow: '*.x', bogus: [] , deny: ['*'] }\nresources: { max_timeout: forever, max_memory: lots, max_cpu: -1, size: 1 }\napprovals: { required_for: sometimes }\nextra: 1\n",
        )
        .unwrap_err();
        for needle in [
            "denied_capabilities: unknown capability \"db:nuke\"",
            "denied_capabilities[1]: must be a string",
            "egress.allow: must be a list",
            "egress.bogus: unknown key",
            "egress.deny: \"*\" is not a host",
            "resources.max_timeout:",
            "resources.max_memory:",
            "resources.max_cpu:",
            "resources.size: unknown key",
            "approvals: expected",
            "extra: unknown key",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(needle)),
                "{needle} not in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), 11, "{problems:#?}");
        assert!(Policy::parse("[1, 2]").is_err());
        assert!(Policy::parse(": :").is_err());
    }

    #[test]
    fn egress_pattern_table() {
        // (a, b, overlaps, a within b)
        let cases = [
            ("api.stripe.com", "api.stripe.com", true, true),
            ("api.stripe.com", "*.stripe.com", true, true),
            ("*.stripe.com", "api.stripe.com", true, false),
            ("*.a.stripe.com", "*.stripe.com", true, true),
            ("*.stripe.com", "*.a.stripe.com", true, false),
            ("stripe.com", "*.stripe.com", false, false),
            ("evilstripe.com", "*.stripe.com", false, false),
            ("https://API.stripe.com:8443", "api.stripe.com", true, true),
            ("api.stripe.com.", "api.stripe.com", true, true),
            ("10.0.0.5", "10.0.0.5", true, true),
            ("a.com", "b.com", false, false),
        ];
        for (a, b, overlaps, within) in cases {
            assert_eq!(egress_overlaps(a, b), overlaps, "overlap {a} {b}");
            assert_eq!(egress_overlaps(b, a), overlaps, "overlap {b} {a}");
            assert_eq!(egress_within(a, b), within, "{a} within {b}");
        }
    }

    #[test]
    fn deploy_and_execute_decisions() {
        let policy = Policy::parse(
            "denied_capabilities: [db:rawsql]\negress: { allow: ['*.stripe.com', api.github.com], deny: [evil.stripe.com] }\nresources: { max_timeout: 60s, max_memory: 512Mi, max_cpu: 1, max_temp_size: 50M }\n",
        )
        .unwrap();
        // (capabilities, resources, broken rules, execute code)
        let cases: &[(&str, &str, &[&str], Option<ErrorCode>)] = &[
            ("[]", "{}", &[], None),
            (
                "[{http:egress: {allow: [api.stripe.com, api.github.com]}}]",
                "{timeout: 60s, memory: 512Mi, cpu: 1}",
                &[],
                None,
            ),
            (
                "[db:rawsql]",
                "{}",
                &["denied_capabilities"],
                Some(ErrorCode::RawSqlNotApproved),
            ),
            (
                "[{http:egress: {allow: ['*.stripe.com']}}]",
                "{}",
                &["egress.deny"],
                Some(ErrorCode::EgressNotAllowed),
            ),
            (
                "[{http:egress: {allow: [example.com]}}]",
                "{}",
                &["egress.allow"],
                Some(ErrorCode::EgressNotAllowed),
            ),
            (
                "[]",
                "{timeout: 61s, memory: 1Gi, cpu: 1.5}",
                &[
                    "resources.max_timeout",
                    "resources.max_memory",
                    "resources.max_cpu",
                ],
                Some(ErrorCode::NotPermitted),
            ),
            (
                "[{fs:temp: {size: 60M}}]",
                "{}",
                &["resources.max_temp_size"],
                Some(ErrorCode::NotPermitted),
            ),
        ];
        for (caps, res, rules, code) in cases {
            let c = contract(caps, res);
            let got: Vec<String> = policy.violations(&c).into_iter().map(|v| v.rule).collect();
            assert_eq!(got, *rules, "{caps} {res}");
            assert_eq!(policy.check_deploy(&c).is_ok(), rules.is_empty());
            if let Err(e) = policy.check_deploy(&c) {
                assert_eq!(e.code, ErrorCode::NotPermitted);
                assert!(e.message.contains(rules[0]), "{}", e.message);
            }
            assert_eq!(policy.check_execute(&c).err().map(|e| e.code), *code);
        }
        assert!(Policy::default()
            .violations(&contract("[db:rawsql]", "{memory: 2Gi}"))
            .is_empty());
    }
}
