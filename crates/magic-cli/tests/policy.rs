//! The policy file end to end: an invalid file stops `serve` with every problem listed; deploys
//! that break a rule are refused naming it; versions deployed before the policy tightened do
//! not run past it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{code, write_controller, Server};

#[test]
fn an_invalid_policy_refuses_to_start_with_every_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("policy.yaml");
    std::fs::write(
        &file,
        "denied_capabilities: [db:nuke]\nresources: { max_memory: lots }\nsurprise: 1\n",
    )
    .unwrap();
    let out = std::process::Command::new(common::magic_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("data"))
        .env("MAGIC_POLICY_FILE", &file)
        .env("MAGIC_ADMIN_API_KEY", common::ADMIN_KEY)
        .env("CONTROLLER_EXECUTION_MODE", "inline")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "3 problem(s)",
        "unknown capability \"db:nuke\"",
        "resources.max_memory",
        "surprise: unknown key",
    ] {
        assert!(err.contains(needle), "{needle} not in {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deploys_are_checked_and_old_versions_do_not_run_past_a_tightened_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let inline = ("CONTROLLER_EXECUTION_MODE", "inline");
    let controller = |name: &str, caps: &str, resources: &str| {
        let dir = tmp.path().join(name);
        write_controller(
            &dir,
            &format!("name: {name}\nversion: 1.0.0\ninput: {{ type: object }}\noutput: {{ type: object }}\ncapabilities: {caps}\nresources: {resources}\n"),
            &code(name, "        return {\"ok\": True}"),
        );
        dir
    };
    let egress = controller(
        "Egress",
        "[{http:egress: {allow: [evil.example.com]}}]",
        "{}",
    );
    let raw = controller("Raw", "[db:rawsql]", "{}");
    let big = controller("Big", "[]", "{ timeout: 120s }");
    let fine = controller("Fine", "[{http:egress: {allow: [api.example.com]}}]", "{}");

    // Before the policy: all deploy and run.
    let server = Server::start_in(&data, &[inline]);
    for d in [&egress, &raw, &big, &fine] {
        let out = server.cli(&["deploy", d.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (s, _, b) = server.post("/api/execute/Big", "{}").await;
    assert_eq!(s, 200, "{b}");
    server.stop();

    // The policy tightens.
    let file = tmp.path().join("policy.yaml");
    std::fs::write(
        &file,
        "denied_capabilities: [db:rawsql]\negress: { deny: [evil.example.com, \"*.internal\"] }\nresources: { max_timeout: 60s }\n",
    )
    .unwrap();
    let server = Server::start_in(
        &data,
        &[inline, ("MAGIC_POLICY_FILE", file.to_str().unwrap())],
    );
    for (name, code, rule) in [
        ("Egress", "E2002", "egress.deny"),
        ("Raw", "E2007", "denied_capabilities"),
        ("Big", "E4002", "resources.max_timeout"),
    ] {
        let (s, _, b) = server.post(&format!("/api/execute/{name}"), "{}").await;
        assert_eq!(b["error"]["code"], code, "{name}: {s} {b}");
        let msg = b["error"]["message"].as_str().unwrap();
        assert!(msg.contains(rule) && msg.contains("policy"), "{msg}");
    }
    let (s, _, b) = server.post("/api/execute/Fine", "{}").await;
    assert_eq!(s, 200, "{b}");

    // New deploys that break it are refused with the rule named; one that keeps it deploys.
    let internal = controller(
        "Internal",
        "[{http:egress: {allow: [db.corp.internal]}}]",
        "{}",
    );
    let out = server.cli(&["deploy", internal.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("E4002") && err.contains("egress.deny"),
        "{err}"
    );
    let (s, body) = {
        use base64::Engine as _;
        let b64 = |bytes: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(bytes);
        let contract = std::fs::read_to_string(big.join("contract.yaml"))
            .unwrap()
            .replace("1.0.0", "1.0.1");
        let pkg = serde_json::json!({"files": {
            "contract.yaml": b64(contract.into_bytes()),
            "controller.py": b64(std::fs::read(big.join("controller.py")).unwrap()),
        }});
        let (s, _, b) = server
            .post("/api/admin/controllers", &pkg.to_string())
            .await;
        (s, b)
    };
    assert_eq!(s, 403, "{body}");
    assert_eq!(body["error"]["code"], "E4002");
    assert_eq!(
        body["error"]["details"]["violations"][0]["rule"],
        "resources.max_timeout"
    );
    let ok = controller(
        "Ok2",
        "[{http:egress: {allow: [api.example.com]}}]",
        "{ timeout: 60s }",
    );
    let out = server.cli(&["deploy", ok.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
