//! Observability end to end: `/metrics` passes `promtool check metrics`; a `kill -9` of the
//! runtime under load leaves an audit chain that verifies and holds every answered request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{code, contract, write_controller, Server, ADMIN_KEY};

#[tokio::test(flavor = "multi_thread")]
async fn metrics_pass_promtool_lint() {
    let server = Server::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    write_controller(
        &dir,
        &contract("Metered", "1.0.0", "greeting", ""),
        &code(
            "Metered",
            "        self.metrics.counter(\"orders_total\", 2, labels={\"plan\": \"pro\"})\n        self.metrics.gauge(\"queue_depth\", 7)\n        self.metrics.histogram(\"step_seconds\", 0.02)\n        if input.get(\"n\") == 1:\n            raise ValueError(\"boom\")\n        return {\"greeting\": \"ok\"}",
        ),
    );
    assert!(server
        .cli(&["deploy", dir.to_str().unwrap()])
        .status
        .success());
    for body in ["{}", "{\"n\": 1}", "{\"n\": \"bad\"}"] {
        let _ = server.post("/api/execute/Metered", body).await;
    }
    let (status, text) = server.get("/metrics", None).await;
    assert_eq!(status, 200);
    assert!(text.contains("magic_custom_metered_orders_total"), "{text}");
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`, installed by .ci/run) must be on PATH");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_under_load_loses_no_answered_request_from_the_audit_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start_in(&data, &[]);
    let dir = tmp.path().join("c");
    write_controller(
        &dir,
        &contract("Busy", "1.0.0", "greeting", ""),
        &code("Busy", "        return {\"greeting\": \"ok\"}"),
    );
    assert!(server
        .cli(&["deploy", dir.to_str().unwrap()])
        .status
        .success());

    let answered = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop_at = Instant::now() + Duration::from_millis(2500);
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let url = server.url.clone();
        let answered = answered.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut i = 0;
            while Instant::now() < stop_at + Duration::from_secs(2) {
                i += 1;
                let id = format!("req_crash_{worker}_{i}");
                let resp = client
                    .post(format!("{url}/api/execute/Busy"))
                    .header("x-api-key", ADMIN_KEY)
                    .header("x-request-id", &id)
                    .body("{}")
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status().as_u16() == 200 => answered.lock().unwrap().push(id),
                    Ok(_) => {}
                    Err(_) => break, // the server is gone
                }
            }
        }));
    }
    tokio::time::sleep_until(tokio::time::Instant::from_std(stop_at)).await;
    let mut server = server;
    server.child.kill().unwrap(); // SIGKILL, mid-load
    server.child.wait().unwrap();
    for t in tasks {
        let _ = t.await;
    }
    let answered = answered.lock().unwrap().clone();
    assert!(
        answered.len() >= 5,
        "too little load before the kill: {}",
        answered.len()
    );
    drop(server);

    let server = Server::start_in(&data, &[]);
    let out = server.cli(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "chain broken after kill -9: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let export = server.cli(&["audit", "export"]);
    assert!(export.status.success());
    let completed: HashSet<String> = String::from_utf8_lossy(&export.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["event"] == "execution_complete")
        .filter_map(|r| r["request_id"].as_str().map(str::to_string))
        .collect();
    let missing: Vec<&String> = answered
        .iter()
        .filter(|id| !completed.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} answered requests have no execution_complete record: {missing:?}",
        missing.len()
    );
}
