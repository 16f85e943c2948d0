//! A real zygote on this host: start, fork, run one execution by hand, limits.
//! Needs root (namespaces, cgroups); skipped with a message otherwise.

use std::path::PathBuf;

use magic_sandbox::{Limits, Sandbox, SandboxConfig, Zygote, ZygoteSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> PathBuf {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn sandbox(work: &std::path::Path) -> Option<std::sync::Arc<Sandbox>> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return None;
    }
    Some(
        Sandbox::new(SandboxConfig {
            python: python(),
            sdk_dir: repo().join("sdk/python"),
            work_dir: work.to_path_buf(),
            allow_without_cgroups: false,
            id_base: None,
        })
        .expect("sandbox"),
    )
}

fn package(dir: &std::path::Path, body: &str) -> PathBuf {
    let pkg = dir.join("pkg");
    std::fs::create_dir_all(&pkg).expect("mkdir");
    std::fs::write(
        pkg.join("controller.py"),
        format!(
            "from magic import Controller\nclass C(Controller):\n    async def execute(self, input):\n{}\n",
            body.lines().map(|l| format!("        {l}\n")).collect::<String>()
        ),
    )
    .expect("write");
    pkg
}

async fn run(child: &mut magic_sandbox::Child, input: serde_json::Value) -> serde_json::Value {
    run_with(child, input, Some("/tmp")).await
}

/// One execution; `temp_dir` as the runtime sends it (`None` without `fs:temp`).
async fn run_with(
    child: &mut magic_sandbox::Child,
    input: serde_json::Value,
    temp_dir: Option<&str>,
) -> serde_json::Value {
    let frame = serde_json::json!({"type": "execute", "request_id": "r1", "input": input, "temp_dir": temp_dir});
    let body = serde_json::to_vec(&frame).expect("json");
    child
        .stream
        .write_all(&(body.len() as u32).to_be_bytes())
        .await
        .expect("len");
    child.stream.write_all(&body).await.expect("body");
    loop {
        let mut len = [0u8; 4];
        if child.stream.read_exact(&mut len).await.is_err() {
            return serde_json::json!({"type": "eof"});
        }
        let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
        child.stream.read_exact(&mut buf).await.expect("frame");
        let v: serde_json::Value = serde_json::from_slice(&buf).expect("frame json");
        if v["type"] == "result" {
            return v;
        }
    }
}

fn spec(pkg: PathBuf, temp: Option<u64>) -> ZygoteSpec {
    ZygoteSpec {
        package_dir: pkg,
        temp_size: temp,
        limits: Limits {
            memory: 64 << 20,
            cpu: 1.0,
            pids: 32,
        },
    }
}

#[tokio::test]
async fn zygote_forks_isolated_children() {
    let dir = tempfile::tempdir().expect("tmp");
    let Some(sb) = sandbox(dir.path()) else {
        return;
    };
    let code = r#"import os
out = {"uid": os.getuid(), "pid": os.getpid(), "ls": sorted(os.listdir("/"))}
try:
    open("/etc/shadow").read(); out["shadow"] = "read"
except OSError as e:
    out["shadow"] = e.errno
import socket
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM); out["inet"] = "created"
except OSError as e:
    out["inet"] = e.errno
open("/tmp/x", "w").write("hi")
import threading
out["threads"] = threading.active_count()
out["fds"] = []
for fd in range(256):
    try:
        os.fstat(fd); out["fds"].append(fd)
    except OSError:
        pass
return out"#;
    let pkg = package(dir.path(), code);
    let z = Zygote::start(&sb, spec(pkg, Some(1 << 20)))
        .await
        .expect("zygote");
    eprintln!("zygote ready in {:?}", z.ready_in);
    let mut child = z.fork_child(&sb).await.expect("child");
    // Host view: the zygote is not host root, the child is an unprivileged host uid.
    let uid = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .expect("status")
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
            .expect("Uid line")
    };
    assert_eq!(uid(z.pid()), "100000");
    assert_eq!(uid(child.confined.pid), "165534");
    let caps =
        std::fs::read_to_string(format!("/proc/{}/status", child.confined.pid)).expect("status");
    for field in ["CapEff:", "CapPrm:", "CapAmb:"] {
        let line = caps
            .lines()
            .find(|l| l.starts_with(field))
            .expect("cap line");
        assert!(line.ends_with("0000000000000000"), "{line}");
    }
    assert!(caps.lines().any(|l| l == "NoNewPrivs:\t1"), "{caps}");
    assert!(caps.lines().any(|l| l.starts_with("Seccomp:\t2")), "{caps}");
    let result = run(&mut child, serde_json::json!({})).await;
    eprintln!("{result}");
    assert_eq!(result["ok"], true, "{result}");
    let out = &result["output"];
    assert_eq!(out["uid"], 65534);
    assert_eq!(out["shadow"], 2, "no /etc at all");
    assert_eq!(out["inet"], 1, "EPERM from seccomp");
    // Controller code holds stdio and its one socket: no cgroup `tasks` descriptor (used by
    // the child to move itself into its slot), no control socket, no runtime descriptor.
    let fds = out["fds"].as_array().expect("fds");
    assert_eq!(fds.len(), 4, "{out}");
    assert_eq!(&fds[..3], &[0, 1, 2], "{out}");
    // No watchdog thread in a zygote's child (the zygote's end kills it with the runtime).
    assert_eq!(out["threads"], 1, "{out}");
    sb.release(child.confined);
    assert!(z.is_alive());
}

#[tokio::test]
#[ignore = "timing probe: cargo test -p magic-sandbox --test zygote timing -- --ignored --nocapture"]
async fn timing() {
    let dir = tempfile::tempdir().expect("tmp");
    let Some(sb) = sandbox(dir.path()) else {
        return;
    };
    let pkg = package(dir.path(), "return {}");
    let z = Zygote::start(&sb, spec(pkg, None)).await.expect("zygote");
    eprintln!("zygote ready in {:?}", z.ready_in);
    // Children forked one at a time, 30 ms apart (as spares are refilled at a low request
    // rate): fork → hello → in its cgroup → go; execute frame → result; release.
    let (mut forks, mut runs, mut releases) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..40 {
        let t = std::time::Instant::now();
        let mut child = z.fork_child(&sb).await.expect("child");
        forks.push(t.elapsed());
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        let t2 = std::time::Instant::now();
        let r = run_with(&mut child, serde_json::json!({}), None).await;
        runs.push(t2.elapsed());
        assert_eq!(r["ok"], true, "{r}");
        let t3 = std::time::Instant::now();
        sb.release(child.confined);
        releases.push(t3.elapsed());
    }
    for (name, v) in [
        ("fork+hello+cgroup", &mut forks),
        ("execute frame → result", &mut runs),
        ("release (kill, slot empty)", &mut releases),
    ] {
        v.sort();
        eprintln!(
            "{name}: p50 {:?}  p90 {:?}  max {:?}",
            v[v.len() / 2],
            v[v.len() * 9 / 10],
            v[v.len() - 1]
        );
    }
}
