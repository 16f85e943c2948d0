//! Building denials that explain themselves, and finding grants in a contract.
//!
//! Owns: the `details` of every refused call (capability, refused target, the contract entry
//! that would allow it). Must never: put a value (secret, cache value, row) in a denial.

use magic_contract::{Capability, Contract, ErrorCode};

use crate::BrokerError;

/// A denial: code, message and the three details every denial carries.
pub(crate) fn denied(
    code: ErrorCode,
    capability: &str,
    target: &str,
    allow_with: String,
    message: String,
) -> BrokerError {
    BrokerError {
        code,
        message,
        details: Some(serde_json::json!({
            "capability": capability,
            "target": target,
            "allow_with": allow_with,
        })),
    }
}

/// E2001: the contract does not declare `capability` at all.
pub(crate) fn not_declared(capability: &str, target: &str, allow_with: String) -> BrokerError {
    denied(
        ErrorCode::CapabilityNotDeclared,
        capability,
        target,
        allow_with,
        format!("capability {capability} is not declared in the contract"),
    )
}

/// Render a YAML flow list of names (`[a, "b c"]`), quoting what YAML would misread.
pub(crate) fn yaml_list(items: &[String]) -> String {
    let rendered: Vec<String> = items.iter().map(|s| yaml_scalar(s)).collect();
    format!("[{}]", rendered.join(", "))
}

/// A YAML scalar, quoted unless it is a plain word.
pub(crate) fn yaml_scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if plain {
        s.to_string()
    } else {
        serde_json::Value::String(s.to_string()).to_string()
    }
}

/// The names granted by every entry of one list-scoped capability (`tables`, `keys`,
/// `queues`), or `None` when the capability is not declared.
pub(crate) fn granted_names<'a>(
    contract: &'a Contract,
    pick: impl Fn(&'a Capability) -> Option<&'a Vec<String>>,
) -> Option<Vec<&'a str>> {
    let mut found = false;
    let mut names = Vec::new();
    for cap in &contract.capabilities {
        if let Some(list) = pick(cap) {
            found = true;
            names.extend(list.iter().map(String::as_str));
        }
    }
    found.then_some(names)
}

/// Check `target` against a list-scoped capability: E2001 when undeclared, `code` when the
/// target is not listed. `option` is the option's name (`tables`), used in `allow_with`.
pub(crate) fn check_listed(
    contract: &Contract,
    capability: &str,
    option: &str,
    target: &str,
    code: ErrorCode,
    pick: impl for<'a> Fn(&'a Capability) -> Option<&'a Vec<String>>,
) -> Result<(), BrokerError> {
    match granted_names(contract, pick) {
        None => Err(not_declared(
            capability,
            target,
            format!("{capability}: {{ {option}: [{}] }}", yaml_scalar(target)),
        )),
        Some(names) if names.contains(&target) => Ok(()),
        Some(names) => {
            let mut wanted: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            wanted.push(target.to_string());
            Err(denied(
                code,
                capability,
                target,
                format!("{capability}: {{ {option}: {} }}", yaml_list(&wanted)),
                format!(
                    "{} {target} is not in the contract's {capability} {option}",
                    singular(option)
                ),
            ))
        }
    }
}

fn singular(option: &str) -> &str {
    match option {
        "tables" => "table",
        "keys" => "secret",
        "queues" => "queue",
        other => other,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;

    /// A contract with the given capabilities (tests of every module use it).
    pub(crate) fn contract(capabilities: Vec<Capability>) -> Arc<Contract> {
        Arc::new(Contract {
            name: "Test".into(),
            version: semver::Version::new(1, 0, 0),
            input: serde_json::json!({}),
            output: serde_json::json!({}),
            capabilities,
            resources: Default::default(),
        })
    }

    fn tables(c: &Capability) -> Option<&Vec<String>> {
        match c {
            Capability::DbRead { tables } => Some(tables),
            _ => None,
        }
    }

    #[test]
    fn listed_checks_table() {
        let c = contract(vec![
            Capability::DbRead {
                tables: vec!["customers".into()],
            },
            Capability::DbRead {
                tables: vec!["invoices".into()],
            },
        ]);
        let none = contract(vec![]);
        // (contract, target, expected code or None for allowed, expected allow_with)
        let cases: &[(&Contract, &str, Option<ErrorCode>, &str)] = &[
            (&c, "customers", None, ""),
            (&c, "invoices", None, ""),
            (
                &c,
                "orders",
                Some(ErrorCode::TableNotAllowed),
                "db:read: { tables: [customers, invoices, orders] }",
            ),
            (
                &c,
                "Customers",
                Some(ErrorCode::TableNotAllowed),
                "db:read: { tables: [customers, invoices, Customers] }",
            ),
            (
                &c,
                "x; DROP TABLE y",
                Some(ErrorCode::TableNotAllowed),
                "db:read: { tables: [customers, invoices, \"x; DROP TABLE y\"] }",
            ),
            (
                &none,
                "orders",
                Some(ErrorCode::CapabilityNotDeclared),
                "db:read: { tables: [orders] }",
            ),
        ];
        for (contract, target, code, allow) in cases {
            let r = check_listed(
                contract,
                "db:read",
                "tables",
                target,
                ErrorCode::TableNotAllowed,
                tables,
            );
            match code {
                None => assert!(r.is_ok(), "{target}"),
                Some(code) => {
                    let e = r.err().unwrap_or_else(|| BrokerError::invalid("allowed"));
                    assert_eq!(e.code, *code, "{target}");
                    let d = e.details.unwrap_or_default();
                    assert_eq!(d["capability"], "db:read");
                    assert_eq!(d["target"], *target);
                    assert_eq!(d["allow_with"], *allow);
                }
            }
        }
    }
}
