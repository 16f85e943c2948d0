//! Runs the Python SDK's own tests (`sdk/python/tests`: the worker protocol against a fake
//! runtime, the SDK API, the example controllers) so `cargo test --workspace` covers them.
//!
//! Needs `python3` (3.9 or newer) on `PATH`; the tests use the standard library only.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn python_sdk_tests_pass() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root exists");
    assert!(
        root.join("sdk/python/magic/worker.py").is_file(),
        "no SDK under {}",
        root.display()
    );
    let output = Command::new("python3")
        .args([
            "-m",
            "unittest",
            "discover",
            "-s",
            "sdk/python/tests",
            "-t",
            "sdk/python",
            "-v",
        ])
        .current_dir(&root)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python3 must be on PATH to run the Python SDK tests");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    println!("{stderr}");
    assert!(
        output.status.success(),
        "python3 -m unittest discover -s sdk/python/tests failed ({}); output above",
        output.status
    );
    // unittest reports "OK" (possibly "OK (skipped=N)") on its last line when all passed.
    assert!(
        stderr.lines().rev().any(|l| l.starts_with("OK")),
        "unittest did not report OK"
    );
}
