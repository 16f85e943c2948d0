//! `YoukiRuntime`: Linux containers on youki's `libcontainer` (namespaces, cgroups v1/v2,
//! seccomp from the bundle's `config.json`).
//!
//! Owns: the container backend on Linux, its state directory, and the container init processes
//! it creates. `create` runs libcontainer in a freshly forked, single-threaded helper process
//! (libcontainer clones with raw `clone3`, which is not safe from a multi-threaded caller), bounded
//! by [`CONTAINER_START_TIMEOUT`]; this process is made a child subreaper so the container init
//! is re-parented to it and reaped by a dedicated thread (no zombies, exit codes recorded).
//! Must never: leave a helper or init process unreaped or running past its timeout, or act on a
//! lifecycle transition [`transition`] refuses.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

/// libcontainer's `start` moves the whole process into the container's state dir (to reach the
/// notify socket by a short name) and back. Two starts at once, or a fork between the moves,
/// could leave the process, or a create helper, in another container's directory, which is
/// removed later (seen: "failed to get cwd" from later creates). Held around every start and
/// every helper fork.
static PROCESS_CWD: std::sync::Mutex<()> = std::sync::Mutex::new(());

use async_trait::async_trait;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::{Container, ContainerStatus as LcStatus};
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::signal::{kill as nix_kill, Signal as NixSignal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use crate::bundle::Bundle;
use crate::constants::CONTAINER_START_TIMEOUT;
use crate::error::{Error, Result};
use crate::runtimes::{OciRuntime, Signal};
use crate::state::{
    transition, validate_container_id, ContainerState, ContainerStatus, LifecycleOp,
};

/// Where the container process' stdio goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdioMode {
    /// The container inherits the caller's stdin/stdout/stderr (the OCI CLI behaviour).
    Inherit,
    /// stdin is `/dev/null`; stdout/stderr go to files under `<root>/.logs/` (library default).
    Capture,
}

/// The youki (libcontainer) backend.
#[derive(Debug)]
pub struct YoukiRuntime {
    root: PathBuf,
    stdio: StdioMode,
    timeout: Duration,
    /// Containers whose init this process reaps: `None` while it runs, then its exit code.
    exits: Arc<Mutex<HashMap<String, Option<i32>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn backend(e: impl std::fmt::Display) -> Error {
    Error::Backend {
        runtime: "youki",
        message: e.to_string(),
    }
}

/// Exit code of a wait status: the code, or 128 + signal.
pub fn exit_code_of(ws: WaitStatus) -> Option<i32> {
    match ws {
        WaitStatus::Exited(_, c) => Some(c),
        WaitStatus::Signaled(_, s, _) => Some(128 + s as i32),
        _ => None,
    }
}

/// Maps libcontainer's status (Paused is reported as running: this crate never pauses).
fn map_status(s: LcStatus) -> ContainerStatus {
    match s {
        LcStatus::Creating => ContainerStatus::Creating,
        LcStatus::Created => ContainerStatus::Created,
        LcStatus::Running | LcStatus::Paused => ContainerStatus::Running,
        LcStatus::Stopped => ContainerStatus::Stopped,
    }
}

/// `Container::load` reads `/proc/<pid>/stat`; when the init exits (and is reaped) between its
/// two reads, it fails once. Retry a few times: the next read sees the process gone (stopped).
fn load_container(dir: PathBuf) -> Result<Container> {
    let mut last = None;
    for _ in 0..5 {
        match Container::load(dir.clone()) {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Err(backend(last.map_or_else(
        || "load failed".to_string(),
        |e| e.to_string(),
    )))
}

static SUBREAPER: Once = Once::new();

fn become_subreaper() {
    SUBREAPER.call_once(|| {
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and changes only this process'
        // orphan re-parenting; no memory is passed.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        if rc != 0 {
            tracing::warn!(
                "PR_SET_CHILD_SUBREAPER failed: {}",
                std::io::Error::last_os_error()
            );
        }
    });
}

impl YoukiRuntime {
    /// A backend keeping container state under `root` (created if missing), capturing stdio.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        // libcontainer records absolute paths; a relative root is taken from the current dir.
        let root = std::path::absolute(&root).unwrap_or(root);
        YoukiRuntime {
            root,
            stdio: StdioMode::Capture,
            timeout: CONTAINER_START_TIMEOUT,
            exits: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Chooses where container stdio goes.
    pub fn with_stdio(mut self, stdio: StdioMode) -> Self {
        self.stdio = stdio;
        self
    }

    /// Overrides the create/start timeout (default [`CONTAINER_START_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The state root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Files receiving a container's stdout and stderr in [`StdioMode::Capture`].
    pub fn log_paths(&self, id: &str) -> (PathBuf, PathBuf) {
        let d = self.root.join(".logs");
        (
            d.join(format!("{id}.stdout")),
            d.join(format!("{id}.stderr")),
        )
    }

    fn load(&self, id: &str) -> Result<Container> {
        validate_container_id(id)?;
        let dir = self.root.join(id);
        if !dir.join("state.json").exists() {
            return Err(Error::ContainerNotFound(id.to_string()));
        }
        load_container(dir)
    }

    fn current_status(&self, id: &str, c: &Container) -> ContainerStatus {
        let status = map_status(c.status());
        match lock(&self.exits).get(id) {
            Some(Some(_)) => return ContainerStatus::Stopped,
            Some(None) if status == ContainerStatus::Stopped => {}
            _ => return status,
        }
        // libcontainer saw the zombie before our reaper collected it: give the reaper a moment
        // so the exit code is known when `stopped` is reported.
        for _ in 0..200 {
            if matches!(lock(&self.exits).get(id), Some(Some(_)) | None) {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        status
    }

    fn create_blocking(&self, id: &str, bundle: &Path) -> Result<()> {
        validate_container_id(id)?;
        let bundle = std::fs::canonicalize(bundle).map_err(|e| Error::io(bundle, e))?;
        if !bundle.join("config.json").is_file() {
            return Err(Error::InvalidBundle(format!(
                "{} has no config.json",
                bundle.display()
            )));
        }
        std::fs::create_dir_all(&self.root).map_err(|e| Error::io(&self.root, e))?;
        let root = std::fs::canonicalize(&self.root).map_err(|e| Error::io(&self.root, e))?;
        if root.join(id).exists() {
            return Err(Error::ContainerExists(id.to_string()));
        }
        let stdio: Option<(OwnedFd, OwnedFd, OwnedFd)> = match self.stdio {
            StdioMode::Inherit => None,
            StdioMode::Capture => {
                let (out, err) = self.log_paths(id);
                if let Some(d) = out.parent() {
                    std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
                }
                let open = |p: &Path| {
                    OpenOptions::new()
                        .create(true)
                        .write(true)
                        .truncate(true)
                        .open(p)
                        .map_err(|e| Error::io(p, e))
                };
                let null =
                    std::fs::File::open("/dev/null").map_err(|e| Error::io("/dev/null", e))?;
                Some((null.into(), open(&out)?.into(), open(&err)?.into()))
            }
        };
        become_subreaper();
        // With captured stdio the helper gets its own process group (killed whole on timeout);
        // with inherited stdio it stays in the caller's, so a terminal keeps working.
        let own_group = self.stdio == StdioMode::Capture;
        let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(backend)?;

        // The helper inherits the working directory: never fork while a start has moved it.
        let cwd_guard = PROCESS_CWD.lock();
        // SAFETY: the child only runs libcontainer's create (allocation is safe after fork:
        // glibc resets malloc locks in its atfork handlers), writes one message to the pipe and
        // leaves with _exit, never returning into the caller's stack or runtime.
        let forked = unsafe { fork() }.map_err(backend);
        drop(cwd_guard);
        match forked? {
            ForkResult::Child => {
                drop(rd);
                if own_group {
                    // SAFETY: setpgid(0, 0) only moves this new child into its own process
                    // group, so a timeout can kill it with everything it started (hooks).
                    unsafe { libc::setpgid(0, 0) };
                }
                // Drop every descriptor inherited from the (multi-threaded) caller except
                // stdio, the answer pipe and the container's stdio: otherwise the container
                // init, which waits for `start` before it execs, holds them too, e.g. a file
                // another thread is writing, so that executing that file elsewhere fails
                // with ETXTBSY.
                let mut keep = vec![wr.as_raw_fd()];
                if let Some((i, o, e)) = &stdio {
                    keep.extend([i.as_raw_fd(), o.as_raw_fd(), e.as_raw_fd()]);
                }
                close_inherited_fds(&keep);
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let mut b = ContainerBuilder::new(id.to_string(), SyscallType::default())
                        .with_root_path(root.clone())
                        .map_err(|e| e.to_string())?;
                    if let Some((i, o, e)) = stdio {
                        b = b.with_stdin(i).with_stdout(o).with_stderr(e);
                    }
                    let c = b
                        .validate_id()
                        .map_err(|e| e.to_string())?
                        .as_init(&bundle)
                        .with_systemd(false)
                        .with_detach(true)
                        .build()
                        .map_err(|e| e.to_string())?;
                    c.pid()
                        .map(|p| p.as_raw())
                        .ok_or_else(|| "no init pid".to_string())
                }));
                // One line: the container init inherits the pipe until it execs, so the reader
                // cannot wait for EOF.
                let msg = match r {
                    Ok(Ok(pid)) => format!("ok {pid}\n"),
                    Ok(Err(e)) => format!("err {}\n", e.replace('\n', " ")),
                    Err(_) => "err panic in create\n".to_string(),
                };
                let mut f = std::fs::File::from(wr);
                let _ = f.write_all(msg.as_bytes());
                drop(f);
                // SAFETY: _exit ends the forked child without running the parent's destructors.
                unsafe { libc::_exit(0) }
            }
            ForkResult::Parent { child } => {
                drop(wr);
                drop(stdio);
                let result = self.await_helper(child, rd, own_group);
                match result {
                    Ok(pid) => {
                        self.spawn_reaper(id, pid);
                        Ok(())
                    }
                    Err(e) => {
                        // Best effort: remove whatever the helper left.
                        if let Ok(mut c) = Container::load(root.join(id)) {
                            let _ = c.delete(true);
                        }
                        let _ = std::fs::remove_dir_all(root.join(id));
                        Err(e)
                    }
                }
            }
        }
    }

    /// Reads the helper's answer and reaps it, killing it after the timeout.
    fn await_helper(&self, child: Pid, rd: OwnedFd, own_group: bool) -> Result<i32> {
        let deadline = Instant::now() + self.timeout;
        let mut msg = Vec::new();
        let mut f = std::fs::File::from(rd);
        let mut timed_out = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                timed_out = true;
                break;
            }
            let mut pfd = libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = i32::try_from(left.as_millis().min(1000)).unwrap_or(1000);
            // SAFETY: one valid pollfd on the stack, count 1, bounded timeout.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(backend(e));
            }
            if n == 0 {
                continue;
            }
            let mut buf = [0u8; 4096];
            let r = f.read(&mut buf).map_err(backend)?;
            if r == 0 {
                break;
            }
            msg.extend_from_slice(&buf[..r]);
            if msg.contains(&b'\n') || msg.len() > 64 * 1024 {
                break;
            }
        }
        if timed_out {
            if own_group {
                let _ = nix_kill(Pid::from_raw(-child.as_raw()), NixSignal::SIGKILL);
            }
            let _ = nix_kill(child, NixSignal::SIGKILL);
        }
        // The helper exits right after writing; reap it (bounded by the kill above).
        let _ = waitpid(child, None);
        if timed_out {
            return Err(Error::Timeout {
                what: "container create".into(),
                after: self.timeout,
            });
        }
        let text = String::from_utf8_lossy(&msg);
        let text = text.lines().next().unwrap_or_default();
        if let Some(pid) = text.strip_prefix("ok ") {
            pid.trim().parse::<i32>().map_err(backend)
        } else if let Some(e) = text.strip_prefix("err ") {
            Err(backend(e))
        } else {
            Err(backend("create helper exited without an answer"))
        }
    }

    fn spawn_reaper(&self, id: &str, pid: i32) {
        let exits = self.exits.clone();
        let id = id.to_string();
        lock(&exits).insert(id.clone(), None);
        let _ = std::thread::Builder::new()
            .name(format!("reap-{pid}"))
            .spawn(move || loop {
                match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::__WALL)) {
                    Ok(ws) => {
                        if let Some(code) = exit_code_of(ws) {
                            lock(&exits).insert(id, Some(code));
                            return;
                        }
                    }
                    Err(nix::errno::Errno::EINTR) => continue,
                    // Not our child (subreaper unavailable): the state falls back to /proc.
                    Err(_) => {
                        lock(&exits).remove(&id);
                        return;
                    }
                }
            });
    }

    /// Exit code of a stopped container, when this process reaped it.
    pub fn exit_code(&self, id: &str) -> Option<i32> {
        lock(&self.exits).get(id).copied().flatten()
    }
}

#[async_trait]
impl OciRuntime for YoukiRuntime {
    fn name(&self) -> &'static str {
        "youki"
    }

    async fn create(&self, id: &str, bundle: &Bundle) -> Result<()> {
        validate_container_id(id)?;
        let Bundle::OciRuntime { path } = bundle else {
            return Err(Error::UnsupportedBundle {
                runtime: "youki".into(),
                reason: format!("expects an OCI runtime bundle, got {}", bundle.kind()),
            });
        };
        transition(None, LifecycleOp::Create)?;
        let me = YoukiRuntime {
            root: self.root.clone(),
            stdio: self.stdio,
            timeout: self.timeout,
            exits: self.exits.clone(),
        };
        let id = id.to_string();
        let path = path.clone();
        tokio::task::spawn_blocking(move || me.create_blocking(&id, &path))
            .await
            .map_err(backend)?
    }

    async fn start(&self, id: &str) -> Result<()> {
        let c = self.load(id)?;
        transition(Some(self.current_status(id, &c)), LifecycleOp::Start)?;
        let pid = c.pid();
        let dir = self.root.join(id);
        let task = tokio::task::spawn_blocking(move || {
            let mut c = load_container(dir)?;
            let _cwd = PROCESS_CWD.lock();
            c.start().map_err(backend)
        });
        match tokio::time::timeout(self.timeout, task).await {
            Ok(r) => r.map_err(backend)?,
            Err(_) => {
                if let Some(p) = pid {
                    let _ = nix_kill(Pid::from_raw(p.as_raw()), NixSignal::SIGKILL);
                }
                Err(Error::Timeout {
                    what: format!("start of {id}"),
                    after: self.timeout,
                })
            }
        }
    }

    async fn state(&self, id: &str) -> Result<ContainerState> {
        let c = self.load(id)?;
        let status = self.current_status(id, &c);
        let pid = match status {
            ContainerStatus::Created | ContainerStatus::Running => c.pid().map(|p| p.as_raw()),
            _ => None,
        };
        let mut st = ContainerState::new(id, status, pid, c.bundle().clone());
        if let Some(code) = self.exit_code(id) {
            st.annotations
                .insert("magikrun.exit_code".into(), code.to_string());
        }
        Ok(st)
    }

    async fn kill(&self, id: &str, signal: Signal) -> Result<()> {
        let mut c = self.load(id)?;
        transition(Some(self.current_status(id, &c)), LifecycleOp::Kill)?;
        let sig = libcontainer::signal::Signal::try_from(signal.number()).map_err(backend)?;
        c.kill(sig, false).map_err(backend)
    }

    async fn captured_output(&self, id: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.load(id)?;
        if self.stdio != StdioMode::Capture {
            return Ok(None);
        }
        let (out, err) = self.log_paths(id);
        let read = |p: &Path| {
            std::fs::read(p).or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(Vec::new())
                } else {
                    Err(Error::io(p, e))
                }
            })
        };
        Ok(Some((read(&out)?, read(&err)?)))
    }

    async fn delete(&self, id: &str) -> Result<()> {
        let c = self.load(id)?;
        let status = self.current_status(id, &c);
        transition(Some(status), LifecycleOp::Delete)?;
        let dir = self.root.join(id);
        let force = status != ContainerStatus::Stopped;
        tokio::task::spawn_blocking(move || {
            let mut c = load_container(dir)?;
            c.delete(force).map_err(backend)
        })
        .await
        .map_err(backend)??;
        let (out, err) = self.log_paths(id);
        let _ = std::fs::remove_file(out);
        let _ = std::fs::remove_file(err);
        lock(&self.exits).remove(id);
        Ok(())
    }
}

/// Closes every descriptor above 2 that is not in `keep` (read from `/proc/self/fd`). Used in
/// the freshly forked helper, which holds copies of all the caller's descriptors.
fn close_inherited_fds(keep: &[std::os::fd::RawFd]) {
    let Ok(rd) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<std::os::fd::RawFd> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: closes a descriptor number this single-threaded child inherited; nothing
            // in the child uses it afterwards (the kept ones are excluded, the directory
            // iterator is already dropped, so a stale number only yields EBADF).
            unsafe { libc::close(fd) };
        }
    }
}

/// Root only, cgroup v1: creates the directory `magikrun-<uid>` under every mounted v1 controller
/// (each hierarchy once) and gives it to `uid:gid`, so that user's rootless containers can create
/// their cgroups inside it (see [`crate::builder::make_rootless`]). The cpuset directory gets
/// its parent's `cpuset.cpus`/`cpuset.mems`. Idempotent. Returns the directories.
pub fn delegate_cgroups_v1(uid: u32, gid: u32) -> Result<Vec<PathBuf>> {
    let name = crate::platform::delegated_cgroup_name(uid);
    let mut out = Vec::new();
    for hierarchy in v1_hierarchies() {
        let dir = hierarchy.join(&name);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(&dir, e)),
        }
        for f in ["cpuset.cpus", "cpuset.mems"] {
            let parent = hierarchy.join(f);
            let own = dir.join(f);
            if parent.exists() {
                let have = std::fs::read_to_string(&own).map_err(|e| Error::io(&own, e))?;
                if have.trim().is_empty() {
                    let v = std::fs::read_to_string(&parent).map_err(|e| Error::io(&parent, e))?;
                    std::fs::write(&own, v.trim()).map_err(|e| Error::io(&own, e))?;
                }
            }
        }
        nix::unistd::chown(
            &dir,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .map_err(|e| Error::io(&dir, e.into()))?;
        out.push(dir);
    }
    if out.is_empty() {
        return Err(backend(
            "no cgroup v1 controller is mounted under /sys/fs/cgroup",
        ));
    }
    Ok(out)
}

/// Root only: removes the directories [`delegate_cgroups_v1`] made for `uid` (they must hold no
/// container cgroups any more). Missing ones are fine.
pub fn remove_delegated_cgroups_v1(uid: u32) -> Result<()> {
    let name = crate::platform::delegated_cgroup_name(uid);
    for hierarchy in v1_hierarchies() {
        let dir = hierarchy.join(&name);
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&dir, e)),
        }
    }
    Ok(())
}

/// The mounted cgroup v1 hierarchies (a combined mount such as `cpu,cpuacct` once).
fn v1_hierarchies() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for c in crate::platform::V1_CONTROLLERS {
        let mount = Path::new("/sys/fs/cgroup").join(c);
        let is_v1 = nix::sys::statfs::statfs(&mount)
            .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP_SUPER_MAGIC)
            .unwrap_or(false);
        if !is_v1 {
            continue;
        }
        if let Ok(real) = std::fs::canonicalize(&mount) {
            if !out.contains(&real) {
                out.push(real);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        let p = Pid::from_raw(1);
        assert_eq!(exit_code_of(WaitStatus::Exited(p, 3)), Some(3));
        assert_eq!(
            exit_code_of(WaitStatus::Signaled(p, NixSignal::SIGKILL, false)),
            Some(137)
        );
        assert_eq!(exit_code_of(WaitStatus::StillAlive), None);
    }

    #[test]
    fn status_mapping() {
        assert_eq!(map_status(LcStatus::Created), ContainerStatus::Created);
        assert_eq!(map_status(LcStatus::Paused), ContainerStatus::Running);
        assert_eq!(map_status(LcStatus::Stopped), ContainerStatus::Stopped);
        assert_eq!(map_status(LcStatus::Creating), ContainerStatus::Creating);
    }

    #[tokio::test]
    async fn unknown_and_invalid_ids() {
        let d = tempfile::tempdir().unwrap();
        let rt = YoukiRuntime::new(d.path());
        assert!(matches!(
            rt.state("nope").await,
            Err(Error::ContainerNotFound(_))
        ));
        assert!(matches!(
            rt.start("../x").await,
            Err(Error::InvalidContainerId { .. })
        ));
        let wasm = Bundle::Wasm {
            module: "/x.wasm".into(),
            wasi: Default::default(),
        };
        assert!(matches!(
            rt.create("a", &wasm).await,
            Err(Error::UnsupportedBundle { .. })
        ));
        let missing = Bundle::OciRuntime {
            path: d.path().join("none"),
        };
        assert!(rt.create("a", &missing).await.is_err());
    }
}
