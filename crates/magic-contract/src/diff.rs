//! The capability diff between two contracts: what a new version may do that the old one could
//! not, what it keeps, and what it gives up.
//!
//! Owns: [`capability_diff`], a pure function used by the operator console (and approvals) to
//! show reviewers exactly which grants grow. Must never: call a change "not widened" when the
//! new grant admits anything the old one did not (when in doubt, it is widened).

use std::collections::BTreeSet;

use crate::{Capability, Contract};

/// One capability present in both contracts whose new options grant more.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WidenedCapability {
    /// The capability's name (`"db:read"`).
    pub name: String,
    /// The old grant.
    pub old: Capability,
    /// The new grant.
    pub new: Capability,
    /// What the new grant adds, one entry per item (`"table orders"`, `"host api.example.com"`).
    pub grants: Vec<String>,
}

/// The difference in capabilities between an old and a new contract.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct CapabilityDiff {
    /// Capabilities declared only by the new contract.
    pub added: Vec<Capability>,
    /// Capabilities in both whose new options grant more than the old ones.
    pub widened: Vec<WidenedCapability>,
    /// Capabilities declared only by the old contract.
    pub removed: Vec<Capability>,
}

impl CapabilityDiff {
    /// Whether the new contract may do anything the old one could not.
    pub fn grants_more(&self) -> bool {
        !self.added.is_empty() || !self.widened.is_empty()
    }

    /// Whether the two contracts declare the same capabilities as far as grants go.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.widened.is_empty() && self.removed.is_empty()
    }
}

fn new_items(label: &str, old: &[String], new: &[String]) -> Vec<String> {
    let old: BTreeSet<&String> = old.iter().collect();
    new.iter()
        .filter(|n| !old.contains(n))
        .map(|n| format!("{label} {n}"))
        .collect()
}

/// What `new` grants beyond `old` (both the same capability kind); empty when it grants
/// nothing more.
fn widening(old: &Capability, new: &Capability) -> Vec<String> {
    use Capability as C;
    match (old, new) {
        (C::DbRead { tables: o }, C::DbRead { tables: n })
        | (C::DbWrite { tables: o }, C::DbWrite { tables: n }) => new_items("table", o, n),
        (C::SecretsRead { keys: o }, C::SecretsRead { keys: n }) => new_items("secret", o, n),
        (C::QueuePublish { queues: o }, C::QueuePublish { queues: n })
        | (C::QueueSubscribe { queues: o }, C::QueueSubscribe { queues: n }) => {
            new_items("queue", o, n)
        }
        (C::HttpEgress(o), C::HttpEgress(n)) => {
            let mut g = new_items("host", &o.allow, &n.allow);
            g.extend(new_items("address", &o.allow_ips, &n.allow_ips));
            for (host, ips) in &n.resolve {
                let before = o.resolve.get(host);
                for ip in ips {
                    if before.is_none_or(|b| !b.contains(ip)) {
                        g.push(format!("resolve {host} → {ip}"));
                    }
                }
            }
            g
        }
        (C::CacheRead { prefix: o }, C::CacheRead { prefix: n }) => prefix_widening(o, n),
        (
            C::CacheWrite {
                prefix: o,
                max_ttl: ot,
            },
            C::CacheWrite {
                prefix: n,
                max_ttl: nt,
            },
        ) => {
            let mut g = prefix_widening(o, n);
            if nt > ot {
                g.push(format!(
                    "max_ttl {} → {}",
                    crate::units::format_duration(*ot),
                    crate::units::format_duration(*nt)
                ));
            }
            g
        }
        (C::FsTemp { size: o }, C::FsTemp { size: n }) if n > o => {
            vec![format!("size {o} → {n} bytes")]
        }
        (C::FsTemp { .. }, C::FsTemp { .. }) | (C::DbRawSql, C::DbRawSql) => vec![],
        // Different kinds never meet here (paired by name); be safe if they do.
        _ => vec![format!("{} options changed", new.name())],
    }
}

/// A cache prefix grants more when the new prefix is not inside the old one.
fn prefix_widening(old: &str, new: &str) -> Vec<String> {
    if new.starts_with(old) {
        vec![]
    } else {
        vec![format!("prefix {old:?} → {new:?}")]
    }
}

/// The capability diff from `old` to `new`: capabilities added, widened (present in both, new
/// options grant more) and removed. Order follows the contracts' declaration order.
pub fn capability_diff(old: &Contract, new: &Contract) -> CapabilityDiff {
    let mut diff = CapabilityDiff::default();
    for n in &new.capabilities {
        match old.capability(n.name()) {
            None => diff.added.push(n.clone()),
            Some(o) => {
                let grants = widening(o, n);
                if !grants.is_empty() {
                    diff.widened.push(WidenedCapability {
                        name: n.name().to_string(),
                        old: o.clone(),
                        new: n.clone(),
                        grants,
                    });
                }
            }
        }
    }
    for o in &old.capabilities {
        if new.capability(o.name()).is_none() {
            diff.removed.push(o.clone());
        }
    }
    diff
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EgressGrant;
    use std::time::Duration;

    fn contract(caps: Vec<Capability>) -> Contract {
        Contract {
            name: "C".into(),
            version: semver::Version::new(1, 0, 0),
            input: serde_json::json!({}),
            output: serde_json::json!({}),
            capabilities: caps,
            resources: crate::Resources::default(),
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn table_of_changes() {
        use Capability as C;
        let egress = |hosts: &[&str]| {
            C::HttpEgress(EgressGrant {
                allow: s(hosts),
                ..EgressGrant::default()
            })
        };
        // (old, new, added names, widened grants, removed names)
        type Case = (
            Vec<Capability>,
            Vec<Capability>,
            Vec<&'static str>,
            Vec<&'static str>,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (vec![], vec![], vec![], vec![], vec![]),
            (vec![], vec![C::DbRawSql], vec!["db:rawsql"], vec![], vec![]),
            (vec![C::DbRawSql], vec![], vec![], vec![], vec!["db:rawsql"]),
            (
                vec![C::DbRead { tables: s(&["a"]) }],
                vec![C::DbRead {
                    tables: s(&["a", "b"]),
                }],
                vec![],
                vec!["table b"],
                vec![],
            ),
            (
                vec![C::DbRead {
                    tables: s(&["a", "b"]),
                }],
                vec![C::DbRead { tables: s(&["a"]) }],
                vec![],
                vec![],
                vec![],
            ),
            (
                vec![egress(&["a.example"])],
                vec![egress(&["a.example", "*.b.example"])],
                vec![],
                vec!["host *.b.example"],
                vec![],
            ),
            (
                vec![C::FsTemp { size: 10 }],
                vec![C::FsTemp { size: 20 }],
                vec![],
                vec!["size 10 → 20 bytes"],
                vec![],
            ),
            (
                vec![C::FsTemp { size: 20 }],
                vec![C::FsTemp { size: 10 }],
                vec![],
                vec![],
                vec![],
            ),
            (
                vec![C::CacheRead {
                    prefix: "a:".into(),
                }],
                vec![C::CacheRead {
                    prefix: "a:b:".into(),
                }],
                vec![],
                vec![],
                vec![],
            ),
            (
                vec![C::CacheWrite {
                    prefix: "a:".into(),
                    max_ttl: Duration::from_secs(60),
                }],
                vec![C::CacheWrite {
                    prefix: "".into(),
                    max_ttl: Duration::from_secs(3600),
                }],
                vec![],
                vec!["prefix \"a:\" → \"\"", "max_ttl 60s → 1h"],
                vec![],
            ),
            (
                vec![C::SecretsRead { keys: s(&["k"]) }],
                vec![C::QueuePublish { queues: s(&["q"]) }],
                vec!["queue:publish"],
                vec![],
                vec!["secrets:read"],
            ),
        ];
        for (i, (old, new, added, widened, removed)) in cases.into_iter().enumerate() {
            let d = capability_diff(&contract(old), &contract(new));
            let names = |v: &[Capability]| v.iter().map(|c| c.name()).collect::<Vec<_>>();
            assert_eq!(names(&d.added), added, "case {i} added");
            assert_eq!(names(&d.removed), removed, "case {i} removed");
            let grants: Vec<String> = d.widened.iter().flat_map(|w| w.grants.clone()).collect();
            assert_eq!(grants, widened, "case {i} widened");
            assert_eq!(d.grants_more(), !added.is_empty() || !widened.is_empty());
        }
    }
}
