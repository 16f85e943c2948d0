//! Process mode beyond isolation: the spare pool and zygotes scale with load, a dead zygote's
//! spares are never handed out, the runtime itself notices a full `fs:temp` (E3003), and the
//! sandbox's host id range is configurable. Needs root on Linux (as process mode does);
//! skipped with a message otherwise. Timings are never asserted here (see `bench/`).
#![allow(clippy::unwrap_used)]

mod common;

use common::{deploy_hostile as deploy, is_root as root, Server};

fn status_field(pid: i64, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_swallowed_temp_disk_error_is_still_e3003() {
    if !root() {
        return;
    }
    let server = Server::start(&[]);
    deploy(&server, "tmp_filler");
    let (status, _, body) = server
        .post("/api/execute/HostileTmpFiller", r#"{"mode":"swallow"}"#)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (507, Some("E3003")),
        "{body}"
    );
    // A run that stays within its space is untouched.
    let (status, _, body) = server
        .post("/api/execute/HostileTmpFiller", r#"{"mode":"remember"}"#)
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_load_adds_a_zygote_and_a_dead_zygotes_spares_are_never_used() {
    if !root() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let server = Server::start(&[]);
    deploy(&server, "escape");
    let ready = server
        .wait_log(&["zygote_ready", "HostileEscape"])
        .expect("zygote_ready");
    let first = ready["pid"].as_i64().unwrap();

    // Eight concurrent requests, more than the spares kept for an idle version.
    let burst = || async {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (url, key) = (server.url.clone(), common::ADMIN_KEY.to_string());
            tasks.push(tokio::spawn(async move {
                let r = reqwest::Client::new()
                    .post(format!("{url}/api/execute/HostileEscape"))
                    .header("X-API-Key", key)
                    .header("Content-Type", "application/json")
                    .body(r#"{"attack":"memory_state"}"#)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                (status, r.text().await.unwrap())
            }));
        }
        for t in tasks {
            let (status, body) = t.await.unwrap();
            assert_eq!(status, 200, "{body}");
        }
    };
    burst().await;
    if cores > 1 {
        let added = server
            .wait_log(&["zygote_added", "HostileEscape"])
            .expect("a second zygote under concurrent load");
        assert_ne!(added["pid"].as_i64().unwrap(), first);
    }

    // Kill the first zygote: its spares die with it and must not be handed to requests.
    let status = std::process::Command::new("kill")
        .args(["-9", &first.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    std::thread::sleep(std::time::Duration::from_millis(100));
    burst().await;
    assert!(server
        .wait_log(&["zygote_restart", "HostileEscape"])
        .is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sandbox_id_range_is_configurable() {
    if !root() {
        return;
    }
    let server = Server::start(&[("MAGIC_SANDBOX_ID_BASE", "300000")]);
    deploy(&server, "escape");
    let ready = server
        .wait_log(&["zygote_ready", "HostileEscape"])
        .expect("zygote_ready");
    let pid = ready["pid"].as_i64().unwrap();
    // The zygote is root only inside its user namespace: host uid/gid 300000.
    assert!(status_field(pid, "Uid:").starts_with("300000"));
    assert!(status_field(pid, "Gid:").starts_with("300000"));
    let (status, _, body) = server
        .post("/api/execute/HostileEscape", r#"{"attack":"memory_state"}"#)
        .await;
    assert_eq!(status, 200, "{body}");

    // A base that would map the sandbox's root to host root is refused at start.
    let mut other = std::process::Command::new(common::magic_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(server.data_dir.join("other"))
        .env("MAGIC_SANDBOX_ID_BASE", "0")
        .env("MAGIC_ADMIN_API_KEY", common::ADMIN_KEY)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while other.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = other.kill();
            panic!("serve did not refuse MAGIC_SANDBOX_ID_BASE=0");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = other.wait_with_output().unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("MAGIC_SANDBOX_ID_BASE"), "{text}");
}
