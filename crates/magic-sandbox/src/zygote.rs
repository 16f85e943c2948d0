//! Starting a zygote (one per controller version) and asking it for children.
//!
//! Owns: the zygote's process (created with `clone` into new mount, PID, IPC and UTS
//! namespaces, then `setns` into the shared empty network namespace), its read-only root
//! (a tmpfs holding only read-only binds of the Python install, `/usr`, four device nodes, the
//! SDK and the package), its capability bounding set, no_new_privs, its seccomp filter, its
//! control socket, and each child's handshake (pid → cgroup → go). Must never: allocate,
//! take a lock or call a libc wrapper that acts on all threads (the set*id family: use the raw
//! system call) between `clone` and `execve` (the runtime is multi-threaded), leave a runtime
//! descriptor open in the zygote beyond its control socket and stderr, or signal anything but
//! a child's own slot.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};

use crate::cgroup::{Limits, Slot};
use crate::{Sandbox, SandboxError};

/// The zygote program (Python), passed with `-c`.
pub const ZYGOTE_PY: &str = include_str!("zygote.py");
/// Where the SDK appears inside the sandbox.
pub const SDK_MOUNT: &str = "/magic/sdk";
/// Where the controller package appears inside the sandbox.
pub const PKG_MOUNT: &str = "/magic/pkg";
/// Where the private tmpfs of an execution is mounted (only when `fs:temp` is declared).
pub const TEMP_MOUNT: &str = "/tmp";
/// How long a zygote may take to become ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a child may take to say hello.
pub const CHILD_TIMEOUT: Duration = Duration::from_secs(5);

/// Capabilities the zygote keeps (to prepare children); children drop them all.
const KEEP_CAPS: [i32; 3] = [
    6,  /* SETGID */
    7,  /* SETUID */
    21, /* SYS_ADMIN */
];

/// What a zygote is for.
#[derive(Debug, Clone)]
pub struct ZygoteSpec {
    /// The controller package (mounted read-only at [`PKG_MOUNT`]).
    pub package_dir: PathBuf,
    /// The `fs:temp` size in bytes; `None` = no `/tmp` at all.
    pub temp_size: Option<u64>,
    /// Per-child limits.
    pub limits: Limits,
}

/// Every string and descriptor the cloned child needs, prepared before `clone`.
struct Plan {
    root: CString,
    dirs: Vec<CString>,
    files: Vec<CString>,
    symlinks: Vec<(CString, CString)>,
    binds: Vec<(CString, CString, bool)>,
    python: CString,
    _argv_store: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    _envp_store: Vec<CString>,
    envp: Vec<*const libc::c_char>,
    dot: CString,
    slash: CString,
    tmpfs: CString,
    root_opts: CString,
    dev_null: CString,
    hostname: &'static [u8],
    netns: RawFd,
    sync_w: RawFd,
    sync_r: RawFd,
    ctl: RawFd,
    stderr: RawFd,
    filter: Vec<u8>,
}

fn cstr(p: impl AsRef<[u8]>) -> Result<CString, SandboxError> {
    CString::new(p.as_ref().to_vec())
        .map_err(|_| SandboxError::Setup("a path contains a NUL byte".into()))
}

fn path_c(p: &Path) -> Result<CString, SandboxError> {
    cstr(p.as_os_str().as_bytes())
}

/// Every ancestor directory of `inner` (absolute, inside the new root), shallowest first.
pub fn ancestors(inner: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = inner
        .ancestors()
        .filter(|a| a.as_os_str().len() > 1)
        .map(Path::to_path_buf)
        .collect();
    out.reverse();
    out
}

impl Plan {
    fn new(
        sb: &Sandbox,
        spec: &ZygoteSpec,
        ctl: RawFd,
        stderr: RawFd,
    ) -> Result<Plan, SandboxError> {
        let root = sb.root_dir.clone();
        let mut dir_set: Vec<PathBuf> = Vec::new();
        let mut add_dirs = |p: &Path| {
            for a in ancestors(p) {
                if !dir_set.contains(&a) {
                    dir_set.push(a);
                }
            }
        };
        let mut binds = Vec::new();
        let mut bind_dirs: Vec<(PathBuf, PathBuf)> = Vec::new();
        for p in &sb.python_binds {
            bind_dirs.push((p.clone(), p.clone()));
        }
        bind_dirs.push((sb.sdk_dir.clone(), PathBuf::from(SDK_MOUNT)));
        bind_dirs.push((spec.package_dir.clone(), PathBuf::from(PKG_MOUNT)));
        for (src, inner) in &bind_dirs {
            add_dirs(inner);
            binds.push((path_c(src)?, path_c(&join_inner(&root, inner))?, false));
        }
        add_dirs(Path::new("/dev"));
        if spec.temp_size.is_some() {
            add_dirs(Path::new(TEMP_MOUNT));
        }
        let mut files = Vec::new();
        for dev in ["null", "zero", "urandom", "random"] {
            let inner = PathBuf::from("/dev").join(dev);
            files.push(path_c(&join_inner(&root, &inner))?);
            binds.push((path_c(&inner)?, path_c(&join_inner(&root, &inner))?, true));
        }
        // merged-/usr hosts: /lib64 and /lib are links into /usr, which is bound read-only
        let mut symlinks = Vec::new();
        for (link, target) in [
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
            ("bin", "usr/bin"),
        ] {
            if !dir_set
                .iter()
                .any(|d| d == Path::new("/").join(link).as_path())
            {
                symlinks.push((cstr(target)?, path_c(&root.join(link))?));
            }
        }
        let dirs = dir_set
            .iter()
            .map(|d| path_c(&join_inner(&root, d)))
            .collect::<Result<Vec<_>, _>>()?;
        let (rl_as, rl_nproc) = if sb.cgroups.is_some() {
            (0, 0)
        } else {
            (spec.limits.memory, 1024)
        };
        let argv_store = vec![
            path_c(&sb.python)?,
            cstr("-I")?,
            cstr("-S")?,
            cstr("-B")?,
            cstr("-c")?,
            cstr(ZYGOTE_PY)?,
            cstr(SDK_MOUNT)?,
            cstr(PKG_MOUNT)?,
            cstr(spec.temp_size.unwrap_or(0).to_string())?,
            cstr(sb.uid.to_string())?,
            cstr(sb.gid.to_string())?,
            cstr(rl_as.to_string())?,
            cstr(rl_nproc.to_string())?,
        ];
        let mut argv: Vec<*const libc::c_char> = argv_store.iter().map(|c| c.as_ptr()).collect();
        argv.push(std::ptr::null());
        let envp_store = vec![
            cstr("PATH=/usr/bin:/bin")?,
            cstr("LANG=C.UTF-8")?,
            cstr("PYTHONDONTWRITEBYTECODE=1")?,
            cstr("PYTHONHASHSEED=random")?,
        ];
        let mut envp: Vec<*const libc::c_char> = envp_store.iter().map(|c| c.as_ptr()).collect();
        envp.push(std::ptr::null());
        Ok(Plan {
            root: path_c(&root)?,
            dirs,
            files,
            symlinks,
            binds,
            python: path_c(&sb.python)?,
            _argv_store: argv_store,
            argv,
            _envp_store: envp_store,
            envp,
            dot: cstr(".")?,
            slash: cstr("/")?,
            tmpfs: cstr("tmpfs")?,
            root_opts: cstr("size=1m,nr_inodes=512,mode=0755")?,
            dev_null: cstr("/dev/null")?,
            hostname: b"magic-sandbox",
            netns: sb.netns.as_raw_fd(),
            sync_w: -1,
            sync_r: -1,
            ctl,
            stderr,
            filter: sb.zygote_bpf.clone(),
        })
    }
}

fn join_inner(root: &Path, inner: &Path) -> PathBuf {
    root.join(inner.strip_prefix("/").unwrap_or(inner))
}

/// Runs in the cloned child: only raw system calls on prepared data, then `execve`.
/// Returns the failing step on error (the caller `_exit`s with it).
///
/// # Safety
/// Must only be called in a freshly cloned child of this process, with `p` fully prepared.
unsafe fn child_setup(p: &Plan) -> i32 {
    let null: *const libc::c_char = std::ptr::null();
    let step = |ok: bool, n: i32| if ok { 0 } else { n };
    macro_rules! check {
        ($e:expr, $n:expr) => {
            if step($e, $n) != 0 {
                return $n;
            }
        };
    }
    check!(libc::setns(p.netns, libc::CLONE_NEWNET) == 0, 1);
    check!(
        libc::mount(
            null,
            p.slash.as_ptr(),
            null,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null()
        ) == 0,
        2
    );
    check!(
        libc::mount(
            p.tmpfs.as_ptr(),
            p.root.as_ptr(),
            p.tmpfs.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            p.root_opts.as_ptr().cast()
        ) == 0,
        3
    );
    for d in &p.dirs {
        check!(libc::mkdir(d.as_ptr(), 0o755) == 0, 4);
    }
    for f in &p.files {
        let fd = libc::open(
            f.as_ptr(),
            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
            0o644,
        );
        check!(fd >= 0, 5);
        libc::close(fd);
    }
    for (target, link) in &p.symlinks {
        check!(libc::symlink(target.as_ptr(), link.as_ptr()) == 0, 6);
    }
    for (src, dst, dev) in &p.binds {
        check!(
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                null,
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null()
            ) == 0,
            7
        );
        let mut flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID;
        if !*dev {
            flags |= libc::MS_NODEV;
        }
        check!(
            libc::mount(null, dst.as_ptr(), null, flags, std::ptr::null()) == 0,
            8
        );
    }
    check!(libc::chdir(p.root.as_ptr()) == 0, 9);
    check!(
        libc::syscall(libc::SYS_pivot_root, p.dot.as_ptr(), p.dot.as_ptr()) == 0,
        10
    );
    check!(libc::umount2(p.dot.as_ptr(), libc::MNT_DETACH) == 0, 11);
    check!(libc::chdir(p.slash.as_ptr()) == 0, 12);
    check!(
        libc::mount(
            null,
            p.slash.as_ptr(),
            null,
            libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            std::ptr::null()
        ) == 0,
        13
    );
    check!(
        libc::sethostname(p.hostname.as_ptr().cast(), p.hostname.len()) == 0,
        14
    );
    // Everything that needed host root is done: enter a new user namespace in which the
    // zygote is root (host uid = the sandbox's id base) and the children's 65534 is host
    // base + 65534. The runtime writes the maps, then lets us continue.
    check!(libc::unshare(libc::CLONE_NEWUSER) == 0, 22);
    let mut b = 0u8;
    check!(
        libc::write(p.sync_w, b"u".as_ptr().cast(), 1) == 1
            && libc::read(p.sync_r, (&mut b as *mut u8).cast(), 1) == 1,
        23
    );
    // Raw system calls, not glibc's wrappers: those broadcast the change to every thread
    // glibc believes exists (`__nptl_setxid`) and wait on a futex for a thread that was being
    // created when this process was cloned, which never comes (the runtime starts threads all
    // the time, e.g. blocking-pool threads while a dead zygote's spares are released) — the
    // restarted zygote then hung before `execve`. Here only the calling thread exists.
    check!(
        libc::syscall(libc::SYS_setresgid, 0u32, 0u32, 0u32) == 0
            && libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) == 0
            && libc::syscall(libc::SYS_setresuid, 0u32, 0u32, 0u32) == 0,
        24
    );
    for cap in 0..64 {
        if !KEEP_CAPS.contains(&cap) {
            libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
        }
    }
    let core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    libc::setrlimit(libc::RLIMIT_CORE, &core);
    check!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0, 15);
    // Descriptors: 0/1 = /dev/null, 2 = the runtime's stderr pipe, 3 = control socket.
    let ctl = libc::fcntl(p.ctl, libc::F_DUPFD_CLOEXEC, 10);
    let err = libc::fcntl(p.stderr, libc::F_DUPFD_CLOEXEC, 10);
    check!(ctl >= 0 && err >= 0, 16);
    let devnull = libc::open(p.dev_null.as_ptr(), libc::O_RDWR);
    check!(devnull >= 0, 17);
    check!(
        libc::dup2(devnull, 0) == 0
            && libc::dup2(devnull, 1) == 1
            && libc::dup2(err, 2) == 2
            && libc::dup2(ctl, 3) == 3,
        18
    );
    check!(
        libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32) == 0,
        19
    );
    let prog = libc::sock_fprog {
        len: (p.filter.len() / 8) as u16,
        filter: p.filter.as_ptr() as *mut libc::sock_filter,
    };
    check!(
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const _,
            0,
            0
        ) == 0,
        20
    );
    libc::execve(p.python.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr());
    21
}

/// Pure: a tmpfs with no free block or no free inode is full.
pub fn temp_is_full(blocks_free: u64, files_free: u64) -> bool {
    blocks_free == 0 || files_free == 0
}

/// Describe a zygote start failure step.
pub fn step_name(code: i32) -> &'static str {
    match code {
        1 => "joining the network namespace",
        2 => "making mounts private",
        3 => "mounting the root tmpfs",
        4 => "creating root directories",
        5 => "creating device mount points",
        6 => "creating /usr links",
        7 => "bind-mounting",
        8 => "remounting a bind read-only",
        9..=12 => "pivot_root",
        13 => "remounting the root read-only",
        14 => "setting the host name",
        15 => "setting no_new_privs",
        16..=19 => "arranging descriptors",
        20 => "installing the seccomp filter",
        21 => "executing Python",
        22 => "entering a user namespace",
        23 => "waiting for the user namespace maps",
        24 => "becoming root of the user namespace",
        _ => "unknown step",
    }
}

/// A running zygote.
pub struct Zygote {
    pid: i32,
    ctl: AsyncFd<OwnedFd>,
    send_lock: Mutex<()>,
    alive: AtomicBool,
    /// How long the zygote took to become ready.
    pub ready_in: Duration,
    spec: ZygoteSpec,
}

impl std::fmt::Debug for Zygote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zygote").field("pid", &self.pid).finish()
    }
}

/// One pre-forked or on-demand child, in its cgroup, waiting for its `execute` frame.
#[derive(Debug)]
pub struct Child {
    /// The runtime's end of the execution socket.
    pub stream: tokio::net::UnixStream,
    /// The child's process and cgroup slot.
    pub confined: Confined,
}

impl Child {
    /// Whether the child is gone (its end of the socket closed or it sent something
    /// unexpected) while it waited for its `execute` frame. Does not block.
    pub fn is_gone(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.stream.as_raw_fd(),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: poll on one descriptor we own, with a zero timeout.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n != 0
    }

    /// Separate the socket from the process handle.
    pub fn split(self) -> (tokio::net::UnixStream, Confined) {
        (self.stream, self.confined)
    }
}

/// A child's host pid and cgroup slot: what is killed and pooled when its execution ends.
#[derive(Debug)]
pub struct Confined {
    /// The child's host pid.
    pub pid: i32,
    pub(crate) slot: Option<Slot>,
    /// The child's private `/tmp` (a directory descriptor it sent with its hello), when
    /// `fs:temp` is declared: only ever `fstatvfs`ed, to see whether it filled up.
    pub(crate) temp: Option<OwnedFd>,
}

impl Confined {
    /// SIGKILL the child and everything it started (its cgroup slot), never the zygote.
    /// Does not wait: [`crate::Sandbox::release`] waits until the slot is empty.
    pub fn kill(&self) {
        match &self.slot {
            Some(s) => {
                s.signal_all();
            }
            None => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(self.pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    /// Whether the kernel OOM-killed something in the child's cgroup.
    pub fn oom_killed(&self) -> bool {
        self.slot.as_ref().is_some_and(Slot::oom_killed)
    }

    /// Whether the execution filled its private `/tmp` (no free block or no free inode left):
    /// the runtime's own observation of E3003, whatever the controller did with the error.
    pub fn temp_full(&self) -> bool {
        self.temp.as_ref().is_some_and(|fd| {
            nix::sys::statvfs::fstatvfs(fd)
                .is_ok_and(|st| temp_is_full(st.blocks_free(), st.files_free()))
        })
    }

    /// Whether the child is confined by a cgroup (false: rlimits only).
    pub fn in_cgroup(&self) -> bool {
        self.slot.is_some()
    }
}

impl Zygote {
    /// Start a zygote for `spec` and wait until it is ready.
    pub async fn start(sb: &Arc<Sandbox>, spec: ZygoteSpec) -> Result<Arc<Zygote>, SandboxError> {
        let started = Instant::now();
        let (ours, theirs) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::SeqPacket,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| SandboxError::Setup(format!("control socket: {e}")))?;
        let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| SandboxError::Setup(format!("stderr pipe: {e}")))?;
        let mut plan = Plan::new(sb, &spec, theirs.as_raw_fd(), err_w.as_raw_fd())?;
        let pipe = || {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| SandboxError::Setup(format!("sync pipe: {e}")))
        };
        let ((up_r, up_w), (down_r, down_w)) = (pipe()?, pipe()?);
        plan.sync_w = up_w.as_raw_fd();
        plan.sync_r = down_r.as_raw_fd();
        let flags =
            libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
        // SAFETY: a raw clone without CLONE_VM behaves like fork. In the child only
        // `child_setup` runs (raw system calls on memory prepared above, no allocation, no
        // locks), followed by execve or _exit.
        let pid = unsafe {
            let r = libc::syscall(
                libc::SYS_clone,
                (flags | libc::SIGCHLD) as libc::c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            );
            if r == 0 {
                let code = child_setup(&plan);
                libc::_exit(100 + code);
            }
            r as i32
        };
        drop(theirs);
        drop(err_w);
        drop(plan);
        drop(up_w);
        drop(down_r);
        if pid < 0 {
            return Err(SandboxError::Setup(format!(
                "clone: {}",
                std::io::Error::last_os_error()
            )));
        }
        if let Err(e) = write_id_maps(pid, &up_r, &down_w, sb.id_bases) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Err(SandboxError::Setup(format!("{e} ({})", reap(pid))));
        }
        spawn_stderr_logger(err_r, pid);
        // SAFETY: the AsyncFd owns the descriptor and nothing else closes it while registered.
        let ctl = unsafe { AsyncFd::register(ours) }
            .map_err(|e| SandboxError::Setup(format!("control: {e}")))?;
        set_nonblocking(ctl.get_ref().as_raw_fd());
        let z = Zygote {
            pid,
            ctl,
            send_lock: Mutex::new(()),
            alive: AtomicBool::new(true),
            ready_in: Duration::ZERO,
            spec,
        };
        let ready = tokio::time::timeout(START_TIMEOUT, async {
            z.send(&sb.child_bpf, &[])?;
            let mut buf = [0u8; 8];
            let n = z
                .ctl
                .async_io(Interest::READABLE, |fd| {
                    nix::unistd::read(fd, &mut buf).map_err(std::io::Error::from)
                })
                .await
                .map_err(|e| SandboxError::Setup(format!("zygote control: {e}")))?;
            if n == 1 && buf[0] == b'R' {
                Ok(())
            } else {
                Err(SandboxError::Setup(format!(
                    "the zygote exited while starting ({})",
                    reap(pid)
                )))
            }
        })
        .await;
        match ready {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                z.terminate();
                return Err(e);
            }
            Err(_) => {
                z.terminate();
                return Err(SandboxError::Setup(
                    "the zygote did not become ready in time".into(),
                ));
            }
        }
        let mut z = z;
        z.ready_in = started.elapsed();
        Ok(Arc::new(z))
    }

    fn send(&self, data: &[u8], fds: &[RawFd]) -> Result<(), SandboxError> {
        let _guard = self.send_lock.lock();
        let iov = [IoSlice::new(data)];
        let cmsgs: Vec<ControlMessage> = if fds.is_empty() {
            vec![]
        } else {
            vec![ControlMessage::ScmRights(fds)]
        };
        sendmsg::<()>(
            self.ctl.get_ref().as_raw_fd(),
            &iov,
            &cmsgs,
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(|e| {
            self.alive.store(false, Ordering::SeqCst);
            SandboxError::ZygoteGone(format!("sending to the zygote: {e}"))
        })?;
        Ok(())
    }

    /// Whether the zygote is believed alive.
    pub fn is_alive(&self) -> bool {
        if !self.alive.load(Ordering::SeqCst) {
            return false;
        }
        // SAFETY: kill with signal 0 only checks existence.
        let exists = unsafe { libc::kill(self.pid, 0) } == 0;
        let zombie = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true);
        if !exists || zombie {
            self.alive.store(false, Ordering::SeqCst);
        }
        exists && !zombie
    }

    /// The zygote's host pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// What this zygote was started for.
    pub fn spec(&self) -> &ZygoteSpec {
        &self.spec
    }

    /// Ask for a fresh child; wait until it exists, move it into a cgroup slot with `limits`,
    /// then let it load the controller. The returned child waits for its `execute` frame.
    pub async fn fork_child(&self, sb: &Sandbox) -> Result<Child, SandboxError> {
        // The slot and its limits first: on v1 the child moves itself in (see
        // `Slot::self_attach_fds`) before it says hello.
        let mut slot = match &sb.cgroups {
            Some(pool) => {
                let mut slot = pool.take()?;
                if let Err(e) = slot.set_limits(&self.spec.limits) {
                    pool.give_back(slot);
                    return Err(e);
                }
                Some(slot)
            }
            None => None,
        };
        let give_back = |slot: Option<Slot>| {
            if let (Some(s), Some(pool)) = (slot, &sb.cgroups) {
                pool.give_back(s);
            }
        };
        let attach = slot.as_mut().map(Slot::self_attach_fds).unwrap_or_default();
        let (ours, theirs) = match std::os::unix::net::UnixStream::pair() {
            Ok(pair) => pair,
            Err(e) => {
                give_back(slot);
                return Err(SandboxError::Setup(format!("execution socket: {e}")));
            }
        };
        let prepared = setsockopt(&ours, sockopt::PassCred, &true)
            .map_err(|e| SandboxError::Setup(format!("SO_PASSCRED: {e}")))
            .and_then(|()| {
                ours.set_nonblocking(true)
                    .map_err(|e| SandboxError::Setup(format!("execution socket: {e}")))
            })
            .and_then(|()| {
                let mut fds = vec![theirs.as_fd().as_raw_fd()];
                fds.extend(&attach);
                self.send(b"F", &fds)
            });
        drop(theirs);
        if let Err(e) = prepared {
            give_back(slot);
            return Err(e);
        }
        let stream = match tokio::net::UnixStream::from_std(ours) {
            Ok(s) => s,
            Err(e) => {
                give_back(slot);
                return Err(SandboxError::Setup(format!("execution socket: {e}")));
            }
        };
        let hello = tokio::time::timeout(CHILD_TIMEOUT, async {
            stream
                .async_io(Interest::READABLE, || {
                    let mut buf = [0u8; 1];
                    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
                    let mut space = nix::cmsg_space!(nix::sys::socket::UnixCredentials, [RawFd; 1]);
                    let msg = recvmsg::<()>(
                        stream.as_raw_fd(),
                        &mut iov,
                        Some(&mut space),
                        MsgFlags::MSG_CMSG_CLOEXEC,
                    )
                    .map_err(std::io::Error::from)?;
                    let (mut pid, mut temp) = (None, None);
                    for c in msg.cmsgs().map_err(std::io::Error::from)? {
                        match c {
                            ControlMessageOwned::ScmCredentials(cred) => pid = Some(cred.pid()),
                            ControlMessageOwned::ScmRights(fds) => {
                                for fd in fds {
                                    // SAFETY: the kernel just gave us this descriptor
                                    // (MSG_CMSG_CLOEXEC); nothing else owns it.
                                    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                                    if temp.is_none() {
                                        temp = Some(owned);
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                    Ok((msg.bytes, pid, temp))
                })
                .await
        })
        .await;
        let (pid, temp) = match hello {
            Ok(Ok((1, Some(pid), temp))) if pid > 1 => (pid, temp),
            Ok(Ok(_)) | Ok(Err(_)) => {
                give_back(slot);
                self.is_alive();
                return Err(SandboxError::ZygoteGone(
                    "the zygote's child ended before it was ready".into(),
                ));
            }
            Err(_) => {
                give_back(slot);
                return Err(SandboxError::Setup(
                    "the zygote's child did not start in time".into(),
                ));
            }
        };
        let _ = setsockopt(&stream, sockopt::PassCred, &false);
        // The child is let go only once it is in its slot in every hierarchy: it moved itself
        // (v1), or the runtime moves it now.
        if let Some(s) = &slot {
            let placed = if !attach.is_empty() && s.holds(pid) {
                Ok(())
            } else {
                s.place(pid)
            };
            if let Err(e) = placed {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                give_back(slot);
                return Err(e);
            }
        }
        let mut child = Child {
            stream,
            confined: Confined { pid, slot, temp },
        };
        if let Err(e) = child.stream.write_all(b"G").await {
            child.confined.kill();
            sb.release(child.confined);
            return Err(SandboxError::ZygoteGone(format!("child vanished: {e}")));
        }
        Ok(child)
    }

    /// Kill the zygote (its PID namespace, so every child, ends with it) and reap it.
    pub fn terminate(&self) {
        self.alive.store(false, Ordering::SeqCst);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let pid = self.pid;
        std::thread::spawn(move || reap(pid));
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Default host uid/gid that uid/gid 0 of the sandbox's user namespace maps to (65536 ids),
/// used when neither `MAGIC_SANDBOX_ID_BASE` nor `/etc/subuid`/`/etc/subgid` give a range.
pub const USERNS_HOST_BASE: u32 = 100_000;
/// How many ids the sandbox's user namespace maps.
pub const USERNS_IDS: u32 = 65_536;

/// `uid_map`/`gid_map` content: ids 0..65536 inside → `base`.. on the host.
pub fn id_map(base: u32) -> String {
    format!("0 {base} {USERNS_IDS}\n")
}

/// The first id of a range of at least [`USERNS_IDS`] ids that `/etc/subuid` or
/// `/etc/subgid` (`text`) delegates to the user `name` (or to its numeric `uid`).
pub fn subid_base(text: &str, name: &str, uid: u32) -> Option<u32> {
    let uid = uid.to_string();
    text.lines().find_map(|line| {
        let mut f = line.trim().split(':');
        let (owner, start, count) = (f.next()?, f.next()?, f.next()?);
        if owner != name && owner != uid {
            return None;
        }
        let (start, count) = (
            start.trim().parse::<u32>().ok()?,
            count.trim().parse::<u32>().ok()?,
        );
        (start > 0 && count >= USERNS_IDS && start.checked_add(USERNS_IDS).is_some())
            .then_some(start)
    })
}

/// Check an explicitly configured base: never host root, and the whole range must exist.
pub fn valid_id_base(base: u32) -> Result<u32, String> {
    if base == 0 {
        return Err("0 would map the sandbox's root to host root".into());
    }
    if base.checked_add(USERNS_IDS).is_none() {
        return Err(format!("{base} + {USERNS_IDS} overflows the id space"));
    }
    Ok(base)
}

/// Wait for the cloned child to enter its user namespace, write its maps, let it continue.
fn write_id_maps(pid: i32, up: &OwnedFd, down: &OwnedFd, ids: (u32, u32)) -> Result<(), String> {
    let mut b = [0u8; 1];
    match nix::unistd::read(up, &mut b) {
        Ok(1) => {}
        _ => return Err("the zygote did not reach its user namespace".into()),
    }
    for (file, base) in [("uid_map", ids.0), ("gid_map", ids.1)] {
        std::fs::write(format!("/proc/{pid}/{file}"), id_map(base))
            .map_err(|e| format!("writing {file}: {e}"))?;
    }
    nix::unistd::write(down, b"g").map_err(|e| format!("releasing the zygote: {e}"))?;
    Ok(())
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own; no memory is passed.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// Wait for `pid` and describe how it ended.
fn reap(pid: i32) -> String {
    match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None) {
        Ok(nix::sys::wait::WaitStatus::Exited(_, code)) if code > 100 => {
            format!("setup failed while {}", step_name(code - 100))
        }
        Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => format!("exit status {code}"),
        Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => format!("killed by {sig}"),
        Ok(other) => format!("{other:?}"),
        Err(e) => format!("not waitable: {e}"),
    }
}

/// Most stderr lines logged per zygote per [`STDERR_WINDOW`]; the rest are counted and dropped
/// (a controller may write to descriptor 2 directly).
pub const STDERR_LINES_PER_WINDOW: u32 = 100;
/// The window of [`STDERR_LINES_PER_WINDOW`].
pub const STDERR_WINDOW: Duration = Duration::from_secs(10);

/// Log what the zygote and its children write to stderr (bounded per line and per window).
fn spawn_stderr_logger(fd: OwnedFd, pid: i32) {
    let file = std::fs::File::from(fd);
    tokio::spawn(async move {
        let mut f = tokio::fs::File::from_std(file);
        let mut buf = vec![0u8; 16 * 1024];
        let mut window = Instant::now();
        let (mut logged, mut dropped) = (0u32, 0u64);
        loop {
            match f.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if window.elapsed() > STDERR_WINDOW {
                        if dropped > 0 {
                            tracing::warn!(
                                zygote = pid,
                                event = "sandbox_stderr",
                                dropped,
                                "sandbox stderr lines dropped"
                            );
                        }
                        window = Instant::now();
                        logged = 0;
                        dropped = 0;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]);
                    for line in text.lines().filter(|l| !l.trim().is_empty()) {
                        if logged < STDERR_LINES_PER_WINDOW {
                            logged += 1;
                            let line: String = line.chars().take(2048).collect();
                            tracing::warn!(zygote = pid, event = "sandbox_stderr", "{line}");
                        } else {
                            dropped += 1;
                        }
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_are_shallowest_first() {
        assert_eq!(
            ancestors(Path::new("/root/.pyenv/versions/3.11.7")),
            vec![
                PathBuf::from("/root"),
                PathBuf::from("/root/.pyenv"),
                PathBuf::from("/root/.pyenv/versions"),
                PathBuf::from("/root/.pyenv/versions/3.11.7"),
            ]
        );
        assert!(ancestors(Path::new("/")).is_empty());
    }

    #[test]
    fn the_user_namespace_maps_root_away_from_host_root() {
        assert_eq!(id_map(USERNS_HOST_BASE), "0 100000 65536\n");
        assert_eq!(id_map(231072), "0 231072 65536\n");
        assert!(valid_id_base(0).is_err());
        assert!(valid_id_base(u32::MAX - 10).is_err());
        assert_eq!(valid_id_base(200_000), Ok(200_000));
    }

    #[test]
    fn subordinate_id_ranges() {
        let text = "alice:100000:65536\nroot:231072:65536\n";
        let cases = [
            (text, "root", 0, Some(231072)),
            (text, "alice", 1000, Some(100000)),
            (text, "bob", 1001, None),
            ("0:300000:70000\n", "root", 0, Some(300000)),
            ("root:300000:1000\n", "root", 0, None), // too small
            ("root:0:65536\n", "root", 0, None),     // host root
            ("root:x:65536\n# comment\n", "root", 0, None),
            ("root:4294967000:65536\n", "root", 0, None), // overflows
            ("", "root", 0, None),
        ];
        for (text, name, uid, want) in cases {
            assert_eq!(subid_base(text, name, uid), want, "{text:?} {name}");
        }
    }

    #[test]
    fn a_temp_dir_is_full_without_blocks_or_inodes() {
        assert!(temp_is_full(0, 100));
        assert!(temp_is_full(100, 0));
        assert!(!temp_is_full(1, 1));
    }

    #[test]
    fn failure_steps_are_named() {
        assert_eq!(step_name(20), "installing the seccomp filter");
        assert_eq!(step_name(999), "unknown step");
    }
}
