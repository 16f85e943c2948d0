//! WASM controllers end to end with the real `magic` binary: the WAT and C examples are built
//! (the C one by its build.sh with clang's wasm32 target), deployed, executed and audited;
//! hostile modules get their codes while the runtime keeps serving; compiled code survives a
//! restart in the disk cache.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{repo_root, Server};
use serde_json::{json, Value};

fn cli_ok(server: &Server, args: &[&str]) -> String {
    let out = server.cli(args);
    assert!(
        out.status.success(),
        "magic {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `examples/controllers/wasm_hello` with its WAT compiled to `controller.wasm`.
fn hello_package(tmp: &Path) -> PathBuf {
    let src = repo_root().join("examples/controllers/wasm_hello");
    let dir = tmp.join("wasm_hello");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("contract.yaml"), dir.join("contract.yaml")).unwrap();
    let wasm = wat::parse_file(src.join("controller.wat")).unwrap();
    std::fs::write(dir.join("controller.wasm"), wasm).unwrap();
    dir
}

/// `examples/controllers/wasm_c` built by its build.sh; `None` (skipped loudly) without clang.
fn c_package(tmp: &Path) -> Option<PathBuf> {
    let src = repo_root().join("examples/controllers/wasm_c");
    let dir = tmp.join("wasm_c");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("contract.yaml"), dir.join("contract.yaml")).unwrap();
    let out = std::process::Command::new("sh")
        .arg(src.join("build.sh"))
        .env("OUT", dir.join("controller.wasm"))
        .output()
        .unwrap();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("not found") {
            eprintln!("skipped: clang is not installed (.ci/run installs clang and lld)");
            return None;
        }
        panic!("build.sh failed: {stderr}");
    }
    Some(dir)
}

/// A WAT core module controller `name` with `contract_tail` (capabilities/resources) and the
/// canonical-ABI prelude around `imports` and `body`.
fn wat_package(tmp: &Path, name: &str, contract_tail: &str, imports: &str, body: &str) -> PathBuf {
    let dir = tmp.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("contract.yaml"),
        format!(
            "name: {name}\nversion: 1.0.0\ninput:\n  type: object\noutput:\n  type: object\n{contract_tail}"
        ),
    )
    .unwrap();
    let wat = format!(
        r#"(module
  {imports}
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (func $alloc (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (global.get $heap) (local.get 3)) (i32.const 7)) (i32.const -8)))
    (local.get $p))
  {body})"#
    );
    std::fs::write(dir.join("controller.wasm"), wat::parse_str(wat).unwrap()).unwrap();
    dir
}

/// Calls `capability`.`op` with `args` and returns the call's failure (or its value).
fn caller(
    tmp: &Path,
    name: &str,
    contract_tail: &str,
    capability: &str,
    op: &str,
    args: &str,
) -> PathBuf {
    let imports = format!(
        r#"(import "magic:controller/{capability}" "call" (func $call (param i32 i32 i32 i32 i32)))"#
    );
    let data = format!("{op}{args}")
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    let body = format!(
        r#"(data (i32.const 100) "{data}")
           (func (export "execute") (param i32 i32) (result i32)
             (call $call (i32.const 100) (i32.const {op_len}) (i32.const {args_at}) (i32.const {args_len}) (i32.const 1000))
             (i32.const 1000))"#,
        op_len = op.len(),
        args_at = 100 + op.len(),
        args_len = args.len()
    );
    wat_package(tmp, name, contract_tail, &imports, &body)
}

fn deploy(server: &Server, dir: &Path) {
    cli_ok(server, &["deploy", dir.to_str().unwrap()]);
}

fn used(body: &Value) -> Vec<String> {
    body["metrics"]["capabilities_used"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn wasm_examples_deploy_execute_and_are_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&[]);
    deploy(&server, &hello_package(tmp.path()));
    let (status, _, body) = server
        .post("/api/execute/WasmHello", r#"{"name":"Ada"}"#)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"], json!({"echo": {"name": "Ada"}}));
    assert!(server
        .wait_log(&["controller_log", "hello from wasm", "WasmHello"])
        .is_some());

    let Some(c) = c_package(tmp.path()) else {
        return;
    };
    deploy(&server, &c);
    for want in [1, 2] {
        let (status, _, body) = server
            .post("/api/execute/WasmCounter", r#"{"visitor":"Ada"}"#)
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["output"], json!({"hits": want, "input_bytes": 17}));
        let used = used(&body);
        assert!(used.contains(&"cache:read".to_string()), "{used:?}");
        assert!(used.contains(&"cache:write".to_string()), "{used:?}");
    }
    assert!(server
        .wait_log(&["controller_log", "counted a visit", "WasmCounter"])
        .is_some());
    let (_, metrics) = server.get("/metrics", Some(common::ADMIN_KEY)).await;
    assert!(
        metrics.contains("wasm_c_hits"),
        "custom metric missing from /metrics"
    );
    assert!(metrics.contains("controller=\"WasmCounter\""), "{metrics}");
    let tail = cli_ok(&server, &["audit", "tail", "--last", "200"]);
    assert!(tail.contains("\"controller\":\"WasmCounter\""), "{tail}");
    assert!(tail.contains("cache"), "{tail}");
    assert!(cli_ok(&server, &["audit", "verify"]).contains("intact"));
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_wasm_gets_its_codes_and_the_runtime_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let server = Server::start(&[]);
    deploy(&server, &hello_package(t));
    let fast = "capabilities: []\nresources:\n  timeout: 1s\n  memory: 16Mi\n";
    let packages = [
        wat_package(
            t,
            "WasmSpin",
            fast,
            "",
            r#"(func (export "execute") (param i32 i32) (result i32) (loop $l (br $l)) unreachable)"#,
        ),
        wat_package(
            t,
            "WasmHog",
            fast,
            "",
            r#"(func (export "execute") (param i32 i32) (result i32)
                 (loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
                 unreachable)"#,
        ),
        wat_package(
            t,
            "WasmDeep",
            fast,
            "",
            r#"(func $r (param i32) (result i32) (call $r (i32.add (local.get 0) (i32.const 1))))
               (func (export "execute") (param i32 i32) (result i32) (call $r (i32.const 0)))"#,
        ),
        wat_package(
            t,
            "WasmHuge",
            fast,
            "",
            r#"(func (export "execute") (param i32 i32) (result i32)
                 (drop (memory.grow (i32.const 40)))
                 (i32.store8 (i32.const 0) (i32.const 0))
                 (i32.store (i32.const 4) (i32.const 65536))
                 (i32.store (i32.const 8) (i32.const 2097152))
                 (i32.const 0))"#,
        ),
        caller(t, "WasmUndeclared", fast, "cache", "get", r#"{"key":"x"}"#),
        caller(
            t,
            "WasmWrongTable",
            "capabilities:\n  - db:read: { tables: [example_items] }\nresources:\n  timeout: 1s\n",
            "db",
            "query",
            r#"{"table":"orders"}"#,
        ),
    ];
    for p in &packages {
        deploy(&server, p);
    }
    let cases = [
        ("WasmSpin", "E3001", "timeout"),
        ("WasmHog", "E3002", "memory"),
        ("WasmDeep", "E5001", "call stack exhausted"),
        ("WasmHuge", "E5001", "exceeds the 1048576-byte limit"),
        ("WasmUndeclared", "E2001", ""),
        ("WasmWrongTable", "E2004", ""),
    ];
    for (name, code, text) in cases {
        let (_, _, body) = server.post(&format!("/api/execute/{name}"), "{}").await;
        assert_eq!(body["error"]["code"], code, "{name}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains(text),
            "{name}: {body}"
        );
        // Still serving, with a fresh instance.
        let (status, _, body) = server.post("/api/execute/WasmHello", r#"{"n":1}"#).await;
        assert_eq!(status, 200, "after {name}: {body}");
    }
    // Several spinning executions at once do not stop the runtime from answering.
    let spins: Vec<_> = (0..4)
        .map(|_| {
            let client = server.client();
            let url = format!("{}/api/execute/WasmSpin", server.url);
            tokio::spawn(async move {
                client
                    .post(url)
                    .header("x-api-key", common::ADMIN_KEY)
                    .header("content-type", "application/json")
                    .body("{}")
                    .send()
                    .await
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let (status, _, _) = server.post("/api/execute/WasmHello", "{}").await;
    assert_eq!(status, 200);
    assert!(started.elapsed() < std::time::Duration::from_millis(900));
    for s in spins {
        s.await.unwrap().unwrap();
    }
    let (_, metrics) = server.get("/metrics", Some(common::ADMIN_KEY)).await;
    for (name, resource) in [("WasmSpin", "timeout"), ("WasmHog", "memory")] {
        let line = format!("controller=\"{name}\",resource=\"{resource}\"");
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("magic_resource_limit_exceeded_total") && l.contains(&line)),
            "no limit metric for {name}"
        );
    }
    let tail = cli_ok(&server, &["audit", "tail", "--last", "300"]);
    assert!(tail.contains("\"controller\":\"WasmWrongTable\""), "{tail}");

    // A module outside the world is refused at deploy, with the reason.
    let bad = wat_package(
        t,
        "WasmWasi",
        fast,
        r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#,
        r#"(func (export "execute") (param i32 i32) (result i32) (i32.const 0))"#,
    );
    let out = server.cli(&["deploy", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("E1004") && text.contains("wasi_snapshot_preview1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn compiled_code_is_loaded_from_the_cache_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start_in(&data, &[]);
    deploy(&server, &hello_package(tmp.path()));
    assert!(server.wait_log(&["wasm_compiled"]).is_some());
    let cache = data.join("runtime/wasm-cache");
    let artifacts: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    let mtime = std::fs::metadata(&artifacts[0])
        .unwrap()
        .modified()
        .unwrap();
    server.stop();

    // Active versions are prepared at start, before any request: from the cache.
    let server = Server::start_in(&data, &[]);
    assert!(server.wait_log(&["wasm_cache_hit"]).is_some());
    assert!(server.wait_log(&["versions_warmed"]).is_some());
    for _ in 0..3 {
        let (status, _, body) = server.post("/api/execute/WasmHello", "{}").await;
        assert_eq!(status, 200, "{body}");
    }
    // Prepared once per version, not per execution.
    let hits = server
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("wasm_cache_hit"))
        .count();
    assert_eq!(hits, 1, "the version is prepared once");
    assert!(!server
        .logs
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("wasm_compiled")));
    assert_eq!(
        std::fs::metadata(&artifacts[0])
            .unwrap()
            .modified()
            .unwrap(),
        mtime
    );
}

/// `MAGIC_WASM_MAX_INSTANCES` bounds the instances alive at once: with one slot taken by a
/// spinning controller another execution gets 429 E3004, and once the slot is free it runs.
#[tokio::test(flavor = "multi_thread")]
async fn the_instance_pool_size_is_a_setting_and_a_full_pool_answers_e3004() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let server = Server::start(&[("MAGIC_WASM_MAX_INSTANCES", "1")]);
    deploy(&server, &hello_package(t));
    let spin = wat_package(
        t,
        "WasmSpin",
        "capabilities: []\nresources:\n  timeout: 2s\n  memory: 16Mi\n",
        "",
        r#"(func (export "execute") (param i32 i32) (result i32) (loop $l (br $l)) unreachable)"#,
    );
    deploy(&server, &spin);
    let (status, _, body) = server.post("/api/execute/WasmHello", r#"{"n":1}"#).await;
    assert_eq!(status, 200, "{body}");
    let client = server.client();
    let url = format!("{}/api/execute/WasmSpin", server.url);
    let spinning = tokio::spawn(async move {
        client
            .post(url)
            .header("x-api-key", common::ADMIN_KEY)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (status, _, body) = server.post("/api/execute/WasmHello", r#"{"n":2}"#).await;
    assert_eq!(status, 429, "the one slot is taken: {body}");
    assert_eq!(body["error"]["code"], "E3004", "{body}");
    let spun = spinning.await.unwrap();
    assert_eq!(spun["error"]["code"], "E3001", "{spun}");
    let (status, _, body) = server.post("/api/execute/WasmHello", r#"{"n":3}"#).await;
    assert_eq!(status, 200, "the slot is free again: {body}");

    // Outside 1..=4096 the server refuses to start and names the setting.
    let out = std::process::Command::new(common::magic_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(t.join("refused"))
        .env("MAGIC_WASM_MAX_INSTANCES", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("MAGIC_WASM_MAX_INSTANCES"), "{text}");
}
