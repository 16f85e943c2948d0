"""The split a zygote uses: load the controller once, then fork one child per execution that
runs ``serve(sock, cls)``."""

import socket
import subprocess
import sys
import unittest

from .harness import HELLO_CONTROLLER, SDK_DIR, TIMEOUT, frame_bytes, make_package

ZYGOTE = """
import os, socket, sys
sys.path[:0] = [%r]
from magic import worker

worker.install_output_capture()
cls = worker.load_controller(os.environ["PACKAGE"])
early = worker.take_early_output()
assert early == [("info", "imported once", {"stream": "stdout"})], early
statuses = []
for fd in map(int, os.environ["FDS"].split(",")):
    pid = os.fork()
    if pid == 0:
        os._exit(worker.serve(socket.socket(fileno=fd), cls))
    os.close(fd)
    statuses.append(os.waitpid(pid, 0)[1])
os._exit(0 if all(os.waitstatus_to_exitcode(s) == 0 for s in statuses) else 1)
""" % SDK_DIR


def read_frame(sock):
    import json
    import struct
    header = b""
    while len(header) < 4:
        chunk = sock.recv(4 - len(header))
        if not chunk:
            return None
        header += chunk
    (length,) = struct.unpack(">I", header)
    body = b""
    while len(body) < length:
        body += sock.recv(length - len(body))
    return json.loads(body)


class ZygoteTest(unittest.TestCase):
    def test_one_import_many_forked_executions(self):
        package = make_package(self, HELLO_CONTROLLER + "\nprint('imported once')\n")
        pairs = [socket.socketpair() for _ in range(3)]
        child_fds = [child.fileno() for _, child in pairs]
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", ZYGOTE],
            env={"PACKAGE": package, "FDS": ",".join(map(str, child_fds)), "PATH": "/usr/bin:/bin"},
            pass_fds=child_fds, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        for ours, child in pairs:
            child.close()
        for number, (ours, _) in enumerate(pairs):
            ours.settimeout(TIMEOUT)
            ours.sendall(frame_bytes({"type": "execute", "request_id": "req_%d" % number,
                                      "input": {"name": "n%d" % number}}))
            frames = []
            while True:
                frame = read_frame(ours)
                self.assertIsNotNone(frame, "child closed without a result")
                if frame["type"] == "result":
                    break
                frames.append(frame)
            self.assertEqual(frame["output"], {"greeting": "Hello, n%d!" % number, "request_id": "req_%d" % number})
            self.assertIsNone(read_frame(ours))
            ours.close()
            # The zygote took the import-time line; no child replays it.
            self.assertEqual(frames, [])
        out, err = proc.communicate(timeout=TIMEOUT)
        self.assertEqual(proc.returncode, 0, err)
        self.assertEqual(out, b"")

    def test_warm_up_runs_no_controller_code_and_leaves_no_trace(self):
        package = make_package(self, """
            import os
            from magic import Controller, contract

            def _mark(what):
                with open(os.environ["MARK"], "a") as f:
                    f.write(what)

            @contract("./contract.yaml")
            class Marked(Controller):
                def __init__(self, *args, **kwargs):
                    _mark("init ")
                    super().__init__(*args, **kwargs)

                async def execute(self, input):
                    _mark("execute ")
                    return {}
        """)
        mark = package + "/mark"
        script = """
import os, sys
sys.path[:0] = [%r]
from magic import worker
cls = worker.load_controller(os.environ["PACKAGE"])
before = list(sys.meta_path)
worker.warm_up(cls)
worker.warm_up(None)
assert sys.meta_path == before, sys.meta_path
assert "asyncio" not in sys.modules
assert not os.path.exists(os.environ["MARK"]), open(os.environ["MARK"]).read()
""" % SDK_DIR
        proc = subprocess.run(
            [sys.executable, "-I", "-S", "-c", script],
            env={"PACKAGE": package, "MARK": mark, "PATH": "/usr/bin:/bin"},
            capture_output=True, timeout=TIMEOUT,
        )
        self.assertEqual(proc.returncode, 0, proc.stderr)


if __name__ == "__main__":
    unittest.main()
