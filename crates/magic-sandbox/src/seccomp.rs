//! The seccomp policy, written as data: which system calls a sandboxed Python may make, why,
//! and with which argument restrictions.
//!
//! Owns: the two filters. The *zygote filter* is an allowlist installed once, before the zygote
//! execs Python; every child inherits it for free. It still allows the few calls the zygote
//! needs to prepare a child (mount a tmpfs, change uid); the small *child filter* stacked in
//! each child before it runs controller code takes those away again. Must never: allow a call
//! without a reason written next to it, or allow creating an `AF_INET`/`AF_INET6`/raw/packet
//! socket.

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};

use crate::SandboxError;

/// System calls the zygote and every child may make without argument restrictions, each with
/// the reason it is needed. Anything absent is refused with `EPERM` (`clone3` with `ENOSYS`).
pub const ALLOWED: &[(&str, &str)] = &[
    // memory
    ("brk", "malloc"),
    ("mmap", "malloc, dlopen of stdlib extension modules"),
    ("munmap", "free"),
    ("mremap", "realloc of large blocks"),
    ("mprotect", "dlopen relocations, thread stacks"),
    ("madvise", "allocator purge, glibc thread stacks"),
    // files (the root is read-only; only the declared tmpfs is writable)
    ("read", "files and the runtime socket"),
    ("write", "files and the runtime socket"),
    ("readv", "buffered io"),
    ("writev", "buffered io"),
    ("pread64", "zipimport, ld.so"),
    ("pwrite64", "temp files"),
    ("openat", "opening modules and temp files"),
    ("open", "older code paths"),
    ("close", "descriptors"),
    ("close_range", "os.closerange"),
    ("lseek", "files"),
    ("fstat", "files"),
    ("newfstatat", "os.stat, import system"),
    ("stat", "older code paths"),
    ("lstat", "older code paths"),
    ("statx", "os.stat on newer glibc"),
    ("statfs", "shutil.disk_usage on the temp dir"),
    ("fstatfs", "same"),
    ("access", "os.access"),
    ("faccessat", "os.access"),
    ("faccessat2", "os.access"),
    ("readlink", "sys.executable resolution"),
    ("readlinkat", "same"),
    ("getdents64", "os.listdir, os.scandir"),
    ("getcwd", "os.getcwd"),
    ("chdir", "os.chdir"),
    ("fchdir", "os.chdir(fd)"),
    ("fcntl", "O_CLOEXEC and non-blocking flags"),
    ("flock", "file locks on temp files"),
    ("fsync", "temp files"),
    ("fdatasync", "temp files"),
    ("ftruncate", "temp files"),
    ("truncate", "temp files"),
    ("fallocate", "temp files"),
    ("fadvise64", "file reads"),
    ("mkdir", "temp dirs"),
    ("mkdirat", "temp dirs"),
    ("rmdir", "temp dirs"),
    ("unlink", "temp files"),
    ("unlinkat", "temp files"),
    ("rename", "temp files"),
    ("renameat", "temp files"),
    ("renameat2", "temp files"),
    ("link", "temp files"),
    ("linkat", "temp files"),
    ("symlink", "temp files"),
    ("symlinkat", "temp files"),
    ("chmod", "temp files"),
    ("fchmod", "temp files"),
    ("fchmodat", "temp files"),
    ("utimensat", "temp files"),
    ("umask", "tempfile"),
    ("copy_file_range", "shutil.copyfile"),
    ("sendfile", "shutil.copyfile"),
    ("dup", "descriptors"),
    ("dup2", "descriptors"),
    ("dup3", "descriptors"),
    ("pipe", "subprocess-free pipes"),
    ("pipe2", "asyncio self-pipe, selectors"),
    // sockets: AF_UNIX only (see argument rules); no bind/connect/listen/accept at all
    ("sendto", "writing to the runtime socket"),
    ("recvfrom", "reading the runtime socket"),
    ("sendmsg", "writing to the runtime socket"),
    ("recvmsg", "reading the runtime socket"),
    ("sendmmsg", "batched socket io"),
    ("recvmmsg", "batched socket io"),
    ("shutdown", "closing the runtime socket"),
    ("getsockname", "socket.socket(fileno=) probes the family"),
    ("getpeername", "same"),
    ("getsockopt", "socket.socket(fileno=) probes the type"),
    ("setsockopt", "socket options on the runtime socket"),
    // event loop and waiting
    ("poll", "select module"),
    ("ppoll", "select module"),
    ("select", "select module"),
    ("pselect6", "select module, worker watchdog"),
    ("epoll_create", "asyncio selector"),
    ("epoll_create1", "asyncio selector"),
    ("epoll_ctl", "asyncio selector"),
    ("epoll_wait", "asyncio selector"),
    ("epoll_pwait", "asyncio selector"),
    ("epoll_pwait2", "asyncio selector"),
    ("eventfd2", "asyncio on some builds"),
    ("futex", "threads, GIL"),
    ("futex_waitv", "threads"),
    ("set_robust_list", "threads"),
    ("get_robust_list", "threads"),
    ("set_tid_address", "threads"),
    ("rseq", "glibc thread start"),
    ("sched_yield", "threads"),
    ("sched_getaffinity", "os.cpu_count"),
    ("sched_getparam", "os.sched_getparam"),
    ("sched_getscheduler", "os.sched_getscheduler"),
    ("nanosleep", "time.sleep"),
    ("clock_nanosleep", "time.sleep"),
    ("clock_gettime", "time.monotonic without vDSO"),
    ("clock_getres", "time.get_clock_info"),
    ("gettimeofday", "time.time without vDSO"),
    ("time", "time.time without vDSO"),
    ("getitimer", "signal.getitimer"),
    ("setitimer", "signal.setitimer (own process only)"),
    ("alarm", "signal.alarm (own process only)"),
    // signals: handlers and masks of the process itself; sending signals is not allowed
    ("rt_sigaction", "signal handlers"),
    ("rt_sigprocmask", "signal masks, threads"),
    ("rt_sigreturn", "return from a handler"),
    ("rt_sigpending", "signal.sigpending"),
    ("rt_sigtimedwait", "signal.sigtimedwait"),
    ("rt_sigsuspend", "signal.pause"),
    ("sigaltstack", "faulthandler"),
    ("restart_syscall", "interrupted sleeps"),
    // processes: fork is bounded by the cgroup's pids.max; waiting is local
    ("wait4", "os.waitpid"),
    ("waitid", "os.waitid"),
    ("exit", "thread exit"),
    ("exit_group", "process exit"),
    ("getpid", "os.getpid"),
    ("getppid", "os.getppid"),
    ("gettid", "threads"),
    ("getpgid", "os.getpgid"),
    ("getpgrp", "os.getpgrp"),
    ("getsid", "os.getsid"),
    ("getuid", "os.getuid"),
    ("geteuid", "os.geteuid"),
    ("getgid", "os.getgid"),
    ("getegid", "os.getegid"),
    ("getgroups", "os.getgroups"),
    ("getresuid", "os.getresuid"),
    ("getresgid", "os.getresgid"),
    ("getrusage", "resource.getrusage"),
    ("getrlimit", "resource.getrlimit"),
    (
        "setrlimit",
        "lowering limits (raising needs a capability the child lacks)",
    ),
    ("times", "os.times"),
    ("sysinfo", "Python startup"),
    ("uname", "platform, os.uname"),
    ("getcpu", "sched_getcpu"),
    ("getrandom", "os.urandom, hash seeds"),
    ("arch_prctl", "thread-local storage at start"),
    ("membarrier", "glibc"),
    // only the zygote's preparation of a child needs these; the child filter refuses them
    ("setgroups", "zygote: child drops supplementary groups"),
    ("setresuid", "zygote: child becomes the sandbox uid"),
    ("setresgid", "zygote: child becomes the sandbox gid"),
    ("setuid", "zygote: same"),
    ("setgid", "zygote: same"),
    ("capget", "glibc setuid broadcast"),
    ("mount", "zygote: child mounts its private tmpfs at /tmp"),
    (
        "execve",
        "the one exec of the zygote's Python (children refuse it)",
    ),
    (
        "prctl",
        "zygote: installing the child filter; see the child filter for what is refused",
    ),
    ("seccomp", "zygote: installing the child filter"),
    ("sethostname", "never needed; refused by the child filter"),
];

/// Calls with argument restrictions. `socket` and `socketpair` are only allowed for `AF_UNIX`;
/// `clone` only without namespace flags; `ioctl` only for a few harmless terminal and file
/// requests (compared on the low 32 bits, CVE-2019-10063); `unshare` only for a new mount
/// namespace (the zygote's children; the child filter refuses it); `prlimit64` only on the
/// calling process.
pub const ARG_RULES: &[(&str, &str)] = &[
    (
        "socket",
        "domain == AF_UNIX: socketpair-based asyncio, never AF_INET/AF_INET6/AF_PACKET/AF_NETLINK",
    ),
    ("socketpair", "domain == AF_UNIX: asyncio self-pipe"),
    ("clone", "flags without CLONE_NEW*: threads and fork only"),
    (
        "ioctl",
        "TCGETS, TIOCGWINSZ, FIONREAD, FIONBIO, FIOCLEX, FIONCLEX only",
    ),
    (
        "unshare",
        "flags == CLONE_NEWNS: the zygote gives each child a private /tmp",
    ),
    (
        "prlimit64",
        "pid == 0: resource.getrlimit/setrlimit on itself",
    ),
];

/// `ioctl` requests allowed (low 32 bits compared).
pub const IOCTLS: &[(u64, &str)] = &[
    (0x5401, "TCGETS: isatty"),
    (0x5413, "TIOCGWINSZ: terminal size"),
    (0x541B, "FIONREAD: bytes available"),
    (0x5421, "FIONBIO: non-blocking"),
    (0x5451, "FIOCLEX"),
    (0x5450, "FIONCLEX"),
];

/// What the child filter takes away from what the zygote filter allowed. Stacked in each
/// child after it has mounted its tmpfs and changed uid, before any controller code runs.
pub const CHILD_DENIED: &[(&str, &str)] = &[
    ("mount", "no mounts"),
    ("unshare", "no new namespaces"),
    ("setns", "no joining namespaces"),
    (
        "execve",
        "no new programs: the controller is Python in this process",
    ),
    ("execveat", "same"),
    ("setgroups", "identity is fixed"),
    ("setresuid", "identity is fixed"),
    ("setresgid", "identity is fixed"),
    ("setuid", "identity is fixed"),
    ("setgid", "identity is fixed"),
    ("sethostname", "no host changes"),
    ("seccomp", "the filter stack is final"),
];

/// `prctl` options the child filter refuses (the rest read or set process-local things).
pub const CHILD_DENIED_PRCTL: &[(u64, &str)] = &[
    (4, "PR_SET_DUMPABLE: stays non-dumpable"),
    (22, "PR_SET_SECCOMP: the filter stack is final"),
    (24, "PR_CAPBSET_DROP"),
    (28, "PR_SET_SECUREBITS"),
    (35, "PR_SET_MM"),
    (0x5961_6d61, "PR_SET_PTRACER"),
    (47, "PR_CAP_AMBIENT"),
];

const NS_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

fn err(what: &str, e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Seccomp(format!("{what}: {e}"))
}

fn syscall(name: &str) -> Result<ScmpSyscall, SandboxError> {
    ScmpSyscall::from_name(name).map_err(|e| err(name, e))
}

/// Whether the current architecture resolves `name` (some calls, e.g. `open`, exist only on
/// some architectures).
fn known(name: &str) -> bool {
    ScmpSyscall::from_name(name).is_ok()
}

/// The zygote's allowlist as a classic BPF program (raw `sock_filter` array bytes).
pub fn zygote_filter() -> Result<Vec<u8>, SandboxError> {
    let mut f =
        ScmpFilterContext::new(ScmpAction::Errno(libc::EPERM)).map_err(|e| err("new", e))?;
    f.set_act_badarch(ScmpAction::KillProcess)
        .map_err(|e| err("badarch", e))?;
    f.add_arch(ScmpArch::Native).map_err(|e| err("arch", e))?;
    for (name, _why) in ALLOWED {
        if known(name) {
            f.add_rule(ScmpAction::Allow, syscall(name)?)
                .map_err(|e| err(name, e))?;
        }
    }
    let unix = libc::AF_UNIX as u64;
    for name in ["socket", "socketpair"] {
        f.add_rule_conditional(
            ScmpAction::Allow,
            syscall(name)?,
            &[ScmpArgCompare::new(0, ScmpCompareOp::Equal, unix)],
        )
        .map_err(|e| err(name, e))?;
    }
    f.add_rule_conditional(
        ScmpAction::Allow,
        syscall("clone")?,
        &[ScmpArgCompare::new(
            0,
            ScmpCompareOp::MaskedEqual(NS_FLAGS),
            0,
        )],
    )
    .map_err(|e| err("clone", e))?;
    // glibc falls back to clone when clone3 says ENOSYS; clone3's flags live in memory a
    // filter cannot read, so it is refused outright.
    f.add_rule(ScmpAction::Errno(libc::ENOSYS), syscall("clone3")?)
        .map_err(|e| err("clone3", e))?;
    for (req, _why) in IOCTLS {
        f.add_rule_conditional(
            ScmpAction::Allow,
            syscall("ioctl")?,
            &[ScmpArgCompare::new(
                1,
                ScmpCompareOp::MaskedEqual(0xffff_ffff),
                *req,
            )],
        )
        .map_err(|e| err("ioctl", e))?;
    }
    f.add_rule_conditional(
        ScmpAction::Allow,
        syscall("unshare")?,
        &[ScmpArgCompare::new(
            0,
            ScmpCompareOp::Equal,
            libc::CLONE_NEWNS as u64,
        )],
    )
    .map_err(|e| err("unshare", e))?;
    f.add_rule_conditional(
        ScmpAction::Allow,
        syscall("prlimit64")?,
        &[ScmpArgCompare::new(0, ScmpCompareOp::Equal, 0)],
    )
    .map_err(|e| err("prlimit64", e))?;
    export(&f)
}

/// The child's stricter filter (stacked on the zygote's), as raw BPF bytes.
pub fn child_filter() -> Result<Vec<u8>, SandboxError> {
    let mut f = ScmpFilterContext::new(ScmpAction::Allow).map_err(|e| err("new", e))?;
    f.set_act_badarch(ScmpAction::KillProcess)
        .map_err(|e| err("badarch", e))?;
    for (name, _why) in CHILD_DENIED {
        if known(name) {
            f.add_rule(ScmpAction::Errno(libc::EPERM), syscall(name)?)
                .map_err(|e| err(name, e))?;
        }
    }
    for (opt, _why) in CHILD_DENIED_PRCTL {
        f.add_rule_conditional(
            ScmpAction::Errno(libc::EPERM),
            syscall("prctl")?,
            &[ScmpArgCompare::new(0, ScmpCompareOp::Equal, *opt)],
        )
        .map_err(|e| err("prctl", e))?;
    }
    export(&f)
}

/// The filter as raw `sock_filter` bytes (through a pipe: libseccomp exports to a descriptor).
fn export(f: &ScmpFilterContext) -> Result<Vec<u8>, SandboxError> {
    use std::io::Read;
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| err("pipe", e))?;
    // A filter is at most a few thousand instructions: it fits the pipe's buffer.
    f.export_bpf(&w).map_err(|e| err("export", e))?;
    drop(w);
    let mut out = Vec::new();
    std::fs::File::from(r)
        .read_to_end(&mut out)
        .map_err(|e| err("export", e))?;
    Ok(out)
}

/// Whether `name` is allowed (without argument conditions) by the zygote filter.
pub fn allowed_unconditionally(name: &str) -> bool {
    ALLOWED.iter().any(|(n, _)| *n == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dangerous_calls_are_never_allowed() {
        for name in [
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "bpf",
            "keyctl",
            "add_key",
            "request_key",
            "userfaultfd",
            "perf_event_open",
            "setns",
            "unshare",
            "socket",
            "bind",
            "connect",
            "listen",
            "accept",
            "accept4",
            "kill",
            "tkill",
            "tgkill",
            "pidfd_open",
            "pidfd_send_signal",
            "pidfd_getfd",
            "pivot_root",
            "chroot",
            "umount2",
            "open_by_handle_at",
            "name_to_handle_at",
            "io_uring_setup",
            "memfd_create",
            "mknod",
            "mknodat",
            "fsopen",
            "fsmount",
            "move_mount",
            "open_tree",
            "personality",
            "reboot",
            "swapon",
            "syslog",
        ] {
            assert!(!allowed_unconditionally(name), "{name} must not be allowed");
        }
    }

    #[test]
    fn every_allowed_call_has_a_reason_and_exists() {
        for (name, why) in ALLOWED.iter().chain(ARG_RULES).chain(CHILD_DENIED) {
            assert!(!why.is_empty(), "{name} has no reason");
        }
        for (name, _) in ALLOWED {
            // `open`, `stat`, … are x86-64 only; everything else must resolve here.
            assert!(
                known(name),
                "{name} is not a system call on this architecture"
            );
        }
    }

    #[test]
    fn child_filter_takes_back_the_zygote_only_calls() {
        for name in [
            "mount",
            "setresuid",
            "setresgid",
            "setgroups",
            "execve",
            "seccomp",
        ] {
            assert!(CHILD_DENIED.iter().any(|(n, _)| *n == name), "{name}");
        }
    }

    #[test]
    fn filters_compile() {
        let z = zygote_filter().expect("zygote filter");
        assert!(!z.is_empty() && z.len().is_multiple_of(8));
        let c = child_filter().expect("child filter");
        assert!(!c.is_empty() && c.len().is_multiple_of(8));
        assert!(c.len() < z.len(), "the child filter is the small one");
    }
}
