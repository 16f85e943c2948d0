"""A fake runtime for the worker tests: a socketpair, frames, and the worker started exactly as
``docs/protocol.md`` says (``python3 -I -S -c …``, environment cleared but ``MAGIC_SOCKET_FD``,
``MAGIC_PACKAGE_DIR``, ``PATH``, ``LANG``; the socket passed with ``pass_fds``)."""

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap

SDK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_ROOT = os.path.dirname(os.path.dirname(SDK_DIR))
EXAMPLES_DIR = os.path.join(REPO_ROOT, "examples", "controllers")
WORKER_COMMAND = "import sys; sys.path[:0]=[%r]; from magic.worker import main; main()" % SDK_DIR

#: Seconds any single wait in a test may take before the test fails (instead of hanging).
TIMEOUT = 10

HELLO_CONTROLLER = """
from magic import Controller, contract

@contract("./contract.yaml")
class Hello(Controller):
    async def execute(self, input):
        return {"greeting": "Hello, %s!" % input["name"], "request_id": self.request_id}
"""

CONTRACT = """\
name: TestController
version: 1.0.0
input: { type: object }
output: { type: object }
capabilities: []
"""


def make_package(testcase, source, contract=CONTRACT):
    """A package folder holding ``controller.py`` (dedented ``source``), removed after the test."""
    folder = tempfile.mkdtemp(prefix="magic-sdk-test-")
    testcase.addCleanup(shutil.rmtree, folder, True)
    with open(os.path.join(folder, "controller.py"), "w", encoding="utf-8") as f:
        f.write(textwrap.dedent(source))
    with open(os.path.join(folder, "contract.yaml"), "w", encoding="utf-8") as f:
        f.write(contract)
    return folder


def frame_bytes(frame):
    body = json.dumps(frame).encode("utf-8")
    return struct.pack(">I", len(body)) + body


class FakeRuntime:
    """The runtime's end of one execution."""

    def __init__(self, package_dir, env=None):
        self.sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        environment = {
            "MAGIC_SOCKET_FD": str(child.fileno()),
            "MAGIC_PACKAGE_DIR": package_dir,
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
        }
        if env is not None:
            environment.update(env)
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", WORKER_COMMAND],
            env=environment,
            pass_fds=(child.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        child.close()
        self.sock.settimeout(TIMEOUT)
        self.stdout = b""
        self.stderr = b""

    # ---- frames ----
    def send(self, frame):
        self.sock.sendall(frame_bytes(frame))

    def send_raw(self, data):
        self.sock.sendall(data)

    def _read_exactly(self, n):
        chunks = []
        while n:
            chunk = self.sock.recv(n)
            if not chunk:
                return None
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def recv(self):
        """Next frame from the worker, or ``None`` at end of stream."""
        header = self._read_exactly(4)
        if header is None:
            return None
        (length,) = struct.unpack(">I", header)
        assert length <= 16 * 1024 * 1024, "worker sent an oversize frame"
        body = self._read_exactly(length)
        assert body is not None, "worker closed the socket inside a frame"
        frame = json.loads(body.decode("utf-8"))
        assert isinstance(frame, dict) and "type" in frame, frame
        return frame

    def execute(self, input, request_id="req_test", temp_dir=None, timeout_ms=10000):
        self.send({
            "type": "execute", "request_id": request_id, "controller": "TestController",
            "version": "1.0.0", "input": input, "timeout_ms": timeout_ms, "temp_dir": temp_dir,
        })

    def run(self, input, answer=None, **kwargs):
        """Execute, answer each call with ``answer(call) -> reply fields`` and collect frames.

        Returns ``(result, frames)`` where ``frames`` is every frame before the result.
        """
        self.execute(input, **kwargs)
        frames = []
        while True:
            frame = self.recv()
            if frame is None:
                raise AssertionError("worker closed the socket without a result; stderr: %s" % self.finish()[2])
            if frame["type"] == "result":
                return frame, frames
            frames.append(frame)
            if frame["type"] == "call":
                if answer is None:
                    raise AssertionError("unexpected call %r" % frame)
                reply = {"type": "reply", "id": frame["id"]}
                reply.update(answer(frame))
                self.send(reply)

    # ---- process ----
    def finish(self, timeout=TIMEOUT):
        """Wait for the worker to exit; ``(returncode, stdout, stderr)``. Kills it on timeout
        and fails (a hang is a bug)."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise AssertionError("worker did not exit within %ss" % timeout)
        self.stdout += out
        self.stderr += err
        return self.proc.returncode, self.stdout.decode("utf-8", "replace"), self.stderr.decode("utf-8", "replace")

    def close(self):
        try:
            self.sock.close()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.communicate()


def ok(value):
    return {"ok": True, "value": value}


def fail(code, message, details=None):
    error = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"ok": False, "error": error}
