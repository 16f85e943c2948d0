//! Deploy approvals end to end: with `MAGIC_REQUIRE_APPROVAL=1` a deploy that widens
//! capabilities answers 202 and waits; the requester cannot decide it; an approver's approval
//! activates it; a rejection deploys nothing; every step is audited with its actor.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use base64::Engine as _;
use common::{code, write_controller, Server, ADMIN_KEY};
use serde_json::json;

fn cli_as(server: &Server, key: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(common::magic_bin())
        .args(args)
        .env("MAGIC_URL", &server.url)
        .env("MAGIC_API_KEY", key)
        .env_remove("MAGIC_DATA_DIR")
        .output()
        .unwrap()
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "stdout {} stderr {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn package(dir: &std::path::Path) -> serde_json::Value {
    let files: BTreeMap<String, String> = ["contract.yaml", "controller.py"]
        .iter()
        .map(|f| {
            (
                f.to_string(),
                base64::engine::general_purpose::STANDARD
                    .encode(std::fs::read(dir.join(f)).unwrap()),
            )
        })
        .collect();
    json!({ "files": files })
}

async fn call(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = server
        .client()
        .request(method, format!("{}{path}", server.url))
        .header("x-api-key", key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn widening_deploys_wait_for_a_second_person() {
    let server = Server::start(&[
        ("MAGIC_REQUIRE_APPROVAL", "1"),
        ("CONTROLLER_EXECUTION_MODE", "inline"),
    ]);
    let key = |role: &str, name: &str| {
        ok(&server.cli(&["keys", "create", "--role", role, "--name", name]))
            .trim()
            .to_string()
    };
    let dev = key("deployer", "dev");
    let boss = key("approver", "boss");

    let tmp = tempfile::tempdir().unwrap();
    let version = |v: &str, caps: &str| {
        let dir = tmp.path().join(v);
        write_controller(
            &dir,
            &format!("name: Gate\nversion: {v}\ninput: {{ type: object }}\noutput: {{ type: object }}\ncapabilities: {caps}\n"),
            &code("Gate", &format!("        return {{\"v\": \"{v}\"}}")),
        );
        dir
    };
    // No capabilities: nothing to approve.
    let v1 = version("1.0.0", "[]");
    let out = ok(&cli_as(&server, &dev, &["deploy", v1.to_str().unwrap()]));
    assert!(out.starts_with("deployed Gate 1.0.0"), "{out}");

    // A new secret key and a cache prefix: waits.
    let v2 = version(
        "2.0.0",
        "[{secrets:read: {keys: [API_TOKEN]}}, {cache:read: {prefix: \"gate:\"}}]",
    );
    let (status, body) = call(
        &server,
        reqwest::Method::POST,
        "/api/admin/controllers",
        &dev,
        Some(package(&v2)),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["result"], "pending_approval");
    assert_eq!(body["name"], "Gate");
    assert_eq!(body["version"], "2.0.0");
    let id = body["approval_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("apr_"));
    let added: Vec<&str> = body["diff"]["added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        added,
        ["secrets:read API_TOKEN", "cache:read prefix \"gate:\""]
    );
    // Deploying the same package again finds the same request; the CLI says it waits.
    let out = ok(&cli_as(&server, &dev, &["deploy", v2.to_str().unwrap()]));
    assert!(out.contains(&format!("waits for approval {id}")), "{out}");
    assert!(out.contains("+ secrets:read API_TOKEN"), "{out}");

    // Still v1: pending versions are neither active nor executable.
    let status = ok(&server.cli(&["status", "Gate", "--json"]));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["active_version"], "1.0.0");
    assert_eq!(status["versions"].as_array().unwrap().len(), 1);

    // The deployer has no approve permission at all.
    let (s, b) = call(
        &server,
        reqwest::Method::POST,
        &format!("/api/admin/approvals/{id}/approve"),
        &dev,
        None,
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (403, Some("E4002")),
        "{b}"
    );

    // The approver sees it, with the diff, and approves it.
    let out = ok(&cli_as(&server, &boss, &["approvals", "list"]));
    assert!(out.contains(&id) && out.contains("apikey:dev"), "{out}");
    let out = ok(&cli_as(&server, &boss, &["approvals", "show", &id]));
    assert!(out.contains("+ secrets:read API_TOKEN"), "{out}");
    let out = ok(&cli_as(
        &server,
        &boss,
        &["approvals", "approve", &id, "--reason", "token reviewed"],
    ));
    assert!(out.contains("Gate 2.0.0 is deployed and active"), "{out}");
    let (s, b) = call(
        &server,
        reqwest::Method::GET,
        &format!("/api/admin/approvals/{id}"),
        &boss,
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(b["status"], "approved");
    assert_eq!(b["decided_by"], "apikey:boss");
    assert_eq!(b["reason"], "token reviewed");
    assert!(b["decided_at"].is_string());
    let (s, b) = server.post("/api/execute/Gate", "{}").await.into_pair();
    assert_eq!((s, &b["output"]["v"]), (200, &json!("2.0.0")), "{b}");
    let status: serde_json::Value =
        serde_json::from_str(&ok(&server.cli(&["status", "Gate", "--json"]))).unwrap();
    assert_eq!(status["versions"][0]["deployed_by"], "apikey:dev");

    // Deciding twice: 409.
    let (s, _) = call(
        &server,
        reqwest::Method::POST,
        &format!("/api/admin/approvals/{id}/reject"),
        &boss,
        None,
    )
    .await;
    assert_eq!(s, 409);

    // An admin cannot approve its own request (it holds approve, but asked).
    let v3 = version(
        "3.0.0",
        "[{secrets:read: {keys: [API_TOKEN]}}, {cache:read: {prefix: \"gate:\"}}, db:rawsql]",
    );
    let (status, body) = call(
        &server,
        reqwest::Method::POST,
        "/api/admin/controllers",
        ADMIN_KEY,
        Some(package(&v3)),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["diff"]["added"], json!(["db:rawsql"]));
    let id3 = body["approval_id"].as_str().unwrap().to_string();
    let (s, b) = call(
        &server,
        reqwest::Method::POST,
        &format!("/api/admin/approvals/{id3}/approve"),
        ADMIN_KEY,
        None,
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (403, Some("E4002")),
        "{b}"
    );
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("requested this deploy and cannot decide it"),
        "{b}"
    );
    let out = cli_as(&server, ADMIN_KEY, &["approvals", "approve", &id3]);
    assert_eq!(out.status.code(), Some(1));
    // The approver rejects it: nothing deployed.
    ok(&cli_as(
        &server,
        &boss,
        &["approvals", "reject", &id3, "--reason", "no raw SQL"],
    ));
    let status: serde_json::Value =
        serde_json::from_str(&ok(&server.cli(&["status", "Gate", "--json"]))).unwrap();
    assert_eq!(status["active_version"], "2.0.0");
    assert_eq!(status["versions"].as_array().unwrap().len(), 2);
    let out = ok(&cli_as(&server, &boss, &["approvals", "list"]));
    assert!(out.contains("no pending approval requests"), "{out}");
    let out = ok(&cli_as(&server, &boss, &["approvals", "list", "--all"]));
    assert!(out.contains(&id) && out.contains(&id3), "{out}");
    let (s, b) = call(
        &server,
        reqwest::Method::GET,
        "/api/admin/approvals?status=rejected",
        &boss,
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(b.as_array().unwrap().len(), 1);
    assert_eq!(b[0]["id"], id3.as_str());

    // A narrowing deploy goes straight through.
    let v4 = version("4.0.0", "[{secrets:read: {keys: [API_TOKEN]}}]");
    let out = ok(&cli_as(&server, &dev, &["deploy", v4.to_str().unwrap()]));
    assert!(out.starts_with("deployed Gate 4.0.0"), "{out}");

    // Audited with the actors.
    let (s, records) = server
        .get("/api/admin/audit/records?last=100", Some(ADMIN_KEY))
        .await;
    assert_eq!(s, 200);
    let records: Vec<serde_json::Value> = serde_json::from_str::<serde_json::Value>(&records)
        .map(|v| v.as_array().cloned().unwrap_or_default())
        .unwrap_or_else(|_| {
            records
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        });
    let find = |event: &str, actor: &str| {
        records
            .iter()
            .any(|r| r["event"] == event && r["actor"] == actor)
    };
    assert!(find("approval_request", "apikey:dev"), "{records:?}");
    assert!(find("approval_approve", "apikey:boss"));
    assert!(find("approval_reject", "apikey:boss"));
    assert!(find("approval_request", "apikey:bootstrap-admin"));
}

trait IntoPair {
    fn into_pair(self) -> (u16, serde_json::Value);
}

impl IntoPair for (u16, reqwest::header::HeaderMap, serde_json::Value) {
    fn into_pair(self) -> (u16, serde_json::Value) {
        (self.0, self.2)
    }
}
