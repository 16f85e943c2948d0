"""The worker: the controller side of the worker protocol (``docs/protocol.md``).

Owns: loading ``controller.py`` from a package folder, reading the ``execute`` frame, running
``async execute(self, input)`` — under asyncio while a reader task resolves ``reply`` frames
when the controller imports ``asyncio``, otherwise driven directly without an event loop (each
capability call answered synchronously over the socket; a lazy ``import asyncio`` inside
``execute`` gets a running loop and the coroutine continues in it) — capturing ``print()``/stdout/stderr/``logging`` as ``log`` frames, and writing exactly one
``result`` frame per execution.

Must never: send anything after the ``result`` frame, wait for a runtime that has closed the
socket, or continue after the runtime broke the protocol (the worker then says why on the real
stderr and exits non-zero without a result). It is not a security boundary: controller code
runs in this process and could speak the protocol itself; the runtime's broker checks every
call.

Entry points:

- :func:`main` — inline mode: the runtime starts
  ``python3 -I -S -c "import sys; sys.path[:0]=[SDK_DIR]; from magic.worker import main; main()"``
  with ``MAGIC_SOCKET_FD`` and ``MAGIC_PACKAGE_DIR`` set; ``main`` never returns (it ends the
  process with :func:`os._exit` so stray non-daemon threads cannot keep it alive).
- :func:`install_output_capture`, :func:`load_controller`, :func:`take_early_output` and
  :func:`serve` — for a zygote: capture and load once, then in each forked child
  ``os._exit(serve(sock, cls))``.

Exit status: 0 a result was sent; 1 a bug in the worker; 2 the runtime broke the protocol;
3 the socket closed before the result could be sent; 4 the worker could not start (bad
``MAGIC_SOCKET_FD``).
"""

from __future__ import annotations

import importlib.util
import os
import select
import socket
import sys
import threading
import time
import types
from typing import Any, Dict, List, Optional, Tuple, Type

from . import _protocol, _stdio
from ._channel import Channel, DirectChannel, read_frame
from .controller import Controller, ExecutionContext, controller_classes
from .errors import CapabilityError

__all__ = [
    "main",
    "load_controller",
    "serve",
    "install_output_capture",
    "take_early_output",
    "ControllerLoadError",
    "EXIT_OK",
    "EXIT_INTERNAL",
    "EXIT_PROTOCOL",
    "EXIT_DISCONNECTED",
    "EXIT_SETUP",
]

#: A result frame was sent.
EXIT_OK = 0
#: A bug in the worker itself (reported on stderr).
EXIT_INTERNAL = 1
#: The runtime sent a bad frame (oversize, not a JSON object, unknown type, unexpected reply).
EXIT_PROTOCOL = 2
#: The socket closed before the result could be sent.
EXIT_DISCONNECTED = 3
#: The worker could not start: ``MAGIC_SOCKET_FD`` missing or not a Unix stream socket.
EXIT_SETUP = 4

#: Seconds a cancelled execution gets to unwind once the runtime is gone.
CANCEL_GRACE_S = 1.0
#: Seconds after the runtime hung up before the watchdog ends a worker that did not notice
#: (a controller blocking the event loop, e.g. ``time.sleep`` or a busy loop).
WATCHDOG_GRACE_S = 2.0
#: Longest exception message and traceback put in a result frame.
MAX_ERROR_MESSAGE = 8 * 1024
MAX_TRACEBACK = 64 * 1024

_MODULE_NAME = "controller"


class ControllerLoadError(Exception):
    """``controller.py`` is missing, fails to import, or does not define exactly one
    ``Controller`` subclass with an ``async def execute``.

    Attributes:
        exception: type name of the underlying exception (``"SyntaxError"``…), or ``None``.
        traceback: formatted traceback of the underlying exception, or ``""``.
    """

    def __init__(self, message: str, exception: Optional[str] = None, tb: str = ""):
        super().__init__(message)
        self.exception = exception
        self.traceback = tb


# ---- loading -------------------------------------------------------------------------------


def load_controller(package_dir: str) -> Type[Controller]:
    """Import ``<package_dir>/controller.py`` as module ``controller`` and return its class.

    The package folder goes first on ``sys.path`` so the controller can import its own helper
    modules; no bytecode is written into it. Raises :class:`ControllerLoadError` unless the module imports cleanly and defines
    exactly one ``magic.Controller`` subclass whose ``execute`` is ``async def``.
    """
    if not package_dir:
        raise ControllerLoadError("MAGIC_PACKAGE_DIR is not set")
    path = os.path.join(package_dir, "controller.py")
    if not os.path.isfile(path):
        raise ControllerLoadError("no controller.py in %s" % package_dir)
    package_dir = os.path.abspath(package_dir)
    if package_dir not in sys.path:
        sys.path.insert(0, package_dir)
    spec = importlib.util.spec_from_file_location(_MODULE_NAME, path)
    if spec is None or spec.loader is None:
        raise ControllerLoadError("cannot import %s" % path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE_NAME] = module
    # A deployed version is immutable: never leave a __pycache__ folder in it (not now, not
    # for modules the controller imports later). This process serves only this controller.
    sys.dont_write_bytecode = True
    try:
        code = _precompiled.pop(os.path.join(package_dir, "controller.py"), None)
        if code is None:
            spec.loader.exec_module(module)
        else:
            exec(code, vars(module))
    except BaseException as exc:  # SyntaxError, ImportError, SystemExit at import time…
        sys.modules.pop(_MODULE_NAME, None)
        raise ControllerLoadError(
            "importing controller.py failed: %s" % _describe(exc), _type_name(exc), _format_tb(exc)
        ) from None
    classes = controller_classes(vars(module), _MODULE_NAME)
    if len(classes) != 1:
        names = ", ".join(c.__name__ for c in classes) or "none"
        raise ControllerLoadError(
            "controller.py must define exactly one class deriving magic.Controller (found: %s)" % names
        )
    cls = classes[0]
    execute = getattr(cls, "execute", None)
    if execute is Controller.execute:
        raise ControllerLoadError("%s does not define execute(self, input)" % cls.__name__)
    if not _is_coroutine_function(execute):
        raise ControllerLoadError(
            "%s.execute must be a coroutine: write `async def execute(self, input)`" % cls.__name__
        )
    return cls


_precompiled: Dict[str, Any] = {}


def precompile_controller(package_dir: str) -> None:
    """Compile ``<package_dir>/controller.py`` to a code object without running it.

    A zygote calls this once; every forked child's :func:`load_controller` then executes the
    code object instead of parsing the source again. Compiling runs none of the controller's
    code. Errors are left for :func:`load_controller` to report.
    """
    path = os.path.join(os.path.abspath(package_dir), "controller.py")
    try:
        with open(path, "rb") as f:
            source = f.read()
        _precompiled[path] = compile(source, path, "exec", dont_inherit=True)
    except BaseException:  # SyntaxError, OSError…: load_controller reports it
        _precompiled.pop(path, None)


_CO_COROUTINE = 0x80


def _is_coroutine_function(func: Any) -> bool:
    """``inspect.iscoroutinefunction`` without importing ``inspect`` for a plain ``async def``."""
    code = getattr(func, "__code__", None)
    if code is not None and code.co_flags & _CO_COROUTINE:
        return True
    import inspect  # wrapped or unusual callables only

    return inspect.iscoroutinefunction(func)


# ---- output capture ------------------------------------------------------------------------

_capture: Optional[Tuple[_stdio.LogSinkSwitch, _stdio.CapturedStream, _stdio.CapturedStream]] = None


def install_output_capture() -> None:
    """Route ``sys.stdout``, ``sys.stderr`` and root ``logging`` into log frames.

    Idempotent. Lines written before an execution starts (e.g. while importing the
    controller) are kept (up to 100) and sent as the first log frames of the execution.
    A zygote calls this before :func:`load_controller`; :func:`serve` calls it otherwise.
    """
    global _capture
    if _capture is None:
        switch = _stdio.LogSinkSwitch()
        out, err = _stdio.install(switch)
        _capture = (switch, out, err)


def take_early_output() -> List[Tuple[str, str, Dict[str, Any]]]:
    """Remove and return the ``(level, message, fields)`` lines captured outside any execution.

    A zygote calls this after :func:`load_controller` and logs them once itself; otherwise
    every forked child would inherit them and replay them into its execution's log.
    """
    if _capture is None:
        return []
    _capture[1].flush()
    _capture[2].flush()
    return _capture[0].take_early()


def _flush_capture() -> None:
    if _capture is not None:
        _capture[1].flush()
        _capture[2].flush()


def _fatal(message: str) -> None:
    """Say why the worker stops, on the real stderr (not as a log frame)."""
    stream = sys.__stderr__
    if stream is None:
        return
    try:
        stream.write("magic worker: %s\n" % message)
        stream.flush()
    except (OSError, ValueError):
        pass


# ---- one execution -------------------------------------------------------------------------


def serve(sock: socket.socket, controller_cls: Optional[Type[Controller]], load_error: Optional[BaseException] = None, *, watchdog: bool = True) -> int:
    """Serve one execution on ``sock`` (a connected ``AF_UNIX`` stream socket) and return the
    exit status (:data:`EXIT_OK` once the result frame is sent).

    Reads the ``execute`` frame, runs ``controller_cls().execute(input)`` in a new event loop
    and writes exactly one ``result`` frame. With ``load_error`` set (and ``controller_cls``
    ``None``), the execution fails with ``E5001`` describing why the controller could not be
    loaded. ``sock`` is closed on return. Never raises for anything the controller or the
    runtime does.

    ``watchdog=False`` (the sandbox's zygote children) starts no watchdog thread: there the
    runtime's end of the zygote's control socket closing ends the zygote, which is PID 1 of
    its PID namespace, so the kernel kills every child with it — no thread, no wake-up every
    half second in each waiting child.
    """
    install_output_capture()
    served = threading.Event()
    if watchdog:
        _start_watchdog(sock, served)
    try:
        if "asyncio" in sys.modules:
            return _serve_in_loop(sock, controller_cls, load_error)
        return _serve_direct(sock, controller_cls, load_error)
    finally:
        served.set()
        if _capture is not None:
            _capture[0].attach(None)
        try:
            sock.close()
        except OSError:
            pass


def _serve_in_loop(sock: socket.socket, controller_cls: Optional[Type[Controller]], load_error: Optional[BaseException]) -> int:
    """The controller uses asyncio: serve in a new event loop (calls run concurrently)."""
    import asyncio

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_serve(sock, controller_cls, load_error))
    finally:
        try:
            loop.close()
        except RuntimeError:
            pass


def _start_watchdog(sock: socket.socket, served: threading.Event) -> None:
    """End the process if the runtime hangs up and :func:`serve` does not return soon after.

    The event loop notices a closed socket only when the controller lets it run; a controller
    stuck in blocking code would otherwise outlive a runtime that is gone (nobody left to
    enforce the timeout). The thread only polls for hang-up; it never reads.
    """
    hangup = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR
    try:
        fd = sock.fileno()
        poller = select.poll()
        poller.register(fd, hangup)
    except (OSError, ValueError, AttributeError):
        return

    def watch() -> None:
        while not served.is_set():
            try:
                events = poller.poll(500)
            except OSError:
                return
            if served.is_set():
                return
            if any(mask & (hangup | select.POLLNVAL) for _, mask in events):
                if served.wait(WATCHDOG_GRACE_S):
                    return
                _fatal("the runtime closed the socket and the controller does not return; exiting")
                os._exit(EXIT_DISCONNECTED)

    threading.Thread(target=watch, name="magic-watchdog", daemon=True).start()


async def _read_frame(reader: "asyncio.StreamReader") -> Optional[Dict[str, Any]]:
    """Next frame from the runtime; ``None`` at a clean end of stream."""
    import asyncio

    try:
        header = await reader.readexactly(_protocol.HEADER_SIZE)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise _protocol.ProtocolViolation("the socket closed inside a frame header") from None
        return None
    except (ConnectionError, OSError):
        return None
    length = _protocol.decode_length(header)
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise _protocol.ProtocolViolation("the socket closed inside a %d-byte frame" % length) from None
    except (ConnectionError, OSError):
        return None
    return _protocol.decode_body(body)


def _execution_context(channel: Any, execute: Dict[str, Any], started: float) -> ExecutionContext:
    """The controller's context for the `execute` frame; points temp files at the execution's
    temp dir (when `fs:temp` is declared) and sends captured prints to `channel`'s log."""
    context = ExecutionContext(
        channel,
        execute["request_id"],
        controller=execute["controller"],
        version=execute["version"],
        timeout_ms=execute["timeout_ms"],
        temp_dir=execute["temp_dir"],
        started=started,
    )
    if execute["temp_dir"]:
        import tempfile  # only when fs:temp is declared: importing it costs a few ms

        tempfile.tempdir = execute["temp_dir"]
        os.environ["TMPDIR"] = execute["temp_dir"]
    if _capture is not None:
        _capture[0].attach(channel.log)
    return context


def _parse_execute(frame: Dict[str, Any]) -> Dict[str, Any]:
    if frame.get("type") != "execute":
        raise _protocol.ProtocolViolation("expected an execute frame first, got %r" % frame.get("type"))
    request_id = frame.get("request_id")
    if not isinstance(request_id, str):
        raise _protocol.ProtocolViolation("execute frame without a string request_id")
    if "input" not in frame:
        raise _protocol.ProtocolViolation("execute frame without input")
    timeout_ms = frame.get("timeout_ms")
    if timeout_ms is not None and (isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int)):
        raise _protocol.ProtocolViolation("execute frame timeout_ms is not an integer")
    temp_dir = frame.get("temp_dir")
    if temp_dir is not None and not isinstance(temp_dir, str):
        raise _protocol.ProtocolViolation("execute frame temp_dir is not a string or null")
    for key in ("controller", "version"):
        if not isinstance(frame.get(key, ""), str):
            raise _protocol.ProtocolViolation("execute frame %s is not a string" % key)
    return {
        "request_id": request_id,
        "controller": frame.get("controller", ""),
        "version": frame.get("version", ""),
        "timeout_ms": timeout_ms,
        "temp_dir": temp_dir,
        "input": frame["input"],
    }


async def _serve(sock: socket.socket, controller_cls: Optional[Type[Controller]], load_error: Optional[BaseException]) -> int:
    import asyncio

    loop = asyncio.get_running_loop()
    try:
        reader, writer = await asyncio.open_unix_connection(sock=sock)
    except (OSError, ValueError) as exc:
        _fatal("cannot use the runtime socket: %s" % exc)
        return EXIT_SETUP
    # drain() then waits until every byte is handed to the kernel, so closing right after
    # the result frame loses nothing.
    writer.transport.set_write_buffer_limits(high=0)
    try:
        first = await _read_frame(reader)
        if first is None:
            _fatal("the runtime closed the socket before sending an execute frame")
            return EXIT_DISCONNECTED
        execute = _parse_execute(first)
    except _protocol.ProtocolViolation as exc:
        _fatal("protocol violation from the runtime: %s" % exc)
        writer.close()
        return EXIT_PROTOCOL
    started = time.monotonic()

    channel = Channel(writer, loop)
    context = _execution_context(channel, execute, started)

    run = loop.create_task(_invoke(controller_cls, load_error, context, execute["input"]))
    replies = loop.create_task(_read_replies(reader, channel))
    await asyncio.wait({run, replies}, return_when=asyncio.FIRST_COMPLETED)

    if replies.done():
        # The runtime broke the protocol or went away while the controller was running.
        outcome, reason = replies.result()
        channel.connection_lost(reason)
        writer.close()
        if not run.done():
            run.cancel()
            await asyncio.wait({run}, timeout=CANCEL_GRACE_S)
        if outcome == "violation":
            _fatal("protocol violation from the runtime: %s" % reason)
            return EXIT_PROTOCOL
        _fatal("%s; no result was sent" % reason)
        return EXIT_DISCONNECTED

    if run.cancelled():
        result = _error_result(asyncio.CancelledError("execute() was cancelled"), "E5001")
    else:
        ok, value = run.result()
        result = _result_frame(ok, value)
    # Encoded exactly once: the builders above already checked that it encodes.
    _flush_capture()
    sent = await channel.send_result(result)
    replies.cancel()
    writer.close()
    if not sent:
        _fatal("the runtime closed the socket before the result could be sent")
        return EXIT_DISCONNECTED
    return EXIT_OK


async def _invoke(controller_cls, load_error, context: ExecutionContext, input: Any) -> Tuple[bool, Any]:
    """Run the controller; ``(True, output)`` or ``(False, exception)``. Only cancellation escapes."""
    import asyncio

    if controller_cls is None:
        return False, load_error or ControllerLoadError("no controller class")
    try:
        instance = controller_cls()
        instance._magic_bind(context)
        output = await instance.execute(input)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # SystemExit and KeyboardInterrupt are controller failures too
        return False, exc
    return True, output


async def _read_replies(reader: "asyncio.StreamReader", channel: Channel) -> Tuple[str, str]:
    """Hand every ``reply`` to the channel until the stream ends or breaks the protocol.

    Returns ``("eof", reason)`` or ``("violation", reason)``.
    """
    while True:
        try:
            frame = await _read_frame(reader)
            if frame is None:
                return "eof", "the runtime closed the socket"
            if frame["type"] != "reply":
                raise _protocol.ProtocolViolation("unexpected %r frame during an execution" % frame["type"])
            channel.deliver_reply(frame)
        except _protocol.ProtocolViolation as exc:
            return "violation", str(exc)


# ---- without an event loop ----------------------------------------------------------------


def _serve_direct(sock: socket.socket, controller_cls: Optional[Type[Controller]], load_error: Optional[BaseException]) -> int:
    """The controller does not use asyncio: drive ``execute`` directly on the blocking socket."""
    try:
        sock.setblocking(True)
        first = read_frame(sock)
        if first is None:
            _fatal("the runtime closed the socket before sending an execute frame")
            return EXIT_DISCONNECTED
        execute = _parse_execute(first)
    except _protocol.ProtocolViolation as exc:
        _fatal("protocol violation from the runtime: %s" % exc)
        return EXIT_PROTOCOL
    except OSError as exc:
        _fatal("cannot use the runtime socket: %s" % exc)
        return EXIT_DISCONNECTED
    started = time.monotonic()
    channel = DirectChannel(sock)
    context = _execution_context(channel, execute, started)

    ok, value = _run_direct(controller_cls, load_error, context, execute["input"], channel)

    if channel.violation is not None:
        _fatal("protocol violation from the runtime: %s" % channel.violation)
        return EXIT_PROTOCOL
    if channel.lost is not None:
        _fatal("%s; no result was sent" % channel.lost)
        return EXIT_DISCONNECTED
    result = _result_frame(ok, value)
    _flush_capture()
    if not channel.send_result(result):
        _fatal("the runtime closed the socket before the result could be sent")
        return EXIT_DISCONNECTED
    return EXIT_OK


def warm_up(controller_cls: Optional[Type[Controller]] = None) -> None:
    """Run the SDK's own steps of an execution once, on dummy data, before the request.

    For a pre-forked child (the sandbox's spares): the first run of any code after ``fork``
    copies the memory pages whose reference counts it touches; doing the SDK's part (decode and
    check an ``execute`` frame, build the context, encode a result) while the child waits moves
    those copies out of the request. Only what a request does anyway (each extra step would
    copy pages of its own). Runs **no controller code** (``controller_cls`` is not used, it is
    accepted for future use). Never raises.
    """
    try:
        execute = _parse_execute(_protocol.decode_body(
            b'{"type":"execute","request_id":"warm-up","controller":"","version":"",'
            b'"input":{},"timeout_ms":1,"temp_dir":null}'))
        ExecutionContext(DirectChannel(None), execute["request_id"], controller=execute["controller"],
                         version=execute["version"], timeout_ms=execute["timeout_ms"],
                         temp_dir=execute["temp_dir"], started=time.monotonic())
        _result_frame(True, execute["input"])
    except Exception:  # a warm-up never fails an execution
        pass


def _run_direct(controller_cls, load_error, context: ExecutionContext, input: Any, channel: DirectChannel) -> Tuple[bool, Any]:
    """Run the controller without an event loop; ``(True, output)`` or ``(False, exception)``.

    Capability calls complete synchronously, so a controller that awaits only them finishes
    in one step. If it suspends on anything else (it imported asyncio inside ``execute``, or
    awaits a foreign awaitable), the coroutine continues in an asyncio event loop.
    """
    if controller_cls is None:
        return False, load_error or ControllerLoadError("no controller class")
    hook = _AsyncioImportHook()
    sys.meta_path.insert(0, hook)
    try:
        try:
            instance = controller_cls()
            instance._magic_bind(context)
            coro = instance.execute(input)
            try:
                pending = coro.send(None)
            except StopIteration as stop:
                return True, stop.value
        except BaseException as exc:  # SystemExit and KeyboardInterrupt are controller failures too
            return False, exc
        if channel.violation is not None or channel.lost is not None:
            coro.close()  # the execution ends without a result; nothing left to wait for
            return False, RuntimeError("the execution was abandoned")
        return _continue_in_loop(coro, pending, hook)
    finally:
        hook.remove()


def _continue_in_loop(coro: Any, pending: Any, hook: "_AsyncioImportHook") -> Tuple[bool, Any]:
    """Finish a coroutine that suspended on ``pending`` in an asyncio event loop."""
    import asyncio

    loop = hook.take_loop() or asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    async def finish() -> Any:
        return await _resume(coro, pending)

    try:
        return True, loop.run_until_complete(finish())
    except BaseException as exc:
        return False, exc
    finally:
        try:
            loop.close()
        except RuntimeError:
            pass


@types.coroutine
def _resume(coro: Any, pending: Any) -> Any:
    """Delegate to ``coro``, which already yielded ``pending`` (a manual ``yield from``)."""
    while True:
        try:
            value = yield pending
        except BaseException as exc:  # thrown in by the task (e.g. cancellation)
            try:
                pending = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                pending = coro.send(value)
            except StopIteration as stop:
                return stop.value


class _AsyncioImportHook:
    """While ``execute`` runs without an event loop: when it imports ``asyncio``, give this
    thread a running event loop right after the import, so ``asyncio.sleep()``,
    ``asyncio.gather()``… work; the coroutine then continues in that loop."""

    def __init__(self) -> None:
        self._loop: Any = None
        self._installed = True

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "asyncio":
            return None
        self.remove()
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _LoopAfterImport(spec.loader, self)
        return spec

    def loaded(self, module: Any) -> None:
        loop = module.new_event_loop()
        module.set_event_loop(loop)
        module.events._set_running_loop(loop)
        self._loop = loop

    def take_loop(self) -> Any:
        """The loop made at import (no longer marked running), or ``None``."""
        loop, self._loop = self._loop, None
        if loop is not None:
            sys.modules["asyncio"].events._set_running_loop(None)
        return loop

    def remove(self) -> None:
        if self._installed:
            self._installed = False
            try:
                sys.meta_path.remove(self)
            except ValueError:
                pass
        loop = self.take_loop()
        if loop is not None:
            loop.close()


class _LoopAfterImport:
    """The real loader of ``asyncio``, followed by :meth:`_AsyncioImportHook.loaded`."""

    def __init__(self, loader: Any, hook: _AsyncioImportHook) -> None:
        self._loader = loader
        self._hook = hook

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        self._hook.loaded(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


# ---- result frames -------------------------------------------------------------------------


def _result_frame(ok: bool, value: Any) -> bytes:
    """The encoded ``result`` frame for an outcome of ``execute``."""
    if not ok:
        code = value.code if isinstance(value, CapabilityError) else "E5001"
        return _error_result(value, code)
    try:
        return _protocol.encode_frame({"type": "result", "ok": True, "output": value})
    except _protocol.EncodeError as exc:
        return _protocol.encode_frame({
            "type": "result",
            "ok": False,
            "error": {
                "code": "E5001",
                "message": "the output of execute() cannot be sent: %s" % _cut(str(exc), MAX_ERROR_MESSAGE),
                "exception": "magic.OutputError",
                "traceback": "",
            },
        })


def _error_result(exc: BaseException, code: str) -> bytes:
    """The encoded failed ``result`` frame for an exception that escaped ``execute``."""
    error: Dict[str, Any] = {"code": code, "exception": _type_name(exc)}
    if isinstance(exc, ControllerLoadError):
        error["message"] = "controller.py could not be loaded: %s" % exc
        error["exception"] = exc.exception or "magic.worker.ControllerLoadError"
        error["traceback"] = exc.traceback
    elif isinstance(exc, CapabilityError):
        hint = exc.hint
        error["message"] = exc.message + ("; " + hint if hint else "")
        error["traceback"] = _format_tb(exc)
        if exc.details:
            error["details"] = exc.details
    else:
        error["message"] = _describe(exc)
        error["traceback"] = _format_tb(exc)
    error["message"] = _cut(error["message"], MAX_ERROR_MESSAGE)
    frame = {"type": "result", "ok": False, "error": error}
    try:
        return _protocol.encode_frame(frame)
    except _protocol.EncodeError:
        # e.g. a message holding a lone surrogate: keep what certainly encodes.
        error.pop("details", None)
        for key in ("message", "traceback", "exception"):
            error[key] = str(error[key]).encode("utf-8", "replace").decode("utf-8")
        return _protocol.encode_frame(frame)


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    module = getattr(cls, "__module__", "builtins")
    if module in ("builtins", "__main__"):
        return cls.__qualname__
    if module.startswith("magic."):
        module = "magic"
    return "%s.%s" % (module, cls.__qualname__)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return "%s: %s" % (type(exc).__name__, text) if text else type(exc).__name__


def _format_tb(exc: BaseException) -> str:
    import traceback  # only on failures

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if len(text) > MAX_TRACEBACK:
        text = "…[truncated]\n" + text[-MAX_TRACEBACK:]
    return text


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…[truncated]"


# ---- inline mode ---------------------------------------------------------------------------


def _open_socket() -> socket.socket:
    raw = os.environ.get("MAGIC_SOCKET_FD", "")
    try:
        fd = int(raw)
    except ValueError:
        raise OSError("MAGIC_SOCKET_FD is %r, not a file descriptor number" % raw) from None
    if fd < 0:
        raise OSError("MAGIC_SOCKET_FD is negative")
    # Subprocesses the controller starts must not inherit the runtime connection.
    os.set_inheritable(fd, False)
    sock = socket.socket(fileno=fd)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise OSError("MAGIC_SOCKET_FD %d is not a Unix stream socket" % fd)
    return sock


def main() -> None:
    """Inline-mode entry point: serve the one execution on ``MAGIC_SOCKET_FD`` and exit.

    Loads the controller from ``MAGIC_PACKAGE_DIR`` (a load failure is reported as the
    execution's ``E5001`` result), then :func:`serve`, then ends the process with the exit
    status (see the module doc).
    """
    install_output_capture()
    try:
        sock = _open_socket()
    except OSError as exc:
        _fatal("cannot start: %s" % exc)
        os._exit(EXIT_SETUP)
    cls: Optional[Type[Controller]] = None
    load_error: Optional[BaseException] = None
    try:
        cls = load_controller(os.environ.get("MAGIC_PACKAGE_DIR", ""))
    except ControllerLoadError as exc:
        load_error = exc
    try:
        code = serve(sock, cls, load_error)
    except BaseException as exc:  # a bug here must still end the process
        _fatal("internal error: %s\n%s" % (_describe(exc), _format_tb(exc)))
        code = EXIT_INTERNAL
    _flush_real_streams()
    os._exit(code)


def _flush_real_streams() -> None:
    for stream in (sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


if __name__ == "__main__":
    main()
