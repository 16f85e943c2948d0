//! Graceful lifecycle of the real server: SIGTERM stops accepting connections, lets in-flight
//! executions finish within `MAGIC_SHUTDOWN_GRACE`, stops (E5002, audited) those still running
//! past it, and leaves nothing behind: no processes, no cgroups, no mounts, no temp dirs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{code, contract, write_controller, Server, ADMIN_KEY};

/// Every process whose parent chain leads to `root` (its pid and start time, to tell it from a
/// later process that reuses the pid).
fn descendants(root: u32) -> Vec<(u32, String)> {
    let mut parent = std::collections::HashMap::new();
    let mut start = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if let (Some(ppid), Some(st)) = (fields.get(1), fields.get(19)) {
            parent.insert(pid, ppid.parse::<u32>().unwrap_or(0));
            start.insert(pid, st.to_string());
        }
    }
    let mut out = Vec::new();
    for (&pid, _) in parent.iter() {
        let mut cur = pid;
        for _ in 0..64 {
            match parent.get(&cur) {
                Some(&p) if p == root => {
                    out.push((pid, start[&pid].clone()));
                    break;
                }
                Some(&p) if p > 1 => cur = p,
                _ => break,
            }
        }
    }
    out
}

/// Whether the process `pid` that started at `start` still exists (and is not a zombie).
fn still_running(pid: u32, start: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return false;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields.first() != Some(&"Z") && fields.get(19) == Some(&start)
}

/// The cgroup directories of the runtime with pid `pid`, in every mounted hierarchy (v1
/// controllers and the v2 unified tree).
fn runtime_cgroups(pid: u32) -> Vec<std::path::PathBuf> {
    let name = format!("magic-{pid}");
    let mut found = Vec::new();
    let root = Path::new("/sys/fs/cgroup");
    let mut roots = vec![root.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(root) {
        roots.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for r in roots {
        let d = r.join(&name);
        if d.exists() {
            found.push(d);
        }
    }
    found
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&dir))
        .map(str::to_string)
        .collect()
}

fn sigterm(server: &Server) {
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(server.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Wait for the server to exit; its exit code and how long it took.
fn wait_exit(server: &mut Server, within: Duration) -> (Option<i32>, Duration) {
    let started = Instant::now();
    while started.elapsed() < within {
        if let Some(status) = server.child.try_wait().unwrap() {
            return (status.code(), started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "server still running {within:?} after SIGTERM; logs: {:?}",
        server.logs.lock().unwrap()
    );
}

fn deploy_sleeper(server: &Server, dir: &Path, seconds: f64) {
    write_controller(
        dir,
        &contract(
            "Sleeper",
            "1.0.0",
            "greeting",
            "resources: { timeout: 120s }\n",
        ),
        &code(
            "Sleeper",
            &format!(
                "        await asyncio.sleep({seconds})\n        return {{\"greeting\": \"done\"}}"
            ),
        ),
    );
    let out = server.cli(&["deploy", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
}

fn start_request(url: &str, request_id: &str) -> tokio::task::JoinHandle<(u16, serde_json::Value)> {
    let (url, rid) = (url.to_string(), request_id.to_string());
    tokio::spawn(async move {
        let resp = reqwest::Client::new()
            .post(format!("{url}/api/execute/Sleeper"))
            .header("x-api-key", ADMIN_KEY)
            .header("x-request-id", rid)
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or_default())
    })
}

/// Wait until the server logged the start of an execution (it is in flight).
fn wait_in_flight(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if server
            .logs
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("controller_log") || l.contains("zygote_ready"))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The request reaches the worker a moment after the zygote is ready.
    std::thread::sleep(Duration::from_millis(700));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_executions_and_leaves_nothing_behind() {
    let mut server = Server::start(&[("MAGIC_SHUTDOWN_GRACE", "20s")]);
    let pid = server.child.id();
    let tmp = tempfile::tempdir().unwrap();
    deploy_sleeper(&server, &tmp.path().join("c"), 2.5);
    let in_flight = start_request(&server.url, "drain-in-flight");
    wait_in_flight(&server);

    // What the runtime uses while it runs: processes (zygote, children), its cgroups.
    let children = descendants(pid);
    assert!(
        !children.is_empty(),
        "the runtime runs a zygote and children"
    );
    let cgroups = runtime_cgroups(pid);
    assert!(
        !cgroups.is_empty(),
        "the runtime uses cgroups in process mode"
    );
    let data_dir = server.data_dir.clone();

    sigterm(&server);
    // New connections are refused once the listener is closed.
    let addr = server.url.trim_start_matches("http://").to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::net::TcpStream::connect(&addr) {
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
                break;
            }
            Ok(_) => {
                assert!(
                    Instant::now() < deadline,
                    "still accepting 5s after SIGTERM"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    // The in-flight request completes.
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"]["greeting"], "done");
    let (code, took) = wait_exit(&mut server, Duration::from_secs(20));
    assert_eq!(code, Some(0), "logs: {:?}", server.logs.lock().unwrap());
    assert!(took < Duration::from_secs(20), "exit took {took:?}");

    // Nothing left behind.
    std::thread::sleep(Duration::from_millis(200));
    let left: Vec<u32> = children
        .iter()
        .filter(|(p, st)| still_running(*p, st))
        .map(|(p, _)| *p)
        .collect();
    assert!(left.is_empty(), "processes left behind: {left:?}");
    let left = runtime_cgroups(pid);
    assert!(left.is_empty(), "cgroups left behind: {left:?}");
    assert!(
        mounts_under(&data_dir).is_empty(),
        "{:?}",
        mounts_under(&data_dir)
    );
    let temp_left: Vec<_> = std::fs::read_dir(data_dir.join("tmp"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(temp_left.is_empty(), "temp dirs left behind: {temp_left:?}");
    assert!(server
        .logs
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("sandbox_stopped")));
}

#[tokio::test(flavor = "multi_thread")]
async fn executions_past_the_grace_are_stopped_with_e5002_and_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let mut server = Server::start_in(&data_dir, &[("MAGIC_SHUTDOWN_GRACE", "1s")]);
    let pid = server.child.id();
    deploy_sleeper(&server, &tmp.path().join("c"), 60.0);
    let in_flight = start_request(&server.url, "drain-too-slow");
    wait_in_flight(&server);
    let children = descendants(pid);

    let signalled = Instant::now();
    sigterm(&server);
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(body["error"]["code"], "E5002", "{status} {body}");
    assert_eq!(body["request_id"], "drain-too-slow");
    let (code, _) = wait_exit(&mut server, Duration::from_secs(15));
    assert_eq!(code, Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(15),
        "stopped long after the grace"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(children.iter().all(|(p, st)| !still_running(*p, st)));
    assert!(runtime_cgroups(pid).is_empty());

    // The stopped execution is in the audit chain, which still verifies.
    let server = Server::start_in(&data_dir, &[]);
    let out = server.cli(&["audit", "verify"]);
    assert!(out.status.success(), "{out:?}");
    let out = server.cli(&["audit", "tail", "--last", "20"]);
    let tail = String::from_utf8_lossy(&out.stdout).into_owned();
    let stopped = tail
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| r["request_id"] == "drain-too-slow" && r["event"] == "execution_error")
        .unwrap_or_else(|| panic!("no execution_error record: {tail}"));
    assert_eq!(stopped["outcome"], "E5002", "{stopped}");
    server.stop();
}
