//! Sandbox benchmark: a no-op Python controller over HTTP, a fresh sandboxed process per
//! request, beside baselines measured in the same run. Bounded in count and time.
//!
//! Run with `bench/sandbox.sh` (release build). Prints a Markdown table for docs/BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "harness.rs"]
mod harness;
use harness::{hello_world, load, row, stats, Conn, Stats};

const KEY: &str = "bench-admin-key-0123456789abcdef";

/// `total` requests on one connection, one every `gap` (open loop: spares have time to be
/// forked between requests, as under moderate load).
async fn paced(addr: &str, req: &[u8], total: usize, gap: Duration) -> Stats {
    let started = Instant::now();
    let mut c = Conn::new(addr).await;
    let mut lat = Vec::with_capacity(total);
    for _ in 0..total {
        let t = Instant::now();
        let (status, body) = c.request(req).await;
        lat.push(t.elapsed());
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        tokio::time::sleep(gap).await;
    }
    stats(lat, started.elapsed())
}

fn spawn_stats(argv: &[&str], runs: usize) -> Option<Stats> {
    let mut lat = Vec::new();
    let started = Instant::now();
    for _ in 0..runs {
        let t = Instant::now();
        let st = Command::new(argv[0])
            .args(&argv[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        if !st.success() {
            return None;
        }
        lat.push(t.elapsed());
    }
    Some(stats(lat, started.elapsed()))
}

fn write_noop(dir: &Path, name: &str, version: &str, body: &str) {
    // `import asyncio` only where the body needs it: a controller that never imports it runs
    // without an event loop.
    let import = if body.contains("asyncio") {
        "import asyncio\n"
    } else if body.contains("time.") {
        "import time\n"
    } else {
        ""
    };
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("contract.yaml"),
        format!("name: {name}\nversion: {version}\ninput: {{ type: object }}\noutput: {{ type: object }}\ncapabilities: []\nresources: {{ timeout: 10s }}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("controller.py"),
        format!("{import}from magic import Controller, contract\n\n\n@contract(\"./contract.yaml\")\nclass {name}(Controller):\n    async def execute(self, input):\n        {body}\n        return {{}}\n"),
    )
    .unwrap();
}

fn private_dirty_kib(pid: i32) -> Option<u64> {
    let t = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    t.lines()
        .find_map(|l| l.strip_prefix("Private_Dirty:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let magic = PathBuf::from(args.get(1).expect("usage: sandbox_bench MAGIC_BINARY"));
    let total: usize = std::env::var("BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let limit = Duration::from_secs(20);
    let python = String::from_utf8(
        Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();

    println!("| scenario | p50 µs | p99 µs | req/s | n |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    if let Some(s) = spawn_stats(&[&python, "-I", "-S", "-c", "pass"], 100) {
        row("baseline: `python3 -I -S -c pass` (spawn + wait)", &s);
    }
    match spawn_stats(
        &[
            "bwrap",
            "--unshare-all",
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            &python,
            "-I",
            "-S",
            "-c",
            "pass",
        ],
        100,
    ) {
        Some(s) => row("baseline: `bwrap --unshare-all python3 -I -S -c pass`", &s),
        None => println!("| baseline: bwrap (not installed) | – | – | – | 0 |"),
    }
    let hello = hello_world().await;
    let req = format!("GET / HTTP/1.1\r\nHost: {hello}\r\n\r\n").into_bytes();
    load(&hello, req.clone(), 1, 500, limit).await;
    row(
        "baseline: axum hello world, 1 connection",
        &load(&hello, req.clone(), 1, total, limit).await,
    );
    row(
        "baseline: axum hello world, 4 connections",
        &load(&hello, req, 4, total, limit).await,
    );

    // The runtime, process mode (the default), embedded SQLite.
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Command::new(&magic)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("data"))
        .env("MAGIC_ADMIN_API_KEY", KEY)
        .env("RUST_LOG", "info")
        .env("CONTROLLER_MAX_CONCURRENT", "64")
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("magic serve");
    let logs = Arc::new(Mutex::new(Vec::<String>::new()));
    let out = server.stdout.take().unwrap();
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let wait_log = |needles: &[&str]| -> Option<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(l) = logs
                .lock()
                .unwrap()
                .iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return serde_json::from_str(l).ok();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    };
    let listening = wait_log(&["listening"]).expect("server listening");
    let addr = listening.to_string();
    let addr = addr
        .split(|c: char| c == '"' || c.is_whitespace())
        .find(|t| t.starts_with("127.0.0.1:") || t.starts_with("http://127.0.0.1:"))
        .expect("address in the listening line")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let deploy = |dir: &Path| {
        let st = Command::new(&magic)
            .arg("deploy")
            .arg(dir)
            .env("MAGIC_URL", format!("http://{addr}"))
            .env("MAGIC_API_KEY", KEY)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
    };

    // Zygote ready time and deploy → first served request, over several versions.
    let mut ready = Vec::new();
    let mut first = Vec::new();
    for minor in 0..5 {
        let dir = tmp.path().join(format!("noop{minor}"));
        let version = format!("1.0.{minor}");
        write_noop(&dir, "Noop", &version, "pass");
        let t = Instant::now();
        deploy(&dir);
        let mut c = Conn::new(&addr).await;
        let req = format!("POST /api/execute/Noop HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}");
        let (status, _) = c.request(req.as_bytes()).await;
        assert_eq!(status, 200);
        first.push(t.elapsed());
        let line = wait_log(&["zygote_ready", &format!("\"version\":\"{version}\"")])
            .expect("zygote_ready");
        ready.push(line["ready_ms"].as_f64().unwrap_or(f64::NAN));
    }
    let req = format!("POST /api/execute/Noop HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}").into_bytes();
    load(&addr, req.clone(), 1, 300, limit).await;
    row(
        "**Python no-op controller, fresh sandboxed process per request, 1 connection**",
        &load(&addr, req.clone(), 1, total, limit).await,
    );
    let p = paced(&addr, &req, 300, Duration::from_millis(20)).await;
    println!(
        "| **same, paced: 1 request every 20 ms (spares ready)** | {:.0} | {:.0} | (paced) | {} |",
        p.p50, p.p99, p.n
    );
    row(
        "**same, 2 connections**",
        &load(&addr, req.clone(), 2, total, limit).await,
    );
    row(
        "**same, 4 connections**",
        &load(&addr, req.clone(), 4, total, limit).await,
    );
    // The same no-op, but its module imports asyncio: it runs in an event loop.
    let dir = tmp.path().join("noop_asyncio");
    write_noop(&dir, "NoopAsyncio", "1.0.0", "await asyncio.sleep(0)");
    deploy(&dir);
    let areq = format!("POST /api/execute/NoopAsyncio HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}").into_bytes();
    load(&addr, areq.clone(), 1, 300, limit).await;
    row(
        "same, but the controller imports asyncio (event loop), 1 connection",
        &load(&addr, areq.clone(), 1, total, limit).await,
    );
    row(
        "same, asyncio, 4 connections",
        &load(&addr, areq, 4, total, limit).await,
    );

    // Private memory per concurrent execution: 8 executions sleeping at once, without and
    // with asyncio.
    let mut mem = Vec::new();
    for (name, body) in [
        ("Sleeper", "time.sleep(1.5)"),
        ("SleeperAsyncio", "await asyncio.sleep(1.5)"),
    ] {
        let dir = tmp.path().join(name);
        write_noop(&dir, name, "1.0.0", body);
        deploy(&dir);
        let zpid = wait_log(&["zygote_ready", name]).unwrap()["pid"]
            .as_i64()
            .unwrap() as i32;
        let sreq = format!("POST /api/execute/{name} HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}").into_bytes();
        let mut running = Vec::new();
        for _ in 0..8 {
            let (a, r) = (addr.clone(), sreq.clone());
            running.push(tokio::spawn(async move {
                Conn::new(&a).await.request(&r).await.0
            }));
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
        let kids = children(zpid);
        let dirty: Vec<u64> = kids.iter().filter_map(|p| private_dirty_kib(*p)).collect();
        let zygote_dirty = private_dirty_kib(zpid).unwrap_or(0);
        for r in running {
            assert_eq!(r.await.unwrap(), 200);
        }
        mem.push((name, dirty, zygote_dirty));
    }
    let _ = server.kill();
    let _ = server.wait();

    let mut first_ms: Vec<f64> = first.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    first_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    ready.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!();
    println!("| measure | value |");
    println!("| --- | ---: |");
    println!(
        "| zygote ready (new version), median of {} | {:.1} ms |",
        ready.len(),
        ready[ready.len() / 2]
    );
    println!(
        "| deploy (CLI) → first served request, median | {:.1} ms |",
        first_ms[first_ms.len() / 2]
    );
    for (name, dirty, zygote_dirty) in mem {
        if !dirty.is_empty() {
            let avg = dirty.iter().sum::<u64>() as f64 / dirty.len() as f64;
            println!(
                "| {name}: private dirty memory per concurrent execution ({} children of the first zygote, incl. spares) | {:.2} MiB (min {:.2}, max {:.2}) |",
                dirty.len(),
                avg / 1024.0,
                *dirty.iter().min().unwrap() as f64 / 1024.0,
                *dirty.iter().max().unwrap() as f64 / 1024.0
            );
        }
        println!(
            "| {name}: zygote private dirty memory | {:.2} MiB |",
            zygote_dirty as f64 / 1024.0
        );
    }
}
