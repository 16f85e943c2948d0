# Magic Runtime zygote: one per controller version, started by magic-sandbox inside fresh
# mount/PID/IPC/UTS namespaces, the shared empty network namespace, a read-only root, with
# no_new_privs and the zygote seccomp filter already installed.
#
# It imports the SDK once and then forks one child per socket the runtime sends on the control
# socket (fd 3). It never runs controller code itself: each child first gives itself a private
# /tmp (when declared), becomes the sandbox uid (dropping every capability), stacks the child
# seccomp filter, tells the runtime it exists (the runtime then moves it into its cgroup), and
# only then imports controller.py and serves exactly one execution.
import ctypes
import gc
import os
import resource
import signal
import socket
import sys

SDK, PKG = sys.argv[1], sys.argv[2]
TEMP_SIZE = int(sys.argv[3])
UID, GID = int(sys.argv[4]), int(sys.argv[5])
RLIMIT_AS_BYTES = int(sys.argv[6])
RLIMIT_NPROC_N = int(sys.argv[7])

sys.path[:0] = [SDK]
sys.dont_write_bytecode = True
from magic import worker as W  # noqa: E402  (the SDK, imported once; it does not import asyncio)

# A controller that uses asyncio is served in an event loop: import asyncio once here (only
# the standard library: reading the source is not running it) instead of in every child. One
# that does not is driven without an event loop, and nobody pays for asyncio (~10 ms, MiBs).
try:
    with open(os.path.join(PKG, "controller.py"), "rb") as _f:
        if b"asyncio" in _f.read():
            import asyncio  # noqa: E402,F401
except OSError:
    pass
# Parsed once here, executed in each child (compiling runs no controller code). The first
# compile() of a process also builds the AST types (~9M instructions): done here, not per child.
W.precompile_controller(PKG)
compile("pass", "<warm-up>", "exec")

CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2

libc = ctypes.CDLL(None, use_errno=True)
ctl = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, 0, fileno=3)

signal.signal(signal.SIGINT, signal.SIG_DFL)
# Children are reaped by the kernel; the runtime learns of their end from their socket.
signal.signal(signal.SIGCHLD, signal.SIG_IGN)


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_bpf = ctl.recv(1 << 20)
_bpf_buf = ctypes.create_string_buffer(_bpf, len(_bpf))
_fprog = _Fprog(len(_bpf) // 8, ctypes.addressof(_bpf_buf))
_mount_opts = b"size=%d,nr_inodes=16384,mode=0700,uid=%d,gid=%d" % (TEMP_SIZE, UID, GID)

W.install_output_capture()
gc.collect()
gc.freeze()
ctl.send(b"R")


def _die(step):
    try:
        os.write(2, b"magic zygote child: %s failed (errno %d)\n" % (step, ctypes.get_errno()))
    finally:
        os._exit(4)


def _child(fd, attach):
    # First, while this process is still single-threaded and before anything else runs: move
    # into this execution's cgroup slot by writing "0" (this thread) to each v1 `tasks` file
    # the runtime opened and sent (cheap for the kernel; the runtime checks that it happened
    # and otherwise moves this process itself before letting it go on). The descriptors are
    # closed right away: no controller code ever holds one.
    for a in attach:
        try:
            os.write(a, b"0")
        except OSError:
            pass
        os.close(a)
    ctl.close()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    if TEMP_SIZE > 0:
        if libc.unshare(CLONE_NEWNS) != 0:
            _die(b"unshare")
        if libc.mount(b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, _mount_opts) != 0:
            _die(b"mount tmpfs")
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    if RLIMIT_AS_BYTES > 0:
        resource.setrlimit(resource.RLIMIT_AS, (RLIMIT_AS_BYTES, RLIMIT_AS_BYTES))
    if RLIMIT_NPROC_N > 0:
        resource.setrlimit(resource.RLIMIT_NPROC, (RLIMIT_NPROC_N, RLIMIT_NPROC_N))
    os.setgroups([])
    os.setresgid(GID, GID, GID)
    os.setresuid(UID, UID, UID)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(_fprog), 0, 0) != 0:
        _die(b"seccomp")
    os.set_inheritable(fd, False)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=fd)
    if TEMP_SIZE > 0:
        # The runtime keeps a handle on this execution's /tmp to see whether it filled up
        # (E3003), whatever the controller does with the error.
        tmp = os.open("/tmp", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        socket.send_fds(sock, [b"H"], [tmp])
        os.close(tmp)
    else:
        sock.sendall(b"H")
    if sock.recv(1) != b"G":
        os._exit(3)
    if TEMP_SIZE > 0:
        os.chdir("/tmp")
    try:
        cls, err = W.load_controller(PKG), None
    except W.ControllerLoadError as exc:
        cls, err = None, exc
    # The SDK's own steps once on dummy data (no controller code): their copy-on-write page
    # copies happen now, while this spare waits, not during its request.
    W.warm_up(cls)
    # No watchdog thread: if the runtime goes away, the zygote sees its control socket close
    # and exits, and the kernel kills every child of its PID namespace with it.
    os._exit(W.serve(sock, cls, err, watchdog=False))


# One message per child: its execution socket, then (v1 cgroups) its slot's `tasks` files.
while True:
    try:
        data, fds, _flags, _addr = socket.recv_fds(ctl, 16, 8)
    except InterruptedError:
        continue
    except OSError:
        os._exit(0)
    if not data:
        os._exit(0)
    if not fds:
        continue
    try:
        pid = os.fork()
    except OSError:
        pid = -1
    if pid == 0:
        try:
            _child(fds[0], fds[1:])
        except BaseException:
            pass
        os._exit(1)
    for fd in fds:
        os.close(fd)
