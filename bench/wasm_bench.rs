//! WASM controller benchmark: a no-op WASM controller over HTTP (fresh instance per request),
//! instantiate + call + drop alone, and in the same run an axum hello world and the same no-op
//! as a Python controller (process mode). Bounded in count and time.
//!
//! Run with `bench/wasm.sh` (release build). Prints a Markdown table for docs/BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

#[path = "harness.rs"]
mod harness;
use harness::{hello_world, load, row, stats, Stats};

const KEY: &str = "bench-admin-key-0123456789abcdef";

/// `execute` returns `{}` without touching the host.
const NOOP_WAT: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 4096))
  (data (i32.const 16) "{}")
  (func (export "execute") (param i32 i32) (result i32)
    (i32.store8 (i32.const 32) (i32.const 0))
    (i32.store (i32.const 36) (i32.const 16))
    (i32.store (i32.const 40) (i32.const 2))
    (i32.const 32)))"#;

struct NoHost;

impl magic_wasm::Host for NoHost {
    fn call(
        &self,
        _capability: &'static str,
        _op: String,
        _args: String,
    ) -> BoxFuture<'static, Result<String, magic_wasm::Failure>> {
        Box::pin(async { Ok("null".to_string()) })
    }
    fn log(&self, _level: &str, _message: &str, _fields: &str) {}
    fn metric(&self, _kind: &str, _name: &str, _value: f64, _labels: &str) {}
}

/// Instantiate + call + drop of the no-op, in process, `n` times (after a warm-up).
async fn instantiate_call_drop(n: usize) -> (Stats, bool) {
    let tmp = tempfile::tempdir().unwrap();
    let engine = magic_wasm::Engine::new(magic_wasm::EngineConfig {
        cache_dir: tmp.path().to_path_buf(),
        max_instances: 128,
        fuel: None,
    })
    .unwrap();
    let c = engine.prepare(&wat::parse_str(NOOP_WAT).unwrap()).unwrap();
    let host: Arc<dyn magic_wasm::Host> = Arc::new(NoHost);
    let limits = || magic_wasm::Limits {
        memory: 64 << 20,
        deadline: Instant::now() + Duration::from_secs(10),
    };
    for _ in 0..1000 {
        c.run(host.clone(), "{}", limits()).await.unwrap().unwrap();
    }
    let mut lat = Vec::with_capacity(n);
    let started = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let out = c.run(host.clone(), "{}", limits()).await.unwrap().unwrap();
        lat.push(t.elapsed());
        assert_eq!(out, "{}");
    }
    (stats(lat, started.elapsed()), engine.pooling())
}

fn contract(dir: &Path, name: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("contract.yaml"),
        format!("name: {name}\nversion: 1.0.0\ninput: {{ type: object }}\noutput: {{ type: object }}\ncapabilities: []\nresources: {{ timeout: 10s }}\n"),
    )
    .unwrap();
}

fn execute_request(name: &str) -> Vec<u8> {
    format!("POST /api/execute/{name} HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}").into_bytes()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let magic = PathBuf::from(args.get(1).expect("usage: wasm_bench MAGIC_BINARY"));
    let total: usize = std::env::var("BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20000);
    let limit = Duration::from_secs(20);

    println!("| scenario | p50 µs | p99 µs | req/s | n |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let (icd, pooling) = instantiate_call_drop(20000).await;
    row(
        &format!("**WASM instantiate + call + drop, in process** (pooling: {pooling})"),
        &icd,
    );
    let hello = hello_world().await;
    let req = format!("GET / HTTP/1.1\r\nHost: {hello}\r\n\r\n").into_bytes();
    load(&hello, req.clone(), 1, 2000, limit).await;
    row(
        "baseline: axum hello world, 1 connection",
        &load(&hello, req.clone(), 1, total, limit).await,
    );
    row(
        "baseline: axum hello world, 4 connections",
        &load(&hello, req, 4, total, limit).await,
    );

    let tmp = tempfile::tempdir().unwrap();
    let mut server = Command::new(&magic)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("data"))
        .env("MAGIC_ADMIN_API_KEY", KEY)
        .env(
            "RUST_LOG",
            std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
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
            let mut l = sink.lock().unwrap();
            if l.len() < 100 {
                l.push(line);
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        let found = logs
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("listening"))
            .cloned();
        if let Some(line) = found {
            break line
                .split(|c: char| c == '"' || c.is_whitespace())
                .find(|t| t.starts_with("127.0.0.1:") || t.starts_with("http://127.0.0.1:"))
                .expect("address in the listening line")
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string();
        }
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(10));
    };
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
    let wasm_dir = tmp.path().join("wasm_noop");
    contract(&wasm_dir, "WasmNoop");
    std::fs::write(
        wasm_dir.join("controller.wasm"),
        wat::parse_str(NOOP_WAT).unwrap(),
    )
    .unwrap();
    deploy(&wasm_dir);
    let py_dir = tmp.path().join("py_noop");
    contract(&py_dir, "PyNoop");
    std::fs::write(
        py_dir.join("controller.py"),
        "from magic import Controller, contract\n\n\n@contract(\"./contract.yaml\")\nclass PyNoop(Controller):\n    async def execute(self, input):\n        return {}\n",
    )
    .unwrap();
    deploy(&py_dir);

    let wreq = execute_request("WasmNoop");
    load(&addr, wreq.clone(), 1, 2000, limit).await;
    row(
        "**WASM no-op controller over HTTP, fresh instance per request, 1 connection**",
        &load(&addr, wreq.clone(), 1, total, limit).await,
    );
    row(
        "**same, 4 connections**",
        &load(&addr, wreq.clone(), 4, total, limit).await,
    );
    row(
        "**same, 8 connections**",
        &load(&addr, wreq, 8, total, limit).await,
    );
    let preq = execute_request("PyNoop");
    load(&addr, preq.clone(), 1, 200, limit).await;
    row(
        "Python no-op controller (process mode), 1 connection",
        &load(&addr, preq.clone(), 1, total.min(4000), limit).await,
    );
    row(
        "Python no-op controller (process mode), 4 connections",
        &load(&addr, preq, 4, total.min(4000), limit).await,
    );
    let _ = server.kill();
    let _ = server.wait();
}
