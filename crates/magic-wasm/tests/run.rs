//! Controllers run on the real engine with a recording host: the example, hostile modules
//! (infinite loop, memory growth, deep recursion, huge output), capability calls and the cache.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use magic_contract::ErrorCode;
use magic_wasm::{Engine, EngineConfig, Failure, Host, Limits, WasmError};

#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<(String, String, String)>>,
    logs: Mutex<Vec<String>>,
    metrics: Mutex<Vec<(String, f64)>>,
}

impl Host for Recorder {
    fn call(
        &self,
        capability: &'static str,
        op: String,
        args: String,
    ) -> BoxFuture<'static, Result<String, Failure>> {
        self.calls
            .lock()
            .unwrap()
            .push((capability.into(), op.clone(), args));
        Box::pin(async move {
            if capability == "db" {
                return Err(Failure {
                    code: "E2001".into(),
                    message: "db is not declared".into(),
                });
            }
            Ok(format!("{{\"op\":\"{op}\"}}"))
        })
    }
    fn log(&self, level: &str, message: &str, _fields: &str) {
        self.logs.lock().unwrap().push(format!("{level}:{message}"));
    }
    fn metric(&self, _kind: &str, name: &str, value: f64, _labels: &str) {
        self.metrics.lock().unwrap().push((name.into(), value));
    }
}

fn engine(dir: &std::path::Path) -> Arc<Engine> {
    Engine::new(EngineConfig {
        cache_dir: dir.to_path_buf(),
        max_instances: 16,
        fuel: None,
    })
    .unwrap()
}

fn limits(ms: u64) -> Limits {
    Limits {
        memory: 16 * 1024 * 1024,
        deadline: Instant::now() + Duration::from_millis(ms),
    }
}

/// A core module with the canonical-ABI prelude (memory, bump `cabi_realloc`) and `body`.
fn module(imports: &str, body: &str) -> Vec<u8> {
    wat::parse_str(format!(
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
    ))
    .unwrap()
}

fn example() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/controllers/wasm_hello/controller.wat"
    );
    wat::parse_file(path).unwrap()
}

#[tokio::test]
async fn the_example_echoes_and_logs_in_a_fresh_instance_each_time() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    assert!(engine.pooling());
    let controller = engine.prepare(&example()).unwrap();
    for i in 0..3 {
        let host = Arc::new(Recorder::default());
        let out = controller
            .run(host.clone(), &format!("{{\"n\":{i}}}"), limits(1000))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out, format!("{{\"echo\":{{\"n\":{i}}}}}"));
        assert_eq!(*host.logs.lock().unwrap(), vec!["info:hello from wasm"]);
    }
}

#[tokio::test]
async fn compiled_code_is_cached_on_disk_and_reused_by_a_new_engine() {
    let dir = tempfile::tempdir().unwrap();
    let first = engine(dir.path());
    first.prepare(&example()).unwrap();
    assert_eq!(first.cache_stats().compiled, 1);
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(files.len(), 2, "artifact and checksum");
    drop(first);
    let second = engine(dir.path());
    second.prepare(&example()).unwrap();
    assert_eq!(second.cache_stats().compiled, 0);
    assert_eq!(second.cache_stats().loaded, 1);

    // A corrupted artifact is recompiled, never loaded.
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|e| e == "cwasm") {
            let mut bytes = std::fs::read(&p).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
            std::fs::write(&p, bytes).unwrap();
        }
    }
    let third = engine(dir.path());
    let c = third.prepare(&example()).unwrap();
    assert_eq!(third.cache_stats().compiled, 1);
    let out = c
        .run(Arc::new(Recorder::default()), "{}", limits(1000))
        .await;
    assert!(out.unwrap().is_ok());
}

#[tokio::test]
async fn an_infinite_loop_is_interrupted_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let c = engine
        .prepare(&module(
            "",
            r#"(func (export "execute") (param i32 i32) (result i32) (loop $l (br $l)) unreachable)"#,
        ))
        .unwrap();
    let started = Instant::now();
    let err = c
        .run(Arc::new(Recorder::default()), "{}", limits(200))
        .await
        .unwrap_err();
    assert!(matches!(err, WasmError::Timeout(_)), "{err}");
    assert_eq!(err.code(), ErrorCode::Timeout);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn loops_yield_so_other_executions_keep_running() {
    // One worker thread: a spinning controller must not starve a second execution.
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let spin = Arc::new(
        engine
            .prepare(&module(
                "",
                r#"(func (export "execute") (param i32 i32) (result i32) (loop $l (br $l)) unreachable)"#,
            ))
            .unwrap(),
    );
    let hello = engine.prepare(&example()).unwrap();
    let spinning = tokio::spawn({
        let spin = spin.clone();
        async move {
            spin.run(Arc::new(Recorder::default()), "{}", limits(1500))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let out = hello
        .run(Arc::new(Recorder::default()), "{}", limits(1000))
        .await
        .unwrap();
    assert!(out.is_ok());
    assert!(started.elapsed() < Duration::from_millis(1000));
    assert!(matches!(
        spinning.await.unwrap(),
        Err(WasmError::Timeout(_))
    ));
}

#[tokio::test]
async fn memory_growth_past_the_cap_is_e3002() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let c = engine
        .prepare(&module(
            "",
            r#"(func (export "execute") (param i32 i32) (result i32)
                 (loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
                 unreachable)"#,
        ))
        .unwrap();
    let err = c
        .run(Arc::new(Recorder::default()), "{}", limits(2000))
        .await
        .unwrap_err();
    assert!(
        matches!(err, WasmError::Memory { limit } if limit == 16 * 1024 * 1024),
        "{err}"
    );
    assert_eq!(err.code(), ErrorCode::MemoryExceeded);
}

#[tokio::test]
async fn deep_recursion_traps_with_the_trap_message() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let c = engine
        .prepare(&module(
            "",
            r#"(func $r (param i32) (result i32) (call $r (i32.add (local.get 0) (i32.const 1))))
               (func (export "execute") (param i32 i32) (result i32) (call $r (i32.const 0)))"#,
        ))
        .unwrap();
    let err = c
        .run(Arc::new(Recorder::default()), "{}", limits(2000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::ControllerFailed);
    assert!(err.to_string().contains("call stack exhausted"), "{err}");
}

#[tokio::test]
async fn huge_output_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let c = engine
        .prepare(&module(
            "",
            r#"(func (export "execute") (param i32 i32) (result i32)
                 (drop (memory.grow (i32.const 40)))
                 (i32.store8 (i32.const 0) (i32.const 0))
                 (i32.store (i32.const 4) (i32.const 65536))
                 (i32.store (i32.const 8) (i32.const 2097152))
                 (i32.const 0))"#,
        ))
        .unwrap();
    let err = c
        .run(Arc::new(Recorder::default()), "{}", limits(2000))
        .await
        .unwrap_err();
    assert!(
        matches!(err, WasmError::OutputTooLarge { size: 2097152 }),
        "{err}"
    );
}

#[tokio::test]
async fn capability_calls_reach_the_host_and_failures_come_back_typed() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    // Calls cache.get then db.query; returns the db failure's code as the controller's failure.
    let c = engine
        .prepare(&module(
            r#"(import "magic:controller/cache" "call" (func $cache (param i32 i32 i32 i32 i32)))
               (import "magic:controller/db" "call" (func $db (param i32 i32 i32 i32 i32)))
               (import "magic:controller/metrics" "emit" (func $emit (param i32 i32 i32 i32 f64 i32 i32)))"#,
            r#"(data (i32.const 100) "get{\"key\":\"k\"}query{}counterhits{}")
               (func (export "execute") (param i32 i32) (result i32)
                 (call $cache (i32.const 100) (i32.const 3) (i32.const 103) (i32.const 11) (i32.const 200))
                 (if (i32.ne (i32.load8_u (i32.const 200)) (i32.const 0)) (then unreachable))
                 (call $emit (i32.const 121) (i32.const 7) (i32.const 128) (i32.const 4) (f64.const 2) (i32.const 132) (i32.const 2))
                 (call $db (i32.const 114) (i32.const 5) (i32.const 119) (i32.const 2) (i32.const 300))
                 ;; the db call failed: return its failure (at 300) as ours
                 (i32.const 300))"#,
        ))
        .unwrap();
    let host = Arc::new(Recorder::default());
    let out = c.run(host.clone(), "{}", limits(2000)).await.unwrap();
    assert_eq!(
        out,
        Err(Failure {
            code: "E2001".into(),
            message: "db is not declared".into()
        })
    );
    let calls = host.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![
            ("cache".into(), "get".into(), "{\"key\":\"k\"}".into()),
            ("db".into(), "query".into(), "{}".into())
        ]
    );
    assert_eq!(
        *host.metrics.lock().unwrap(),
        vec![("hits".to_string(), 2.0)]
    );
}

#[tokio::test]
async fn calls_after_the_deadline_are_refused_without_reaching_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let c = engine
        .prepare(&module(
            r#"(import "magic:controller/cache" "call" (func $cache (param i32 i32 i32 i32 i32)))"#,
            r#"(data (i32.const 100) "get{}")
               (func (export "execute") (param i32 i32) (result i32)
                 (call $cache (i32.const 100) (i32.const 3) (i32.const 103) (i32.const 2) (i32.const 300))
                 (i32.const 300))"#,
        ))
        .unwrap();
    let host = Arc::new(Recorder::default());
    let past = Limits {
        memory: 16 * 1024 * 1024,
        deadline: Instant::now(),
    };
    // Either the epoch check or the import refuses it; the host never sees the call.
    let out = c.run(host.clone(), "{}", past).await;
    match out {
        Ok(Err(f)) => assert_eq!(f.code, "E3001"),
        Err(e) => assert_eq!(e.code(), ErrorCode::Timeout),
        Ok(Ok(o)) => panic!("unexpected output {o}"),
    }
    assert!(host.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn modules_outside_the_world_are_refused_at_prepare() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let cases = [
        module(
            r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#,
            r#"(func (export "execute") (param i32 i32) (result i32) (i32.const 0))"#,
        ),
        module(
            "",
            r#"(func (export "run") (param i32 i32) (result i32) (i32.const 0))"#,
        ),
        b"\0asm\x01\0\0\0garbage".to_vec(),
    ];
    for bytes in cases {
        let err = engine.prepare(&bytes).unwrap_err();
        assert_eq!(err.code(), ErrorCode::ContractInvalid, "{err}");
    }
}

#[tokio::test]
async fn the_c_example_builds_with_clang_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/controllers/wasm_c/build.sh"
    );
    let out_path = dir.path().join("controller.wasm");
    let built = std::process::Command::new("sh")
        .arg(script)
        .env("OUT", &out_path)
        .output();
    match built {
        Ok(o) if o.status.success() => {}
        Ok(o) if String::from_utf8_lossy(&o.stderr).contains("not found") => {
            eprintln!("skipped: clang is not installed (.ci/run installs clang and lld)");
            return;
        }
        other => panic!("build.sh failed: {other:?}"),
    }
    let engine = engine(dir.path());
    let c = engine.prepare(&std::fs::read(&out_path).unwrap()).unwrap();
    let host = Arc::new(Recorder::default());
    let out = c
        .run(host.clone(), "{\"a\":1}", limits(2000))
        .await
        .unwrap();
    assert_eq!(out, Ok("{\"hits\":1,\"input_bytes\":7}".to_string()));
    let calls = host.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].1, "get");
    assert_eq!(
        calls[1],
        (
            "cache".to_string(),
            "set".to_string(),
            "{\"key\":\"wasmc:hits\",\"ttl_s\":60,\"value\":1}".to_string()
        )
    );
    assert_eq!(*host.logs.lock().unwrap(), vec!["info:counted a visit"]);
    assert_eq!(
        *host.metrics.lock().unwrap(),
        vec![("wasm_c_hits".to_string(), 1.0)]
    );
}
