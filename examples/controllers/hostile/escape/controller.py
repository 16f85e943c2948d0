"""Each `attack` tries one way out of the sandbox and reports whether it was blocked.

`blocked` is true only when every variant of the attack failed. `detail` says what happened.
"""
import ctypes
import errno
import os
import signal
import socket
import stat
import sys
import time

from magic import Controller, contract

libc = ctypes.CDLL(None, use_errno=True)
# Module state: a fresh process per execution must never see a previous execution's value.
_SEEN = []


def _try(fn):
    """Run fn; return (succeeded, description)."""
    try:
        r = fn()
        return True, "succeeded: %r" % (r,)
    except OSError as e:
        return False, "%s (errno %s)" % (type(e).__name__, errno.errorcode.get(e.errno, e.errno))
    except Exception as e:  # noqa: BLE001
        return False, "%s: %s" % (type(e).__name__, e)


def _c(fn, *args):
    """A libc call: raise OSError on -1."""
    r = fn(*args)
    if r == -1:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def _read(path):
    with open(path, "rb") as f:
        return len(f.read(64))


def _write(path):
    with open(path, "wb") as f:
        f.write(b"pwned")
    return path


def _sock(family, kind, proto=0, addr=None):
    s = socket.socket(family, kind, proto)
    try:
        if addr is not None:
            s.settimeout(1)
            if kind == socket.SOCK_DGRAM:
                s.sendto(b"x", addr)
            else:
                s.connect(addr)
        return "socket"
    finally:
        s.close()


def _open_fds():
    out = []
    for fd in range(0, 1024):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "reg" if stat.S_ISREG(st.st_mode) else \
            "sock" if stat.S_ISSOCK(st.st_mode) else "fifo" if stat.S_ISFIFO(st.st_mode) else \
            "chr" if stat.S_ISCHR(st.st_mode) else "other"
        out.append((fd, kind))
    return out


def attack(name, inp):
    """Return a list of (variant, succeeded, description)."""
    res = []

    def t(variant, fn):
        ok, d = _try(fn)
        res.append((variant, ok, d))

    if name == "read_shadow":
        t("/etc/shadow", lambda: _read("/etc/shadow"))
        t("/etc/passwd", lambda: _read("/etc/passwd"))
    elif name == "read_data_dir":
        p = inp["path"]
        t("listdir", lambda: os.listdir(p))
        t("state db", lambda: _read(os.path.join(p, "magic.db")))
        t("admin key", lambda: _read(os.path.join(p, "admin.key")))
    elif name == "write_persistent":
        for p in ["/x", "/magic/pkg/x", "/magic/sdk/x", "/usr/x", "/dev/x", "/root/x",
                  "/tmp/x", "/var/tmp/x", "/dev/shm/x", "/magic/pkg/controller.py"]:
            t(p, lambda p=p: _write(p))
        t("mkdir /new", lambda: os.mkdir("/new"))
    elif name == "tcp_loopback":
        t("tcp 127.0.0.1", lambda: _sock(socket.AF_INET, socket.SOCK_STREAM, 0, ("127.0.0.1", inp["port"])))
        t("tcp ::1", lambda: _sock(socket.AF_INET6, socket.SOCK_STREAM, 0, ("::1", inp["port"])))
        t("tcp 1.1.1.1", lambda: _sock(socket.AF_INET, socket.SOCK_STREAM, 0, ("1.1.1.1", 80)))
    elif name == "udp_loopback":
        t("udp 127.0.0.1", lambda: _sock(socket.AF_INET, socket.SOCK_DGRAM, 0, ("127.0.0.1", inp["port"])))
        t("udp ::1", lambda: _sock(socket.AF_INET6, socket.SOCK_DGRAM, 0, ("::1", inp["port"])))
    elif name == "raw_sockets":
        t("raw icmp", lambda: _sock(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
        t("packet", lambda: _sock(socket.AF_PACKET, socket.SOCK_RAW, 0))
        t("netlink", lambda: _sock(socket.AF_NETLINK, socket.SOCK_RAW, 0))
        t("unix bind abstract", lambda: socket.socket(socket.AF_UNIX).bind("\0magic-hostile"))
        t("unix connect", lambda: socket.socket(socket.AF_UNIX).connect("/magic/sock"))
    elif name == "ptrace":
        t("attach pid 1", lambda: _c(libc.ptrace, 16, 1, 0, 0))
        t("attach parent", lambda: _c(libc.ptrace, 16, os.getppid(), 0, 0))
        t("traceme", lambda: _c(libc.ptrace, 0, 0, 0, 0))
        t("process_vm_readv", lambda: _c(libc.syscall, 310, 1, 0, 0, 0, 0, 0))
    elif name == "mount":
        t("tmpfs on /magic", lambda: _c(libc.mount, b"tmpfs", b"/magic", b"tmpfs", 0, None))
        t("remount / rw", lambda: _c(libc.mount, None, b"/", None, 32, None))
        t("proc", lambda: _c(libc.mount, b"proc", b"/dev", b"proc", 0, None))
        t("umount /usr", lambda: _c(libc.umount2, b"/usr", 2))
        t("pivot_root", lambda: _c(libc.syscall, 155, b"/", b"/"))
        t("chroot", lambda: _c(libc.chroot, b"/usr"))
    elif name == "unshare":
        for flag, label in [(0x10000000, "user"), (0x00020000, "mount"), (0x40000000, "net"),
                            (0x20000000, "pid"), (0x02000000, "cgroup")]:
            t("unshare " + label, lambda f=flag: _c(libc.unshare, f))
        t("setns", lambda: _c(libc.setns, 0, 0))
        t("clone newuser", lambda: _c(libc.syscall, 56, 0x10000000 | 17, 0, 0, 0, 0))
    elif name == "exec":
        t("execv /usr/bin/id", lambda: os.execv("/usr/bin/id", ["id"]))
        t("execv python", lambda: os.execv("/proc/self/exe", ["x"]))
    elif name == "proc_exe":
        t("open /proc/self/exe rw", lambda: os.open("/proc/self/exe", os.O_RDWR))
        t("open /proc/1/exe", lambda: os.open("/proc/1/exe", os.O_RDONLY))
        t("listdir /proc", lambda: os.listdir("/proc"))
        t("/sys", lambda: os.listdir("/sys"))
        t("write the interpreter", lambda: _write(sys.executable))
        t("write libpython", lambda: _write(os.path.join(sys.base_prefix, "lib", "libpython3.so")))
    elif name == "runtime_fds":
        fds = _open_fds()
        dirs = [fd for fd, kind in fds if kind in ("dir", "reg")]
        res.append(("fds " + repr(fds), bool(dirs), "directories or files held open: %r" % dirs))
        for fd, kind in fds:
            t("fchdir %d" % fd, lambda fd=fd: os.fchdir(fd))
        t("chdir /proc/self/fd/3", lambda: os.chdir("/proc/self/fd/3"))
        t("listdir ../../..", lambda: [n for n in os.listdir("../../..") if n not in
                                       ("bin", "dev", "lib", "lib64", "magic", "root", "tmp", "usr")])
        # the last variant "succeeds" only when it sees something outside the sandbox root
        variant, ok, d = res[-1]
        res[-1] = (variant, ok and d != "succeeded: []", d)
    elif name == "signal":
        t("kill -1", lambda: os.kill(-1, signal.SIGKILL))
        t("kill zygote (1)", lambda: os.kill(1, signal.SIGKILL))
        t("kill parent", lambda: os.kill(os.getppid(), signal.SIGKILL))
        t("kill runtime", lambda: os.kill(inp.get("pid", 1), signal.SIGKILL))
        t("tgkill 1", lambda: _c(libc.syscall, 234, 1, 1, 9))
        t("pidfd_open 1", lambda: _c(libc.syscall, 434, 1, 0))
    elif name == "see_processes":
        t("listdir /proc", lambda: os.listdir("/proc"))
        alive = []
        for pid in range(1, 300):
            if pid == os.getpid():
                continue
            try:
                os.kill(pid, 0)
                alive.append(pid)
            except OSError:
                pass
        res.append(("probe pids", bool(alive), "visible: %r" % alive[:20]))
        t("other executions' /tmp", lambda: os.listdir("/tmp"))
    elif name == "fork_bomb":
        kids = 0
        for _ in range(2000):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            kids += 1
        res.append(("forks", kids >= 500, "forked %d children before the limit" % kids))
    elif name == "memory_state":
        res.append(("module state", bool(_SEEN), "seen %r" % _SEEN))
        _SEEN.append("x")
        import builtins
        res.append(("builtins", hasattr(builtins, "_hostile"), "builtins flag"))
        builtins._hostile = True
    elif name == "setuid":
        t("setuid 0", lambda: os.setuid(0))
        t("setresuid 0", lambda: os.setresuid(0, 0, 0))
        t("capset", lambda: _c(libc.capset, 0, 0))
    else:
        raise ValueError("unknown attack " + name)
    return res


@contract("./contract.yaml")
class HostileEscape(Controller):
    async def execute(self, input):
        res = attack(input["attack"], input)
        detail = "; ".join("%s: %s" % (v, d) for v, ok, d in res)
        return {"attack": input["attack"], "blocked": not any(ok for _, ok, _ in res), "detail": detail}
