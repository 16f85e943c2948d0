//! OCI runtime command-line conformance, the way opencontainers/runtime-tools' validation
//! drives a runtime (`validation/util/container.go`): `create [--bundle] [--pid-file] ID` with
//! the container's stdio passed through to files, `state` polled until `stopped`, `kill ID SIG`
//! (positional, and `--signal`), `delete [--force]`. Every `state` answer is checked against the
//! runtime-spec state schema; every error case must exit non-zero, say why on stderr and leave
//! the other containers as they were. Needs root and busybox-static (skipped otherwise).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Cli {
    root: PathBuf,
}

impl Cli {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_magikrun"));
        c.arg("--root").arg(&self.root).args(args);
        c.stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// An error case: non-zero exit and a reason on stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "{args:?} must fail");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!err.trim().is_empty(), "{args:?} failed without a reason");
        err
    }

    /// `state ID`, checked against the runtime-spec state schema.
    fn state(&self, id: &str) -> Value {
        let out = self.ok(&["state", id]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        check_state_schema(&v, id);
        v
    }

    fn create(&self, id: &str, bundle: &Path, out: &Path, pid_file: Option<&Path>) {
        let mut args = vec!["create", "--bundle", bundle.to_str().unwrap()];
        if let Some(p) = pid_file {
            args.extend(["--pid-file", p.to_str().unwrap()]);
        }
        args.push(id);
        let st = self
            .cmd(&args)
            .stdout(std::fs::File::create(out).unwrap())
            .stderr(std::fs::File::create(out.with_extension("err")).unwrap())
            .status()
            .unwrap();
        assert!(
            st.success(),
            "create {id}: {}",
            std::fs::read_to_string(out.with_extension("err")).unwrap_or_default()
        );
    }

    /// The harness' `WaitingForStatus`: poll `state` until `want` (10 s).
    fn wait_for(&self, id: &str, want: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.state(id);
            if s["status"] == want {
                return s;
            }
            assert!(Instant::now() < deadline, "{id} never became {want}: {s}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// runtime-spec `state` schema: required `ociVersion`, `id`, `status` (one of four), `bundle`
/// (absolute path); `pid` required while created or running on Linux; `annotations` a map of
/// strings; nothing else.
fn check_state_schema(v: &Value, id: &str) {
    let obj = v.as_object().expect("state is a JSON object");
    for k in obj.keys() {
        assert!(
            ["ociVersion", "id", "status", "pid", "bundle", "annotations"].contains(&k.as_str()),
            "unexpected state field {k}: {v}"
        );
    }
    let version = v["ociVersion"].as_str().expect("ociVersion string");
    let parts: Vec<&str> = version.split(['.', '-']).collect();
    assert!(
        parts.len() >= 3 && parts[..3].iter().all(|p| p.parse::<u32>().is_ok()),
        "ociVersion is not SemVer: {version}"
    );
    assert_eq!(v["id"], id);
    let status = v["status"].as_str().expect("status string");
    assert!(
        ["creating", "created", "running", "stopped"].contains(&status),
        "status {status}"
    );
    let bundle = v["bundle"].as_str().expect("bundle string");
    assert!(
        Path::new(bundle).is_absolute(),
        "bundle not absolute: {bundle}"
    );
    if status == "created" || status == "running" {
        let pid = v["pid"]
            .as_i64()
            .expect("pid required while created/running");
        assert!(pid > 0, "pid {pid}");
    }
    if let Some(a) = v.get("annotations") {
        let a = a.as_object().expect("annotations is a map");
        assert!(a.values().all(Value::is_string), "annotations: {a:?}");
    }
}

async fn bundle(tmp: &Path, name: &str, cmd: &[&str]) -> PathBuf {
    let layout = common::busybox_layout(&tmp.join(format!("{name}-layout")), cmd);
    let store = magikrun::BlobStore::with_root(tmp.join("blobs")).unwrap();
    let image = magikrun::pull_image(&format!("oci:{}:busybox", layout.display()), &store)
        .await
        .unwrap();
    let dir = tmp.join(name);
    magikrun::BundleBuilder::new()
        .unwrap()
        .image(&image)
        .storage(&store)
        .bundle_dir(&dir)
        .build()
        .await
        .unwrap();
    dir
}

/// The pids (v1) or unified (v2) cgroup directory of a process, as the host sees it.
fn pids_cgroup_dir(pid: i64) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let mut v2 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = path.trim_start_matches('/');
        if ctrls.split(',').any(|c| c == "pids") {
            return Some(Path::new("/sys/fs/cgroup/pids").join(rel));
        }
        if ctrls.is_empty() {
            v2 = Some(Path::new("/sys/fs/cgroup").join(rel));
        }
    }
    v2
}

fn pid_alive(pid: i64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_cli_lifecycle_and_error_cases() {
    if !common::is_root() || !Path::new(common::BUSYBOX).exists() {
        eprintln!("skipped: needs root and busybox-static");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let cli = Cli {
        root: t.join("state"),
    };
    let long = bundle(t, "long", &["sh", "-c", "echo started; exec sleep 60"]).await;
    let canonical = std::fs::canonicalize(&long).unwrap();

    // create → created: pid in the pid file, alive, process not started yet.
    let out = t.join("long.out");
    let pid_file = t.join("long.pid");
    cli.create("c1", &long, &out, Some(&pid_file));
    let s = cli.state("c1");
    assert_eq!(s["status"], "created");
    assert_eq!(s["bundle"], canonical.to_str().unwrap());
    let pid = s["pid"].as_i64().unwrap();
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        pid.to_string()
    );
    assert!(pid_alive(pid));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "",
        "ran before start"
    );

    // Duplicate id: refused, the first container untouched.
    let err = cli.fails(&["create", "--bundle", long.to_str().unwrap(), "c1"]);
    assert!(err.contains("c1"), "{err}");
    assert_eq!(cli.state("c1")["status"], "created");
    assert_eq!(cli.state("c1")["pid"], pid);

    // start → running (same pid), output reaches the file given to create.
    cli.ok(&["start", "c1"]);
    let s = cli.wait_for("c1", "running");
    assert_eq!(s["pid"], pid);
    let cgroup = pids_cgroup_dir(pid).expect("container cgroup");
    assert!(
        cgroup.exists() && cgroup != Path::new("/sys/fs/cgroup/pids"),
        "{}",
        cgroup.display()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&out).unwrap() != "started\n" {
        assert!(Instant::now() < deadline, "no output from the container");
        std::thread::sleep(Duration::from_millis(20));
    }

    // start twice: refused, still running.
    cli.fails(&["start", "c1"]);
    assert_eq!(cli.state("c1")["status"], "running");

    // delete of a running container without --force: refused, no effect.
    cli.fails(&["delete", "c1"]);
    assert_eq!(cli.state("c1")["status"], "running");
    assert!(pid_alive(pid));

    // kill (runc's positional form, then the spec's --signal form) → stopped.
    cli.ok(&["kill", "--signal", "TERM", "c1"]);
    cli.ok(&["kill", "c1", "KILL"]);
    let s = cli.wait_for("c1", "stopped");
    assert_eq!(s["bundle"], canonical.to_str().unwrap());
    // kill on a stopped container is an error (runtime-spec: not created/running).
    cli.fails(&["kill", "c1", "KILL"]);
    cli.fails(&["start", "c1"]);

    // delete → gone: state fails, container state and cgroups released, bundle kept.
    cli.ok(&["delete", "c1"]);
    let err = cli.fails(&["state", "c1"]);
    assert!(err.contains("not found"), "{err}");
    assert!(!cli.root.join("c1").exists());
    assert!(!cgroup.exists(), "{} left behind", cgroup.display());
    assert!(long.join("config.json").exists() && long.join("rootfs").is_dir());

    // Unknown id: every command fails with a reason.
    for args in [
        &["state", "nope"][..],
        &["start", "nope"],
        &["kill", "nope", "KILL"],
        &["delete", "nope"],
        &["delete", "--force", "nope"],
    ] {
        let err = cli.fails(args);
        assert!(err.contains("nope"), "{args:?}: {err}");
    }

    // Bad bundles and ids: refused, nothing left in the state root.
    let empty = t.join("empty-bundle");
    std::fs::create_dir(&empty).unwrap();
    cli.fails(&["create", "--bundle", empty.to_str().unwrap(), "b1"]);
    let garbage = t.join("garbage-bundle");
    std::fs::create_dir_all(garbage.join("rootfs")).unwrap();
    std::fs::write(garbage.join("config.json"), b"{not json").unwrap();
    cli.fails(&["create", "--bundle", garbage.to_str().unwrap(), "b2"]);
    let missing = t.join("no-such-dir");
    cli.fails(&["create", "--bundle", missing.to_str().unwrap(), "b3"]);
    for bad_id in ["../escape", "a/b", ""] {
        cli.fails(&["create", "--bundle", long.to_str().unwrap(), bad_id]);
    }
    for id in ["b1", "b2", "b3"] {
        cli.fails(&["state", id]);
        assert!(!cli.root.join(id).exists(), "{id} left state behind");
    }
    assert!(!t.join("escape").exists());

    // A created container is deleted (init killed, runc behaviour); delete --force of a running
    // one works; a process that exits on its own is reported stopped and then deleted.
    cli.create("c2", &long, &t.join("c2.out"), None);
    let pid2 = cli.state("c2")["pid"].as_i64().unwrap();
    cli.ok(&["delete", "c2"]);
    cli.fails(&["state", "c2"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid_alive(pid2)
        && std::fs::read_to_string(format!("/proc/{pid2}/stat")).is_ok_and(|s| !s.contains(") Z "))
    {
        assert!(Instant::now() < deadline, "init of deleted c2 still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
    cli.create("c3", &long, &t.join("c3.out"), None);
    cli.ok(&["start", "c3"]);
    cli.wait_for("c3", "running");
    cli.ok(&["delete", "--force", "c3"]);
    cli.fails(&["state", "c3"]);

    let short = bundle(t, "short", &["sh", "-c", "echo bye; exit 7"]).await;
    cli.create("c4", &short, &t.join("c4.out"), None);
    cli.ok(&["start", "c4"]);
    cli.wait_for("c4", "stopped");
    assert_eq!(std::fs::read_to_string(t.join("c4.out")).unwrap(), "bye\n");
    cli.ok(&["delete", "c4"]);
    assert!(std::fs::read_dir(&cli.root)
        .unwrap()
        .flatten()
        .all(|e| e.file_name().to_string_lossy().starts_with('.')));
}

const RUNTIME_TOOLS: &str = "/usr/share/gocode/src/github.com/opencontainers/runtime-tools";
const SPEC_SCHEMAS: &str = "/usr/share/gocode/src/github.com/opencontainers/runtime-spec/schema";

/// Builds `tests/oci-validate` (runtime-tools' `validate` package from Debian, GOPATH mode).
fn build_validator(dir: &Path) -> Option<PathBuf> {
    if !Path::new(RUNTIME_TOOLS).exists() || !Path::new(SPEC_SCHEMAS).exists() {
        eprintln!(
            "skipped: needs golang-go and golang-github-opencontainers-runtime-tools-dev (Debian)"
        );
        return None;
    }
    let bin = dir.join("oci-validate");
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg("main.go")
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oci-validate"))
        .env("GOPATH", "/usr/share/gocode")
        .env("GO111MODULE", "off")
        .env("GOFLAGS", "")
        .env("GOCACHE", dir.join("gocache"))
        .output();
    match out {
        Ok(o) if o.status.success() => Some(bin),
        Ok(o) => panic!("oci-validate build: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            eprintln!("skipped: no go toolchain ({e})");
            None
        }
    }
}

fn validate(bin: &Path, mode: &str, path: &Path) -> (bool, String) {
    let out = Command::new(bin)
        .arg(mode)
        .arg(path)
        .arg(SPEC_SCHEMAS)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// runtime-tools' bundle validation (`validate.Validator`: root, mandatory fields, SemVer,
/// mounts, process, capabilities, rlimits, linux namespaces/devices/seccomp/paths, hooks) and
/// the runtime-spec config schema, on the hardened and the rootless `config.json`; and the
/// state schema on `magikrun state` output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_tools_validate_bundles_and_state() {
    if !Path::new(common::BUSYBOX).exists() {
        eprintln!("skipped: needs busybox-static");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let Some(bin) = build_validator(t) else {
        return;
    };
    for (name, rootless) in [("hardened", false), ("rootless", true)] {
        let layout = common::busybox_layout(&t.join(format!("{name}-layout")), &["true"]);
        let store = magikrun::BlobStore::with_root(t.join("blobs")).unwrap();
        let image = magikrun::pull_image(&format!("oci:{}:busybox", layout.display()), &store)
            .await
            .unwrap();
        let dir = t.join(name);
        magikrun::BundleBuilder::new()
            .unwrap()
            .image(&image)
            .storage(&store)
            .bundle_dir(&dir)
            .rootless(rootless)
            .build()
            .await
            .unwrap();
        let (ok, report) = validate(&bin, "config", &dir);
        assert!(ok, "{name} bundle: {report}");
        assert!(report.contains("valid"), "{report}");

        // The validator is not a rubber stamp: a relative cwd, an unknown capability and a
        // missing ociVersion are each reported.
        let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
        let good: Value = serde_json::from_str(&text).unwrap();
        let mut bad_cases = Vec::new();
        let mut v = good.clone();
        v["process"]["cwd"] = "relative".into();
        bad_cases.push(("relative cwd", v));
        let mut v = good.clone();
        v["process"]["capabilities"]["bounding"] = serde_json::json!(["CAP_BOGUS"]);
        bad_cases.push(("unknown capability", v));
        let mut v = good.clone();
        v.as_object_mut().unwrap().remove("ociVersion");
        bad_cases.push(("no ociVersion", v));
        for (what, v) in bad_cases {
            std::fs::write(dir.join("config.json"), serde_json::to_vec(&v).unwrap()).unwrap();
            let (ok, report) = validate(&bin, "config", &dir);
            assert!(!ok, "{name}: {what} accepted: {report}");
        }
        std::fs::write(dir.join("config.json"), text).unwrap();
    }

    if !common::is_root() {
        eprintln!("state schema part skipped: needs root");
        return;
    }
    let cli = Cli {
        root: t.join("state"),
    };
    let long = bundle(t, "long", &["sleep", "60"]).await;
    cli.create("v1", &long, &t.join("v1.out"), None);
    let mut states = vec![cli.state("v1")];
    cli.ok(&["start", "v1"]);
    states.push(cli.wait_for("v1", "running"));
    cli.ok(&["kill", "v1", "KILL"]);
    states.push(cli.wait_for("v1", "stopped"));
    for (i, s) in states.iter().enumerate() {
        let f = t.join(format!("state{i}.json"));
        std::fs::write(&f, serde_json::to_vec(s).unwrap()).unwrap();
        let (ok, report) = validate(&bin, "state", &f);
        assert!(ok, "state {s}: {report}");
    }
    let f = t.join("bad-state.json");
    std::fs::write(
        &f,
        br#"{"ociVersion":"1.0.0","id":"x","status":"exploded","bundle":"/b"}"#,
    )
    .unwrap();
    assert!(!validate(&bin, "state", &f).0, "bad status accepted");
    cli.ok(&["delete", "v1"]);
}
