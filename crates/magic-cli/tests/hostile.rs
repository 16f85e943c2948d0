//! Hostile controllers against the process-mode sandbox (the default mode): every attempt to
//! get out must fail, and the runtime must keep serving afterwards. Needs root on Linux (as
//! `magic serve` in process mode does); skipped with a message otherwise.
#![allow(clippy::unwrap_used)]

mod common;

use serde_json::{json, Value};

use common::{deploy_hostile as deploy, is_root as root, Server};

async fn attack(server: &Server, input: Value) -> Value {
    let (status, _, body) = server
        .post("/api/execute/HostileEscape", &input.to_string())
        .await;
    assert_eq!(status, 200, "{input}: {body}");
    body["output"].clone()
}

async fn still_serving(server: &Server) {
    let out = attack(server, json!({"attack": "memory_state"})).await;
    assert_eq!(out["blocked"], true, "fresh process expected: {out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn escape_attempts_fail_and_the_runtime_keeps_serving() {
    if !root() {
        return;
    }
    let server = Server::start(&[]);
    deploy(&server, "escape");
    let port: i64 = server.url.rsplit(':').next().unwrap().parse().unwrap();
    let data_dir = std::fs::canonicalize(&server.data_dir).unwrap();
    let runtime_pid = server.child.id() as i64;
    let attacks = [
        json!({"attack": "read_shadow"}),
        json!({"attack": "read_data_dir", "path": data_dir.to_str().unwrap()}),
        json!({"attack": "write_persistent"}),
        json!({"attack": "tcp_loopback", "port": port}),
        json!({"attack": "udp_loopback", "port": port}),
        json!({"attack": "raw_sockets"}),
        json!({"attack": "ptrace"}),
        json!({"attack": "mount"}),
        json!({"attack": "unshare"}),
        json!({"attack": "exec"}),
        json!({"attack": "setuid"}),
        json!({"attack": "proc_exe"}),
        json!({"attack": "runtime_fds"}),
        json!({"attack": "signal", "pid": runtime_pid}),
        json!({"attack": "see_processes"}),
        json!({"attack": "fork_bomb"}),
        json!({"attack": "memory_state"}),
        json!({"attack": "memory_state"}),
    ];
    for a in attacks {
        let out = attack(&server, a.clone()).await;
        eprintln!("{}: {}", a["attack"], out["detail"]);
        assert_eq!(
            out["blocked"], true,
            "{a} was not blocked: {}",
            out["detail"]
        );
        still_serving(&server).await;
    }
    // The runtime itself is untouched and still answers.
    let (status, _) = server.get("/api/health", None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn resource_limits_answer_with_their_codes_and_are_counted() {
    if !root() {
        return;
    }
    let server = Server::start(&[]);
    for name in ["escape", "memory_hog", "spinner", "tmp_filler"] {
        deploy(&server, name);
    }
    let (status, _, body) = server.post("/api/execute/HostileMemoryHog", "{}").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (507, Some("E3002")),
        "{body}"
    );
    still_serving(&server).await;

    let started = std::time::Instant::now();
    let (status, _, body) = server.post("/api/execute/HostileSpinner", "{}").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (504, Some("E3001")),
        "{body}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    still_serving(&server).await;

    let (status, _, body) = server
        .post("/api/execute/HostileTmpFiller", r#"{"mode":"fill"}"#)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (507, Some("E3003")),
        "{body}"
    );
    still_serving(&server).await;

    // Files left in /tmp by one execution are gone in the next (and never visible to another).
    for _ in 0..3 {
        let (status, _, body) = server
            .post("/api/execute/HostileTmpFiller", r#"{"mode":"remember"}"#)
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["output"]["found"], json!([]), "{body}");
        assert_eq!(body["output"]["temp_dir"], "/tmp");
    }

    let (_, text) = server.get("/metrics", None).await;
    for resource in ["memory", "timeout", "temp_disk"] {
        let needle = format!("resource=\"{resource}\"}} 1");
        assert!(text.contains(&needle), "metrics lack {needle}:\n{text}");
    }
    // The audit trail and the log note each limit.
    assert!(server
        .wait_log(&["resource_limit_exceeded", "E3002"])
        .is_some());
    assert!(server
        .wait_log(&["resource_limit_exceeded", "E3003"])
        .is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_starts_the_zygote_and_a_dead_zygote_is_restarted() {
    if !root() {
        return;
    }
    let server = Server::start(&[]);
    deploy(&server, "escape");
    // Hot deploy: the zygote came up during the deploy, before any request.
    let ready = server
        .wait_log(&["zygote_ready", "HostileEscape"])
        .expect("zygote_ready logged by the deploy");
    let pid = ready["pid"].as_i64().expect("zygote pid");
    still_serving(&server).await;

    // Kill the zygote from outside: the next executions still get fresh sandboxed children.
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    std::thread::sleep(std::time::Duration::from_millis(100));
    for _ in 0..3 {
        let (status, _, body) = server
            .post("/api/execute/HostileEscape", r#"{"attack":"memory_state"}"#)
            .await;
        assert_eq!(status, 200, "{body}");
    }
    assert!(server
        .wait_log(&["zygote_restart", "HostileEscape"])
        .is_some());
}
