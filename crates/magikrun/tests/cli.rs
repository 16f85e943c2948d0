//! The `magikrun` OCI command line: platform report and a create/start/state/kill/delete run.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn magikrun() -> Command {
    Command::new(env!("CARGO_BIN_EXE_magikrun"))
}

#[test]
fn platform_reports_detection() {
    let out = magikrun().arg("platform").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("cgroups:"), "{text}");
    assert!(
        text.contains("available runtimes:") && text.contains("wasmtime"),
        "{text}"
    );
    let out = magikrun().args(["platform", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["platform"]["capabilities"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("wasm_runtime")));
    assert!(v["unavailable"]["krun"].is_string());
}

#[test]
fn unknown_commands_and_missing_containers_fail_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let out = magikrun().arg("frobnicate").output().unwrap();
    assert!(!out.status.success());
    let out = magikrun()
        .args(["--root", tmp.path().to_str().unwrap(), "state", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("container not found: nope"), "{err}");
    let out = magikrun()
        .args([
            "--root",
            tmp.path().to_str().unwrap(),
            "kill",
            "nope",
            "BOGUS",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

fn state(root: &str, id: &str) -> serde_json::Value {
    let out = magikrun()
        .args(["--root", root, "state", id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_cli_lifecycle() {
    if !common::is_root() || !std::path::Path::new(common::BUSYBOX).exists() {
        eprintln!("skipped: needs root and busybox-static");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = common::busybox_layout(
        &tmp.path().join("layout"),
        &["sh", "-c", "echo from-container"],
    );
    let store = magikrun::BlobStore::with_root(tmp.path().join("blobs")).unwrap();
    let image = magikrun::pull_image(&format!("oci:{}:busybox", layout.display()), &store)
        .await
        .unwrap();
    let bundle = tmp.path().join("bundle");
    magikrun::BundleBuilder::new()
        .unwrap()
        .image(&image)
        .storage(&store)
        .bundle_dir(&bundle)
        .build()
        .await
        .unwrap();
    let root = tmp.path().join("state");
    let root_s = root.to_str().unwrap();
    let pid_file = tmp.path().join("pid");
    let stdout = std::fs::File::create(tmp.path().join("out")).unwrap();

    let st = magikrun()
        .args([
            "--root",
            root_s,
            "create",
            "--bundle",
            bundle.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            "cli1",
        ])
        .stdout(Stdio::from(stdout))
        .status()
        .unwrap();
    assert!(st.success());
    let s = state(root_s, "cli1");
    assert_eq!(s["status"], "created");
    let pid: i64 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    assert_eq!(s["pid"], pid);

    assert!(magikrun()
        .args(["--root", root_s, "start", "cli1"])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while state(root_s, "cli1")["status"] != "stopped" {
        assert!(Instant::now() < deadline, "container did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("out")).unwrap(),
        "from-container\n"
    );
    // kill on a stopped container fails; delete works; state then fails.
    assert!(!magikrun()
        .args(["--root", root_s, "kill", "cli1", "KILL"])
        .status()
        .unwrap()
        .success());
    assert!(magikrun()
        .args(["--root", root_s, "delete", "cli1"])
        .status()
        .unwrap()
        .success());
    assert!(!magikrun()
        .args(["--root", root_s, "state", "cli1"])
        .status()
        .unwrap()
        .success());

    // delete --force of a running container, signal given as --signal flag first.
    let layout2 = common::busybox_layout(&tmp.path().join("layout2"), &["sleep", "100"]);
    let image = magikrun::pull_image(&format!("oci:{}:busybox", layout2.display()), &store)
        .await
        .unwrap();
    let bundle2 = tmp.path().join("bundle2");
    magikrun::BundleBuilder::new()
        .unwrap()
        .image(&image)
        .storage(&store)
        .bundle_dir(&bundle2)
        .build()
        .await
        .unwrap();
    assert!(magikrun()
        .args([
            "--root",
            root_s,
            "create",
            "-b",
            bundle2.to_str().unwrap(),
            "cli2"
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success());
    assert!(magikrun()
        .args(["--root", root_s, "start", "cli2"])
        .status()
        .unwrap()
        .success());
    assert_eq!(state(root_s, "cli2")["status"], "running");
    assert!(magikrun()
        .args(["--root", root_s, "kill", "--signal", "SIGUSR1", "cli2"])
        .status()
        .unwrap()
        .success());
    assert!(magikrun()
        .args(["--root", root_s, "delete", "--force", "cli2"])
        .status()
        .unwrap()
        .success());
    assert!(!root.join("cli2").exists());
}
