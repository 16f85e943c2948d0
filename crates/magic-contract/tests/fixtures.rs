//! Realistic packages under `tests/fixtures/`, read from disk and checked end to end.

use std::path::PathBuf;
use std::time::Duration;

use magic_contract::{
    check_package, read_package_dir, Capability, ContractErrors, PackageKind, Problem,
};
use serde_json::json;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn load(name: &str) -> magic_contract::Package {
    let files = read_package_dir(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    check_package(files).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn invoice_sync_is_valid_and_validates_io() {
    let package = load("invoice_sync");
    assert_eq!(package.kind, PackageKind::Python);
    let compiled = &package.contract;
    let contract = compiled.contract();
    assert_eq!(contract.name, "InvoiceSync");
    assert_eq!(contract.version.to_string(), "1.2.0");
    assert_eq!(contract.resources.timeout, Duration::from_secs(10));
    assert_eq!(
        contract
            .capabilities
            .iter()
            .map(Capability::name)
            .collect::<Vec<_>>(),
        ["db:read", "http:egress", "secrets:read"]
    );
    assert!(compiled.description().is_some());

    let good = json!({"customer_id": "cus_1", "invoice_data": {"amount": 100, "currency": "EUR"}});
    assert_eq!(compiled.validate_input(&good), Ok(()));
    let bad = json!({"customer_id": "", "invoice_data": {"amount": -1, "currency": "euro"}});
    let violations = compiled.validate_input(&bad).unwrap_err();
    let mut paths: Vec<&str> = violations.iter().map(|v| v.path.as_str()).collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "/customer_id",
            "/invoice_data/amount",
            "/invoice_data/currency"
        ]
    );
    let out = json!({"sync_id": "in_1", "status": "done", "request_id": "r"});
    let violations = compiled.validate_output(&out).unwrap_err();
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].path, "/status");
}

#[test]
fn hello_world_is_valid() {
    let package = load("hello_world");
    assert_eq!(package.contract.contract().capabilities, vec![]);
    assert_eq!(
        package.contract.contract().resources,
        magic_contract::Resources::default()
    );
    let extra = json!({"name": "Ada", "admin": true});
    let violations = package.contract.validate_input(&extra).unwrap_err();
    assert_eq!(violations[0].path, "");
    assert!(violations[0].message.contains("admin"), "{violations:?}");
}

#[test]
fn every_capability_is_valid() {
    let package = load("every_capability");
    let contract = package.contract.contract();
    assert_eq!(
        contract.capabilities.len(),
        magic_contract::CAPABILITY_NAMES.len()
    );
    for name in magic_contract::CAPABILITY_NAMES {
        assert!(contract.capability(name).is_some(), "{name}");
    }
    assert_eq!(contract.resources.cpu, 2.0);
    assert_eq!(contract.resources.memory, magic_contract::MAX_MEMORY);
    match contract.capability("http:egress") {
        Some(Capability::HttpEgress(grant)) => {
            assert_eq!(grant.allow.len(), 5);
            assert_eq!(grant.resolve["internal.example.com"].len(), 2);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn broken_package_lists_every_problem() {
    let files = read_package_dir(&fixture("broken")).unwrap();
    let Err(ContractErrors(found)) = check_package(files) else {
        panic!("the broken fixture passed");
    };
    let at = |file: &str, field: &str| {
        found
            .iter()
            .any(|p: &Problem| p.file == file && p.field == field)
    };
    for (file, field) in [
        ("contract.yaml", "name"),
        ("contract.yaml", "version"),
        ("contract.yaml", "input"),
        ("contract.yaml", "capabilities[0].db:read"),
        ("contract.yaml", "capabilities[1].http:egress.allow[0]"),
        ("contract.yaml", "capabilities[2].cache:write.prefix"),
        ("contract.yaml", "capabilities[2].cache:write.max_ttl"),
        ("contract.yaml", "resources.timeout"),
        ("contract.yaml", "resources.memory"),
        ("controller.py", "line 4"),
        ("controller.py", "line 5"),
    ] {
        assert!(at(file, field), "{file}: {field} missing in {found:#?}");
    }
    assert_eq!(found.len(), 11, "{found:#?}");
}

#[test]
fn serialized_contracts_parse_back_to_the_same_contract() {
    for name in ["invoice_sync", "hello_world", "every_capability"] {
        let package = load(name);
        let contract = package.contract.contract();
        let json = serde_json::to_string(contract).unwrap();
        // JSON is YAML: the serialized form is itself a valid contract.
        let again = magic_contract::parse_contract(&json).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(again.contract(), contract, "{name}");
    }
}
