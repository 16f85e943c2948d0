//! The two process primitives the executor needs that std does not offer: handing a child
//! exactly one descriptor at a fixed number, and killing a whole process group.
//!
//! Owns: the only `unsafe` in this crate. Must never: run anything in the forked child but
//! async-signal-safe calls.
#![allow(unsafe_code)]

use std::os::fd::RawFd;

/// Arrange for `fd` to be open as `target` (without close-on-exec) in the child `cmd` starts.
/// Every other descriptor the runtime holds is close-on-exec and stays behind.
pub fn pass_fd_as(cmd: &mut tokio::process::Command, fd: RawFd, target: RawFd) {
    // SAFETY: the closure runs in the forked child before exec and only calls dup2 and fcntl,
    // which are async-signal-safe; it touches no memory shared with other threads.
    unsafe {
        cmd.pre_exec(move || {
            if fd == target {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, target) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// SIGKILL every process in the group `pgid` (ignoring a group that is already gone).
pub fn kill_process_group(pgid: i32) {
    if pgid <= 1 {
        return;
    }
    // SAFETY: killpg has no memory-safety preconditions; pgid > 1 so it never targets init or
    // the caller's own group by accident (the worker was started with its own group).
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
}
