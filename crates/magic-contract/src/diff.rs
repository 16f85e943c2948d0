//! The capability diff between two versions of a controller (what an approver is shown).
//!
//! Owns: [`capability_diff`], a pure function from the active contract (if any) and a new one
//! to what the new one adds, widens and removes. Must never: report a widening as anything but
//! `added` or `widened` (approvals rely on [`CapabilityDiff::widens`] to decide whether a
//! deploy needs a second person), or perform I/O.
//!
//! Each entry is one human-readable grant: `db:read orders`, `http:egress api.example.com`,
//! `secrets:read API_KEY`, `db:rawsql`, `cache:read prefix "inv:" -> "in"`,
//! `resources.memory 268435456 -> 536870912`.

use std::collections::BTreeSet;

use crate::{units, Capability, Contract};

/// What a new contract changes in the capabilities of the active one.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CapabilityDiff {
    /// Grants the active version does not have (a new capability, table, domain, key, queue).
    pub added: Vec<String>,
    /// Grants the active version has in a narrower form (a cache prefix that no longer lies
    /// under the old one, a longer max_ttl or bigger fs:temp, larger resources).
    pub widened: Vec<String>,
    /// Grants the new version drops or narrows.
    pub removed: Vec<String>,
}

impl CapabilityDiff {
    /// Whether the new version may do anything the active one may not.
    pub fn widens(&self) -> bool {
        !self.added.is_empty() || !self.widened.is_empty()
    }
}

/// Every set-like grant of a contract (tables, domains, keys, queues, db:rawsql).
fn set_grants(contract: &Contract) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for cap in &contract.capabilities {
        let name = cap.name();
        match cap {
            Capability::DbRead { tables } | Capability::DbWrite { tables } => {
                out.extend(tables.iter().map(|t| format!("{name} {t}")));
            }
            Capability::DbRawSql => {
                out.insert(name.to_string());
            }
            Capability::HttpEgress(grant) => {
                out.extend(grant.allow.iter().map(|a| format!("{name} {a}")));
                out.extend(
                    grant
                        .allow_ips
                        .iter()
                        .map(|a| format!("{name} allow_ips {a}")),
                );
                out.extend(grant.resolve.keys().map(|h| format!("{name} resolve {h}")));
                if grant.allow.is_empty() && grant.allow_ips.is_empty() {
                    out.insert(name.to_string());
                }
            }
            Capability::SecretsRead { keys } => {
                out.extend(keys.iter().map(|k| format!("{name} {k}")));
            }
            Capability::QueuePublish { queues } | Capability::QueueSubscribe { queues } => {
                out.extend(queues.iter().map(|q| format!("{name} {q}")));
            }
            Capability::CacheRead { .. }
            | Capability::CacheWrite { .. }
            | Capability::FsTemp { .. } => {}
        }
    }
    out
}

fn prefix_of(contract: &Contract, name: &str) -> Option<String> {
    contract.capabilities.iter().find_map(|c| match c {
        Capability::CacheRead { prefix } if name == "cache:read" => Some(prefix.clone()),
        Capability::CacheWrite { prefix, .. } if name == "cache:write" => Some(prefix.clone()),
        _ => None,
    })
}

fn max_ttl(contract: &Contract) -> Option<std::time::Duration> {
    contract.capabilities.iter().find_map(|c| match c {
        Capability::CacheWrite { max_ttl, .. } => Some(*max_ttl),
        _ => None,
    })
}

fn temp_size(contract: &Contract) -> Option<u64> {
    contract.capabilities.iter().find_map(|c| match c {
        Capability::FsTemp { size } => Some(*size),
        _ => None,
    })
}

/// Compare `new` with the active contract `old` (`None`: a controller deployed for the first
/// time, whose every grant is `added`; resources are compared only between versions).
pub fn capability_diff(old: Option<&Contract>, new: &Contract) -> CapabilityDiff {
    let mut diff = CapabilityDiff::default();
    let old_set = old.map(set_grants).unwrap_or_default();
    let new_set = set_grants(new);
    diff.added.extend(new_set.difference(&old_set).cloned());
    diff.removed.extend(old_set.difference(&new_set).cloned());

    for cap in ["cache:read", "cache:write"] {
        match (old.and_then(|o| prefix_of(o, cap)), prefix_of(new, cap)) {
            (None, Some(p)) => diff.added.push(format!("{cap} prefix {p:?}")),
            (Some(p), None) => diff.removed.push(format!("{cap} prefix {p:?}")),
            (Some(a), Some(b)) if a != b => {
                let entry = format!("{cap} prefix {a:?} -> {b:?}");
                // A prefix that extends the old one reaches fewer keys.
                if b.starts_with(&a) {
                    diff.removed.push(entry);
                } else {
                    diff.widened.push(entry);
                }
            }
            _ => {}
        }
    }
    let fmt_d = |d: std::time::Duration| units::format_duration(d);
    match (old.and_then(max_ttl), max_ttl(new)) {
        (Some(a), Some(b)) if b > a => {
            diff.widened
                .push(format!("cache:write max_ttl {} -> {}", fmt_d(a), fmt_d(b)))
        }
        (Some(a), Some(b)) if b < a => {
            diff.removed
                .push(format!("cache:write max_ttl {} -> {}", fmt_d(a), fmt_d(b)))
        }
        _ => {}
    }
    match (old.and_then(temp_size), temp_size(new)) {
        (None, Some(s)) => diff.added.push(format!("fs:temp size {s}")),
        (Some(s), None) => diff.removed.push(format!("fs:temp size {s}")),
        (Some(a), Some(b)) if b > a => diff.widened.push(format!("fs:temp size {a} -> {b}")),
        (Some(a), Some(b)) if b < a => diff.removed.push(format!("fs:temp size {a} -> {b}")),
        _ => {}
    }
    if let Some(old) = old {
        let (a, b) = (old.resources, new.resources);
        let mut resource = |name: &str, grows: bool, shrinks: bool, from: String, to: String| {
            let entry = format!("resources.{name} {from} -> {to}");
            if grows {
                diff.widened.push(entry);
            } else if shrinks {
                diff.removed.push(entry);
            }
        };
        resource(
            "timeout",
            b.timeout > a.timeout,
            b.timeout < a.timeout,
            fmt_d(a.timeout),
            fmt_d(b.timeout),
        );
        resource(
            "memory",
            b.memory > a.memory,
            b.memory < a.memory,
            a.memory.to_string(),
            b.memory.to_string(),
        );
        resource(
            "cpu",
            b.cpu > a.cpu,
            b.cpu < a.cpu,
            a.cpu.to_string(),
            b.cpu.to_string(),
        );
    }
    diff
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contract(caps: &str, resources: &str) -> Contract {
        let yaml = format!(
            "name: T\nversion: 1.0.0\ninput: {{}}\noutput: {{}}\ncapabilities: {caps}\nresources: {resources}\n"
        );
        crate::parse_contract(&yaml)
            .unwrap_or_else(|e| panic!("{yaml}: {e}"))
            .contract()
            .clone()
    }

    #[test]
    fn the_table() {
        // (old capabilities, old resources) -> (new ...), expected added, widened, removed
        type Case<'a> = (
            Option<(&'a str, &'a str)>,
            (&'a str, &'a str),
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
        );
        let cases: &[Case] = &[
            // first deploy: everything added, resources not compared
            (
                None,
                ("[db:rawsql, {db:read: {tables: [a, b]}}]", "{memory: 1Gi}"),
                &["db:rawsql", "db:read a", "db:read b"],
                &[],
                &[],
            ),
            (None, ("[]", "{}"), &[], &[], &[]),
            // identical
            (
                Some(("[{db:read: {tables: [a]}}]", "{}")),
                ("[{db:read: {tables: [a]}}]", "{}"),
                &[],
                &[],
                &[],
            ),
            // new table, removed table
            (
                Some(("[{db:read: {tables: [a]}}]", "{}")),
                ("[{db:read: {tables: [b]}}]", "{}"),
                &["db:read b"],
                &[],
                &["db:read a"],
            ),
            // read table becomes writable
            (
                Some(("[{db:read: {tables: [a]}}]", "{}")),
                (
                    "[{db:read: {tables: [a]}}, {db:write: {tables: [a]}}]",
                    "{}",
                ),
                &["db:write a"],
                &[],
                &[],
            ),
            (
                Some(("[]", "{}")),
                ("[db:rawsql]", "{}"),
                &["db:rawsql"],
                &[],
                &[],
            ),
            // egress domain and ip
            (
                Some(("[{http:egress: {allow: [a.com]}}]", "{}")),
                (
                    "[{http:egress: {allow: [a.com, b.com], allow_ips: [10.0.0.5]}}]",
                    "{}",
                ),
                &["http:egress b.com", "http:egress allow_ips 10.0.0.5"],
                &[],
                &[],
            ),
            (
                Some(("[{secrets:read: {keys: [K1]}}]", "{}")),
                ("[{secrets:read: {keys: [K1, K2]}}]", "{}"),
                &["secrets:read K2"],
                &[],
                &[],
            ),
            (
                Some(("[{queue:publish: {queues: [q]}}]", "{}")),
                ("[{queue:subscribe: {queues: [q]}}]", "{}"),
                &["queue:subscribe q"],
                &[],
                &["queue:publish q"],
            ),
            // cache prefix: narrower is not a widening, another one is
            (
                Some(("[{cache:read: {prefix: \"inv:\"}}]", "{}")),
                ("[{cache:read: {prefix: \"inv:x:\"}}]", "{}"),
                &[],
                &[],
                &["cache:read prefix \"inv:\" -> \"inv:x:\""],
            ),
            (
                Some(("[{cache:read: {prefix: \"inv:\"}}]", "{}")),
                ("[{cache:read: {prefix: \"in\"}}]", "{}"),
                &[],
                &["cache:read prefix \"inv:\" -> \"in\""],
                &[],
            ),
            (
                Some(("[{cache:write: {prefix: \"a:\", max_ttl: 1h}}]", "{}")),
                ("[{cache:write: {prefix: \"a:\", max_ttl: 2h}}]", "{}"),
                &[],
                &["cache:write max_ttl 1h -> 2h"],
                &[],
            ),
            (
                Some(("[]", "{}")),
                ("[{cache:write: {prefix: \"a:\"}}]", "{}"),
                &["cache:write prefix \"a:\""],
                &[],
                &[],
            ),
            (
                Some(("[{fs:temp: {size: 10M}}]", "{}")),
                ("[{fs:temp: {size: 20M}}]", "{}"),
                &[],
                &["fs:temp size 10000000 -> 20000000"],
                &[],
            ),
            // resources
            (
                Some(("[]", "{timeout: 10s, memory: 256Mi, cpu: 0.5}")),
                ("[]", "{timeout: 20s, memory: 128Mi, cpu: 1}"),
                &[],
                &["resources.timeout 10s -> 20s", "resources.cpu 0.5 -> 1"],
                &["resources.memory 268435456 -> 134217728"],
            ),
        ];
        for (old, new, added, widened, removed) in cases {
            let old = old.map(|(c, r)| contract(c, r));
            let new = contract(new.0, new.1);
            let diff = capability_diff(old.as_ref(), &new);
            let want = CapabilityDiff {
                added: added.iter().map(|s| s.to_string()).collect(),
                widened: widened.iter().map(|s| s.to_string()).collect(),
                removed: removed.iter().map(|s| s.to_string()).collect(),
            };
            let sorted = |d: &CapabilityDiff| {
                let mut d = d.clone();
                d.added.sort();
                d.widened.sort();
                d.removed.sort();
                d
            };
            assert_eq!(sorted(&diff), sorted(&want), "{old:?} -> {new:?}");
            assert_eq!(
                diff.widens(),
                !added.is_empty() || !widened.is_empty(),
                "{new:?}"
            );
        }
    }
}
