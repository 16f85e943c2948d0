//! WasmtimeRuntime: lifecycle, WASI preopens only, fuel, memory cap, output capture, kill.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::path::PathBuf;
use std::time::Duration;

use magikrun::runtimes::wasmtime::WasmtimeRuntime;
use magikrun::{Bundle, ContainerStatus, Error, OciRuntime, Preopen, Signal, WasiConfig};

const WAIT: Duration = Duration::from_secs(30);

/// Imports and helpers shared by the test modules.
const PRELUDE: &str = r#"
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; write(fd, ptr, len): iovec at 0..8, nwritten at 8
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
"#;

fn module(dir: &tempfile::TempDir, name: &str, body: &str) -> PathBuf {
    let wat = format!("(module {PRELUDE} {body})");
    let bytes = wat::parse_str(&wat).unwrap();
    let p = dir.path().join(format!("{name}.wasm"));
    std::fs::write(&p, bytes).unwrap();
    p
}

fn bundle(module: PathBuf, wasi: WasiConfig) -> Bundle {
    Bundle::Wasm { module, wasi }
}

async fn run_to_end(
    rt: &WasmtimeRuntime,
    id: &str,
    b: &Bundle,
) -> (i32, String, String, magikrun::ContainerState) {
    rt.create(id, b).await.unwrap();
    assert_eq!(rt.state(id).await.unwrap().status, ContainerStatus::Created);
    rt.start(id).await.unwrap();
    let st = rt.wait(id, WAIT).await.unwrap();
    let code: i32 = st.annotations["magikrun.exit_code"].parse().unwrap();
    let (out, err) = rt.output(id).unwrap();
    rt.delete(id).await.unwrap();
    assert!(matches!(
        rt.state(id).await,
        Err(Error::ContainerNotFound(_))
    ));
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
        st,
    )
}

#[tokio::test]
async fn hello_stdout_stderr_and_exit_codes() {
    let d = tempfile::tempdir().unwrap();
    let rt = WasmtimeRuntime::new().unwrap();
    let m = module(
        &d,
        "hello",
        r#"
      (data (i32.const 100) "hello\n")
      (data (i32.const 200) "oops\n")
      (func (export "_start")
        (call $write (i32.const 1) (i32.const 100) (i32.const 6))
        (call $write (i32.const 2) (i32.const 200) (i32.const 5)))"#,
    );
    let (code, out, err, st) = run_to_end(&rt, "hello", &bundle(m, WasiConfig::default())).await;
    assert_eq!((code, out.as_str(), err.as_str()), (0, "hello\n", "oops\n"));
    assert_eq!(st.status, ContainerStatus::Stopped);
    assert!(st.pid.is_none());
    let v: serde_json::Value = serde_json::from_str(&st.to_json().unwrap()).unwrap();
    assert_eq!(v["status"], "stopped");
    assert_eq!(v["id"], "hello");

    let m = module(
        &d,
        "exit7",
        r#"(func (export "_start") (call $proc_exit (i32.const 7)))"#,
    );
    let (code, ..) = run_to_end(&rt, "exit7", &bundle(m, WasiConfig::default())).await;
    assert_eq!(code, 7);

    let m = module(&d, "trap", r#"(func (export "_start") unreachable)"#);
    let (code, _, _, st) = run_to_end(&rt, "trap", &bundle(m, WasiConfig::default())).await;
    assert_eq!(code, 1);
    assert!(
        st.annotations["magikrun.error"].contains("unreachable"),
        "{:?}",
        st.annotations
    );
}

const SPIN: &str = r#"(func (export "_start") (loop $l (br $l)))"#;

#[tokio::test]
async fn fuel_stops_an_infinite_loop() {
    let d = tempfile::tempdir().unwrap();
    let rt = WasmtimeRuntime::new().unwrap();
    let m = module(&d, "spin", SPIN);
    let wasi = WasiConfig {
        fuel: 1_000_000,
        ..WasiConfig::default()
    };
    let (code, _, _, st) = run_to_end(&rt, "spin", &bundle(m, wasi)).await;
    assert_eq!(code, 137);
    assert_eq!(st.annotations["magikrun.error"], "fuel exhausted");
}

#[tokio::test]
async fn kill_interrupts_a_running_module() {
    let d = tempfile::tempdir().unwrap();
    let rt = WasmtimeRuntime::new().unwrap();
    let m = module(&d, "spin", SPIN);
    let wasi = WasiConfig {
        fuel: u64::MAX,
        ..WasiConfig::default()
    };
    rt.create("k", &bundle(m, wasi)).await.unwrap();
    rt.start("k").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        rt.state("k").await.unwrap().status,
        ContainerStatus::Running
    );
    // Running containers cannot be deleted or started again.
    assert!(matches!(
        rt.delete("k").await,
        Err(Error::InvalidTransition { .. })
    ));
    assert!(matches!(
        rt.start("k").await,
        Err(Error::InvalidTransition { .. })
    ));
    rt.kill("k", Signal::Term).await.unwrap();
    let st = rt.wait("k", WAIT).await.unwrap();
    assert_eq!(st.annotations["magikrun.exit_code"], "143");
    // A stopped container cannot be killed; it can be deleted.
    assert!(matches!(
        rt.kill("k", Signal::Kill).await,
        Err(Error::InvalidTransition { .. })
    ));
    rt.delete("k").await.unwrap();
}

#[tokio::test]
async fn memory_cap_refuses_growth() {
    let d = tempfile::tempdir().unwrap();
    let rt = WasmtimeRuntime::new().unwrap();
    // Grows by 100 pages; exits 42 when refused (-1), 0 when allowed.
    let m = module(
        &d,
        "grow",
        r#"
      (func (export "_start")
        (if (i32.eq (memory.grow (i32.const 100)) (i32.const -1))
          (then (call $proc_exit (i32.const 42)))))"#,
    );
    let capped = WasiConfig {
        max_memory_pages: 10,
        ..WasiConfig::default()
    };
    let (code, _, _, st) = run_to_end(&rt, "capped", &bundle(m.clone(), capped)).await;
    assert_eq!(code, 42);
    assert_eq!(st.annotations["magikrun.memory_limit_hit"], "true");
    let roomy = WasiConfig {
        max_memory_pages: 200,
        ..WasiConfig::default()
    };
    let (code, _, _, st) = run_to_end(&rt, "roomy", &bundle(m, roomy)).await;
    assert_eq!(code, 0);
    assert!(!st.annotations.contains_key("magikrun.memory_limit_hit"));
}

/// Opens `path` relative to preopen fd 3, copies up to 64 bytes to stdout, exits with the errno
/// of path_open (0 on success).
fn cat_module(d: &tempfile::TempDir, name: &str, path: &str) -> PathBuf {
    let body = format!(
        r#"
      (data (i32.const 100) "{path}")
      (func (export "_start") (local $err i32)
        ;; path_open(fd=3, dirflags=0, path, len, oflags=0, rights=fd_read, inherit=0, fdflags=0, &fd@20)
        (local.set $err (call $path_open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const {len})
                                        (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 20)))
        (if (local.get $err) (then (call $proc_exit (local.get $err))))
        ;; iovec at 24: buf 300, len 64; nread at 32
        (i32.store (i32.const 24) (i32.const 300))
        (i32.store (i32.const 28) (i32.const 64))
        (drop (call $fd_read (i32.load (i32.const 20)) (i32.const 24) (i32.const 1) (i32.const 32)))
        (call $write (i32.const 1) (i32.const 300) (i32.load (i32.const 32))))"#,
        len = path.len()
    );
    module(d, name, &body)
}

#[tokio::test]
async fn filesystem_is_preopens_only() {
    let d = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("in.txt"), b"from preopen").unwrap();
    std::fs::write(d.path().join("secret.txt"), b"host secret").unwrap();
    let rt = WasmtimeRuntime::new().unwrap();
    let with_preopen = WasiConfig {
        preopens: vec![Preopen {
            host: data.path().to_path_buf(),
            guest: "/data".into(),
            read_only: true,
        }],
        ..WasiConfig::default()
    };
    let m = cat_module(&d, "cat", "in.txt");
    let (code, out, ..) = run_to_end(&rt, "cat", &bundle(m.clone(), with_preopen.clone())).await;
    assert_eq!((code, out.as_str()), (0, "from preopen"));

    // No preopen: fd 3 does not exist (EBADF = 8).
    let (code, out, ..) = run_to_end(&rt, "nopre", &bundle(m, WasiConfig::default())).await;
    assert_eq!((code, out.as_str()), (8, ""));

    // Escapes from the preopen are refused (ENOTCAPABLE = 76 or EPERM = 63).
    let rel = format!(
        "../{}/secret.txt",
        d.path().file_name().unwrap().to_str().unwrap()
    );
    for (i, path) in ["../secret.txt", rel.as_str(), "/etc/passwd"]
        .iter()
        .enumerate()
    {
        let m = cat_module(&d, &format!("esc{i}"), path);
        let (code, out, ..) =
            run_to_end(&rt, &format!("esc{i}"), &bundle(m, with_preopen.clone())).await;
        assert!(
            code == 76 || code == 63 || code == 2 || code == 44,
            "{path}: errno {code}"
        );
        assert!(out.is_empty(), "{path}: read {out:?}");
    }
}

#[tokio::test]
async fn no_host_environment_and_stdin_given() {
    let d = tempfile::tempdir().unwrap();
    let rt = WasmtimeRuntime::new().unwrap();
    // Exits with the number of environment variables.
    let m = module(
        &d,
        "envc",
        r#"
      (func (export "_start")
        (drop (call $environ_sizes_get (i32.const 40) (i32.const 44)))
        (call $proc_exit (i32.load (i32.const 40))))"#,
    );
    std::env::set_var("MAGIKRUN_TEST_LEAK", "1");
    let (code, ..) = run_to_end(&rt, "env0", &bundle(m.clone(), WasiConfig::default())).await;
    assert_eq!(code, 0, "host environment must not leak");
    let two = WasiConfig {
        env: vec![("A".into(), "1".into()), ("B".into(), "2".into())],
        ..WasiConfig::default()
    };
    let (code, ..) = run_to_end(&rt, "env2", &bundle(m, two)).await;
    assert_eq!(code, 2);

    // Echoes stdin.
    let m = module(
        &d,
        "echo",
        r#"
      (func (export "_start")
        (i32.store (i32.const 24) (i32.const 300))
        (i32.store (i32.const 28) (i32.const 64))
        (drop (call $fd_read (i32.const 0) (i32.const 24) (i32.const 1) (i32.const 32)))
        (call $write (i32.const 1) (i32.const 300) (i32.load (i32.const 32))))"#,
    );
    let cfg = WasiConfig {
        stdin: b"ping".to_vec(),
        ..WasiConfig::default()
    };
    let (_, out, ..) = run_to_end(&rt, "echo", &bundle(m, cfg)).await;
    assert_eq!(out, "ping");
}

#[tokio::test]
async fn lifecycle_errors() {
    let d = tempfile::tempdir().unwrap();
    let rt = WasmtimeRuntime::new().unwrap();
    let m = module(&d, "ok", r#"(func (export "_start"))"#);
    let b = bundle(m, WasiConfig::default());
    assert!(matches!(
        rt.start("none").await,
        Err(Error::ContainerNotFound(_))
    ));
    assert!(matches!(
        rt.create("../bad", &b).await,
        Err(Error::InvalidContainerId { .. })
    ));
    rt.create("c", &b).await.unwrap();
    assert!(matches!(
        rt.create("c", &b).await,
        Err(Error::ContainerExists(_))
    ));
    // Created containers can be killed (they stop) or deleted.
    rt.kill("c", Signal::Kill).await.unwrap();
    let st = rt.state("c").await.unwrap();
    assert_eq!(st.status, ContainerStatus::Stopped);
    assert_eq!(st.annotations["magikrun.exit_code"], "137");
    assert!(matches!(
        rt.start("c").await,
        Err(Error::InvalidTransition { .. })
    ));
    rt.delete("c").await.unwrap();
    rt.create("c2", &b).await.unwrap();
    rt.delete("c2").await.unwrap();

    let oci = Bundle::OciRuntime {
        path: d.path().to_path_buf(),
    };
    assert!(matches!(
        rt.create("x", &oci).await,
        Err(Error::UnsupportedBundle { .. })
    ));
    let junk = d.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm").unwrap();
    assert!(matches!(
        rt.create("j", &bundle(junk, WasiConfig::default())).await,
        Err(Error::Wasm(_))
    ));
    let missing_preopen = WasiConfig {
        preopens: vec![Preopen {
            host: d.path().join("nope"),
            guest: "/x".into(),
            read_only: true,
        }],
        ..WasiConfig::default()
    };
    let m = module(&d, "ok2", r#"(func (export "_start"))"#);
    assert!(matches!(
        rt.create("p", &bundle(m, missing_preopen)).await,
        Err(Error::InvalidBundle(_))
    ));
}

#[tokio::test]
async fn modules_are_compiled_once_per_content() {
    let d = tempfile::tempdir().unwrap();
    let rt = WasmtimeRuntime::new().unwrap();
    let body = r#"(data (i32.const 16) "hi\n") (func (export "_start") (call $write (i32.const 1) (i32.const 16) (i32.const 3)))"#;
    let m = module(&d, "cached", body);
    let b = bundle(m.clone(), WasiConfig::default());
    assert_eq!(rt.compilations(), 0);
    let (code, out, _, _) = run_to_end(&rt, "c1", &b).await;
    assert_eq!((code, out.as_str()), (0, "hi\n"));
    assert_eq!(rt.compilations(), 1);
    // Second and third create of the same module: no compilation, same behaviour.
    let (code, out, _, _) = run_to_end(&rt, "c2", &b).await;
    assert_eq!((code, out.as_str()), (0, "hi\n"));
    rt.create("c3", &b).await.unwrap();
    assert_eq!(rt.compilations(), 1);
    rt.delete("c3").await.unwrap();
    // Same bytes under another name: still a hit (keyed by content, not path).
    let copy = d.path().join("copy.wasm");
    std::fs::copy(&m, &copy).unwrap();
    run_to_end(&rt, "c4", &bundle(copy, WasiConfig::default())).await;
    assert_eq!(rt.compilations(), 1);
    assert_eq!(rt.cached_modules(), 1);
    // The file replaced in place by another module: compiled again, and the new code runs.
    let other = module(
        &d,
        "cached",
        r#"(data (i32.const 16) "yo\n") (func (export "_start") (call $write (i32.const 1) (i32.const 16) (i32.const 3)))"#,
    );
    let (_, out, _, _) = run_to_end(&rt, "c5", &bundle(other, WasiConfig::default())).await;
    assert_eq!(out, "yo\n");
    assert_eq!(rt.compilations(), 2);
    assert_eq!(rt.cached_modules(), 2);
    // A module that does not compile is not cached, and each attempt is reported.
    let bad = d.path().join("bad.wasm");
    std::fs::write(&bad, b"\0asm\x01\0\0\0\xff").unwrap();
    for _ in 0..2 {
        assert!(matches!(
            rt.create("bad", &bundle(bad.clone(), WasiConfig::default()))
                .await,
            Err(Error::Wasm(_))
        ));
    }
    assert_eq!(rt.cached_modules(), 2);
}
