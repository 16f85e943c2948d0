//! YoukiRuntime on this machine: real namespaces, cgroups, seccomp, reaping. Needs root and
//! Debian's busybox-static; skipped (with a message) otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::time::Duration;

use magikrun::runtimes::youki::YoukiRuntime;
use magikrun::{
    pull_image, BlobStore, Bundle, BundleBuilder, ContainerStatus, Error, OciRuntime, Signal,
};

const WAIT: Duration = Duration::from_secs(30);

struct Fixture {
    _tmp: tempfile::TempDir,
    rt: YoukiRuntime,
    bundle: Bundle,
}

async fn fixture(cmd: &[&str]) -> Option<Fixture> {
    if !common::is_root() || !std::path::Path::new(common::BUSYBOX).exists() {
        eprintln!("skipped: needs root and busybox-static");
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = common::busybox_layout(&tmp.path().join("layout"), cmd);
    let store = BlobStore::with_root(tmp.path().join("blobs")).unwrap();
    let image = pull_image(&format!("oci:{}:busybox", layout.display()), &store)
        .await
        .unwrap();
    let bundle = BundleBuilder::new()
        .unwrap()
        .image(&image)
        .storage(&store)
        .bundle_dir(tmp.path().join("bundle"))
        .build()
        .await
        .unwrap();
    let rt = YoukiRuntime::new(tmp.path().join("state"));
    Some(Fixture {
        _tmp: tmp,
        rt,
        bundle,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lifecycle_with_hardened_config() {
    let script = "echo hello; echo pid=$$; hostname; id -u; grep -E '^(Seccomp|NoNewPrivs|CapEff|CapBnd):' /proc/self/status; \
                  touch /rootfile 2>/dev/null || echo root-readonly; ls /sys/class/net; \
                  test -s /proc/kcore && echo kcore-visible || echo kcore-masked; \
                  touch /tmp/scratch && echo tmp-writable; exit 3";
    let Some(f) = fixture(&["sh", "-c", script]).await else {
        return;
    };
    let rt = &f.rt;
    // A file this process has open for writing (as another thread writing a rootfs would) must
    // not leak into the container init, which waits for `start` before it execs.
    let marker = f._tmp.path().join("open-for-writing");
    let _held = std::fs::File::create(&marker).unwrap();
    rt.create("life", &f.bundle).await.unwrap();
    let st = rt.state("life").await.unwrap();
    assert_eq!(st.status, ContainerStatus::Created);
    let pid = st.pid.expect("created container has a pid");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    let leaked: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|t| t == &marker)
        .collect();
    assert!(leaked.is_empty(), "init inherited {leaked:?}");
    // The init process sits in its own cgroup named after the container.
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cg.contains("life"), "{cg}");
    // The pids limit from config.json is applied in the container's pids cgroup (v1 here, v2
    // on unified hosts).
    let pids_line = cg
        .lines()
        .find(|l| l.contains(":pids:") || l.starts_with("0::"))
        .unwrap();
    // "8:pids:/path": the path itself may contain ':' (libcontainer names it ":youki:<id>").
    let rel = pids_line
        .splitn(3, ':')
        .nth(2)
        .unwrap()
        .trim_start_matches('/');
    let max = [
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ]
    .iter()
    .map(|base| std::path::Path::new(base).join(rel).join("pids.max"))
    .find_map(|p| std::fs::read_to_string(p).ok());
    assert_eq!(max.as_deref().map(str::trim), Some("1024"), "{cg}");
    // A second create with the same id is refused.
    assert!(rt.create("life", &f.bundle).await.is_err());

    rt.start("life").await.unwrap();
    let st = rt.wait("life", WAIT).await.unwrap();
    assert_eq!(st.status, ContainerStatus::Stopped);
    let (log_out, log_err) = rt.log_paths("life");
    assert_eq!(
        st.annotations.get("magikrun.exit_code").map(String::as_str),
        Some("3"),
        "stdout: {:?}\nstderr: {:?}",
        std::fs::read_to_string(&log_out).unwrap_or_default(),
        std::fs::read_to_string(&log_err).unwrap_or_default()
    );
    assert!(st.pid.is_none());
    let v: serde_json::Value = serde_json::from_str(&st.to_json().unwrap()).unwrap();
    assert_eq!(v["status"], "stopped");
    assert_eq!(v["ociVersion"], magikrun::OCI_VERSION);

    let (out, _) = rt.log_paths("life");
    let out = std::fs::read_to_string(out).unwrap();
    for want in [
        "hello",
        "pid=1",
        "magikrun",
        "Seccomp:\t2",
        "NoNewPrivs:\t1",
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "root-readonly",
        "kcore-masked",
        "tmp-writable",
    ] {
        assert!(out.contains(want), "{want:?} missing from:\n{out}");
    }
    // Only loopback in the fresh network namespace.
    assert!(out.lines().any(|l| l.trim() == "lo"), "{out}");
    assert!(!out.contains("eth0"), "{out}");
    // Init was reaped by us: no zombie left.
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists() || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            !stat.contains(") Z ")
        }
    );

    assert!(matches!(
        rt.start("life").await,
        Err(Error::InvalidTransition { .. })
    ));
    assert!(matches!(
        rt.kill("life", Signal::Term).await,
        Err(Error::InvalidTransition { .. })
    ));
    rt.delete("life").await.unwrap();
    assert!(matches!(
        rt.state("life").await,
        Err(Error::ContainerNotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_running_and_delete_created() {
    let Some(f) = fixture(&["sleep", "100"]).await else {
        return;
    };
    let rt = &f.rt;
    rt.create("sleeper", &f.bundle).await.unwrap();
    rt.start("sleeper").await.unwrap();
    assert_eq!(
        rt.state("sleeper").await.unwrap().status,
        ContainerStatus::Running
    );
    assert!(matches!(
        rt.delete("sleeper").await,
        Err(Error::InvalidTransition { .. })
    ));
    rt.kill("sleeper", Signal::Kill).await.unwrap();
    let st = rt.wait("sleeper", WAIT).await.unwrap();
    assert_eq!(st.annotations["magikrun.exit_code"], "137");
    rt.delete("sleeper").await.unwrap();

    // Created, never started: delete kills and reaps the waiting init.
    rt.create("idle", &f.bundle).await.unwrap();
    let pid = rt.state("idle").await.unwrap().pid.unwrap();
    rt.delete("idle").await.unwrap();
    let gone = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(gone, "init {pid} of a deleted container still exists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seccomp_from_config_is_enforced() {
    // busybox sets $PPID from getppid(2): 0 for a PID-namespace init, -1 when seccomp makes the
    // call fail. A control run with the default profile, then one whose config.json denies it.
    let Some(f) = fixture(&["sh", "-c", "echo ppid=$PPID"]).await else {
        return;
    };
    let Bundle::OciRuntime { path } = &f.bundle else {
        panic!("not an OCI bundle")
    };
    let rt = &f.rt;
    let bundle = &f.bundle;
    let run = |id: &'static str| async move {
        rt.create(id, bundle).await.unwrap();
        rt.start(id).await.unwrap();
        rt.wait(id, WAIT).await.unwrap();
        let out = std::fs::read_to_string(rt.log_paths(id).0).unwrap();
        rt.delete(id).await.unwrap();
        out
    };
    let control = run("sc-control").await;
    assert!(control.contains("ppid=0"), "{control}");

    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        cfg["linux"]["seccomp"]["syscalls"][0]["action"],
        "SCMP_ACT_ERRNO"
    );
    cfg["linux"]["seccomp"]["syscalls"][0]["names"] = serde_json::json!(["getppid"]);
    std::fs::write(path.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let denied = run("sc-denied").await;
    // getppid() returning -1 is printed signed or unsigned depending on the busybox build.
    assert!(
        denied.contains("ppid=-1") || denied.contains("ppid=4294967295"),
        "{denied}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_that_hangs_is_timed_out_and_cleaned_up() {
    // A createRuntime hook that sleeps makes libcontainer's create hang; our bound must fire.
    let Some(f) = fixture(&["true"]).await else {
        return;
    };
    let Bundle::OciRuntime { path } = &f.bundle else {
        panic!("not an OCI bundle")
    };
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path.join("config.json")).unwrap()).unwrap();
    cfg["hooks"] =
        serde_json::json!({"createRuntime": [{"path": "/bin/sleep", "args": ["sleep", "30"]}]});
    std::fs::write(path.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let rt = YoukiRuntime::new(f.rt.root()).with_timeout(Duration::from_millis(1500));
    let started = std::time::Instant::now();
    let r = rt.create("hang", &f.bundle).await;
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        !rt.root().join("hang").exists(),
        "state of the failed create must be removed"
    );
    assert!(matches!(
        rt.state("hang").await,
        Err(Error::ContainerNotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_lifecycles_from_a_multithreaded_caller() {
    // create forks a helper from a busy multi-threaded process: run several at once, while
    // other threads allocate, to catch deadlocks in the forked child.
    let Some(f) = fixture(&["sh", "-c", "echo $$"]).await else {
        return;
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut v: Vec<Vec<u8>> = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                v.push(vec![1u8; 4096]);
                if v.len() > 1000 {
                    v.clear();
                }
            }
        })
    };
    for round in 0..3 {
        let runs = (0..4).map(|i| {
            let rt = &f.rt;
            let b = &f.bundle;
            async move {
                let id = format!("par-{round}-{i}");
                rt.create(&id, b).await.unwrap();
                rt.start(&id).await.unwrap();
                let st = rt.wait(&id, WAIT).await.unwrap();
                assert_eq!(st.annotations["magikrun.exit_code"], "0");
                let out = rt.captured_output(&id).await.unwrap().unwrap().0;
                assert_eq!(String::from_utf8(out).unwrap(), "1\n");
                rt.delete(&id).await.unwrap();
            }
        });
        tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(runs))
            .await
            .expect("parallel lifecycles hung");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churn.join().unwrap();
}

const ROOTLESS_UID: u32 = 65534;

/// Rootless youki: as root, delegate the cgroup v1 directories to uid 65534 (nobody), then run
/// [`rootless_inner`] from this test binary as that user (`setpriv`, no groups, no
/// capabilities) and check it passed.
#[test]
fn rootless_lifecycle_as_unprivileged_user() {
    let setpriv = std::path::Path::new("/usr/bin/setpriv");
    if !common::is_root() || !std::path::Path::new(common::BUSYBOX).exists() || !setpriv.exists() {
        eprintln!("skipped: needs root (to switch users), busybox-static and setpriv");
        return;
    }
    let platform = magikrun::Platform::detect();
    let v1 = matches!(
        platform.cgroup_mode,
        magikrun::CgroupMode::Legacy | magikrun::CgroupMode::Hybrid
    );
    if v1 {
        magikrun::runtimes::youki::delegate_cgroups_v1(ROOTLESS_UID, ROOTLESS_UID).unwrap();
    }
    let out = std::process::Command::new(setpriv)
        .args([
            &format!("--reuid={ROOTLESS_UID}"),
            &format!("--regid={ROOTLESS_UID}"),
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "rootless_inner",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MAGIKRUN_ROOTLESS_INNER", "1")
        .env_remove("XDG_RUNTIME_DIR")
        .env("HOME", "/tmp")
        .output()
        .unwrap();
    let cleanup = if v1 {
        magikrun::runtimes::youki::remove_delegated_cgroups_v1(ROOTLESS_UID)
    } else {
        Ok(())
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("rootless-inner-ok"),
        "{}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    cleanup.unwrap();
}

/// The unprivileged half of [`rootless_lifecycle_as_unprivileged_user`]; does nothing unless
/// started by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rootless_inner() {
    if std::env::var_os("MAGIKRUN_ROOTLESS_INNER").is_none() {
        return;
    }
    assert!(!common::is_root(), "must run unprivileged");
    let platform = magikrun::Platform::detect();
    assert_eq!(
        magikrun::runtimes::backend_availability("youki", &platform),
        Ok(()),
        "the registry must offer youki to this user: {:?}",
        platform.notes
    );
    let tmp = tempfile::tempdir().unwrap();
    let script = "id -u; id -g; cat /proc/self/uid_map; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; \
                  hostname; ls /sys/class/net; touch /rootfile 2>/dev/null || echo root-readonly; exit 5";
    let layout = common::busybox_layout(&tmp.path().join("layout"), &["sh", "-c", script]);
    let store = BlobStore::with_root(tmp.path().join("blobs")).unwrap();
    let image = pull_image(&format!("oci:{}:busybox", layout.display()), &store)
        .await
        .unwrap();
    let bundle = BundleBuilder::new()
        .unwrap()
        .image(&image)
        .storage(&store)
        .bundle_dir(tmp.path().join("bundle"))
        .build()
        .await
        .unwrap();
    let config = std::fs::read_to_string(tmp.path().join("bundle/config.json")).unwrap();
    assert!(config.contains("uidMappings"), "builder wrote no mapping");
    let rt = YoukiRuntime::new(tmp.path().join("state"));
    rt.create("rootless", &bundle).await.unwrap();
    let st = rt.state("rootless").await.unwrap();
    assert_eq!(st.status, ContainerStatus::Created);
    rt.start("rootless").await.unwrap();
    let st = rt.wait("rootless", WAIT).await.unwrap();
    assert_eq!(st.status, ContainerStatus::Stopped);
    assert_eq!(
        st.annotations.get("magikrun.exit_code").map(String::as_str),
        Some("5")
    );
    let (out, err) = rt.log_paths("rootless");
    let out = std::fs::read_to_string(out).unwrap();
    let err = std::fs::read_to_string(err).unwrap_or_default();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..2], &["0", "0"], "{out}\n{err}");
    let map: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(map, ["0", &ROOTLESS_UID.to_string(), "1"], "{out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(out.contains("magikrun"), "hostname: {out}");
    assert!(out.contains("root-readonly"), "{out}");
    let ifaces: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| *l == "lo" || l.starts_with("eth"))
        .collect();
    assert_eq!(ifaces, ["lo"], "{out}");
    rt.delete("rootless").await.unwrap();
    assert!(matches!(
        rt.state("rootless").await,
        Err(Error::ContainerNotFound(_))
    ));
    println!("rootless-inner-ok");
}
