"""One execution's connection to the runtime, as the capability objects see it.

Owns: numbering ``call`` frames, the table of calls in flight and the futures that await
their ``reply``, fire-and-forget ``log``/``metric`` frames (also from other threads), the
per-execution log line cap, and refusing to send anything once the ``result`` is out or the
connection is gone.

Two implementations with one interface (``call``, ``emit``, ``log``, ``send_result``,
``connection_lost``, ``in_flight``):

- :class:`Channel` (asyncio): used when the controller imports ``asyncio``; calls run
  concurrently, a reader task in the worker hands replies to :meth:`Channel.deliver_reply`.
- :class:`DirectChannel` (no event loop): each ``await``ed call writes its ``call`` frame and
  reads its ``reply`` synchronously from the blocking socket, so a controller that never
  touches ``asyncio`` runs without one (no event loop, no tasks, ``asyncio`` not imported).

Must never: read from the socket outside a call (``Channel``: never at all; the worker's
reader task does) or send a ``result`` frame other than through ``send_result``, which the
worker calls exactly once.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Dict, Optional, Tuple

from . import _protocol
from .errors import RuntimeDisconnected, error_from_wire

#: The runtime keeps at most this many log lines per execution; the SDK stops sending after.
MAX_LOG_LINES = 1000
#: The runtime caps each message at 8 KiB; longer messages are cut here already.
MAX_LOG_MESSAGE = 8 * 1024


class Channel:
    """Frames of one execution, written on ``writer`` (an ``asyncio.StreamWriter``)."""

    def __init__(self, writer: "asyncio.StreamWriter", loop: "asyncio.AbstractEventLoop"):
        import asyncio  # only controllers that use asyncio get this channel

        self._writer = writer
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._next_id = 1
        self._pending: Dict[int, "asyncio.Future"] = {}
        self._drain_lock = asyncio.Lock()
        self._log_lines = 0
        # Set once the result is sent or the connection is lost: nothing more goes out.
        self._finished = False
        self._lost: Optional[BaseException] = None

    # ---- capability calls ------------------------------------------------------------------

    async def call(self, capability: str, op: str, args: Dict[str, Any]) -> Any:
        """Send one ``call`` frame and wait for its ``reply``; raise its error if it failed."""
        call_id, data = _call_frame(self, capability, op, args)
        future = self._loop.create_future()
        # The id stays known until its reply arrives, even if the caller stops waiting.
        self._pending[call_id] = future
        self._writer.write(data)
        try:
            await self._drain()
        except (ConnectionError, OSError) as exc:
            self.connection_lost("the runtime closed the connection (%s)" % exc)
            raise RuntimeDisconnected(str(self._lost)) from None
        return await future

    def deliver_reply(self, frame: Dict[str, Any]) -> None:
        """Resolve the call a ``reply`` frame answers.

        Raises :class:`magic._protocol.ProtocolViolation` for a malformed reply or one whose
        ``id`` is not a call in flight.
        """
        call_id, failed, outcome = reply_outcome(frame)
        future = self._pending.pop(call_id, None)
        if future is None:
            raise _protocol.ProtocolViolation("reply for id %d, which is not a call in flight" % call_id)
        if future.done():  # the caller was cancelled; nobody is waiting
            return
        if failed:
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    def connection_lost(self, reason: str) -> None:
        """The socket is gone: fail every call in flight and refuse new ones."""
        if self._lost is None:
            self._lost = RuntimeDisconnected(reason)
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(RuntimeDisconnected(reason))
                # Nobody may await it any more (the execution is being cancelled).
                future.exception()

    @property
    def in_flight(self) -> int:
        """Number of calls still waiting for their reply."""
        return len(self._pending)

    # ---- fire-and-forget frames ------------------------------------------------------------

    def emit(self, frame: Dict[str, Any]) -> None:
        """Send a frame that gets no reply (``log``, ``metric``); safe from any thread.

        Raises :class:`magic._protocol.EncodeError` if the frame cannot be encoded. Does
        nothing once the result is sent or the connection is lost.
        """
        data = _protocol.encode_frame(frame)
        if threading.get_ident() == self._loop_thread:
            self._write_nowait(data)
        else:
            try:
                self._loop.call_soon_threadsafe(self._write_nowait, data)
            except RuntimeError:  # the loop is closed: the execution is over
                pass

    def _write_nowait(self, data: bytes) -> None:
        if self._finished or self._lost is not None or self._writer.is_closing():
            return
        self._writer.write(data)

    def log(self, level: str, message: str, fields: Optional[Dict[str, Any]] = None) -> None:
        """Send one ``log`` frame; cuts the message to 8 KiB and stops after 1,000 lines.

        Field values that are not JSON are sent as their ``str()``.
        """
        if self._log_lines >= MAX_LOG_LINES:
            return
        self._log_lines += 1
        if len(message) > MAX_LOG_MESSAGE:
            message = message[:MAX_LOG_MESSAGE] + "…[truncated]"
        frame: Dict[str, Any] = {"type": "log", "level": level, "message": message}
        if fields:
            frame["fields"] = _jsonable(fields)
        try:
            self.emit(frame)
        except _protocol.EncodeError:
            # Only an oversize field or a string that is not valid Unicode gets here.
            frame["message"] = message.encode("utf-8", "replace").decode("utf-8")
            frame["fields"] = {"fields_dropped": "log fields could not be sent"}
            try:
                self.emit(frame)
            except _protocol.EncodeError:
                pass

    # ---- end of the execution --------------------------------------------------------------

    async def send_result(self, data: bytes) -> bool:
        """Send the encoded ``result`` frame (once) and flush; ``False`` if the connection is gone."""
        if self._finished:
            raise RuntimeError("result already sent")
        self._finished = True
        if self._lost is not None or self._writer.is_closing():
            return False
        self._writer.write(data)
        try:
            await self._drain()
        except (ConnectionError, OSError):
            return False
        return True

    async def _drain(self) -> None:
        # Python < 3.10 asserts when two coroutines drain one writer at once.
        async with self._drain_lock:
            await self._writer.drain()


def _jsonable(fields: Dict[str, Any]) -> Dict[str, Any]:
    """``fields`` with every value that is not JSON replaced by its ``str()``."""
    out: Dict[str, Any] = {}
    for key, value in fields.items():
        try:
            _protocol.dumps(value)
        except _protocol.EncodeError:
            value = str(value)
        out[str(key)] = value
    return out


def reply_outcome(frame: Dict[str, Any]) -> Tuple[int, bool, Any]:
    """``(id, failed, value or exception)`` of a ``reply`` frame.

    Raises :class:`magic._protocol.ProtocolViolation` for a malformed reply.
    """
    call_id = frame.get("id")
    if isinstance(call_id, bool) or not isinstance(call_id, int):
        raise _protocol.ProtocolViolation("reply without an integer id")
    ok = frame.get("ok")
    if ok is True:
        return call_id, False, frame.get("value")
    if ok is False:
        error = frame.get("error")
        if not isinstance(error, dict) or not isinstance(error.get("code"), str):
            raise _protocol.ProtocolViolation("failed reply %d without an error object with a code" % call_id)
        details = error.get("details")
        return call_id, True, error_from_wire(
            error["code"],
            str(error.get("message", "")),
            details if isinstance(details, dict) else None,
        )
    raise _protocol.ProtocolViolation("reply %d has no boolean ok" % call_id)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes from a blocking socket; fewer only when the stream ends first."""
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            break
        got += n
    return bytes(buf) if got == size else bytes(buf[:got])


def read_frame(sock: socket.socket) -> Optional[Dict[str, Any]]:
    """Next frame from the runtime on a blocking socket; ``None`` at a clean end of stream.

    Raises :class:`magic._protocol.ProtocolViolation` for a bad frame or a stream that ends
    inside one, and ``OSError`` when the socket fails.
    """
    header = recv_exactly(sock, _protocol.HEADER_SIZE)
    if not header:
        return None
    if len(header) < _protocol.HEADER_SIZE:
        raise _protocol.ProtocolViolation("the socket closed inside a frame header")
    length = _protocol.decode_length(header)
    body = recv_exactly(sock, length)
    if len(body) < length:
        raise _protocol.ProtocolViolation("the socket closed inside a %d-byte frame" % length)
    return _protocol.decode_body(body)


class ProtocolAbort(BaseException):
    """Raised into a controller running on a :class:`DirectChannel` when the runtime broke the
    protocol: the execution ends without a result. A ``BaseException`` so that a controller's
    ``except Exception`` does not swallow it (the worker checks the channel afterwards anyway)."""


class DirectChannel:
    """Frames of one execution on a blocking socket, without an event loop.

    A ``call`` sends its frame and reads frames until its ``reply`` arrives, so calls run one
    at a time (``asyncio.gather`` still works, sequentially). Fire-and-forget frames may be
    sent from any thread.
    """

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._lock = threading.Lock()
        self._next_id = 1
        self._in_call = False
        self._log_lines = 0
        self._finished = False
        self._lost: Optional[BaseException] = None
        #: Why the runtime broke the protocol (the execution then ends without a result).
        self.violation: Optional[str] = None

    @property
    def lost(self) -> Optional[str]:
        """Why the connection is gone, or ``None``."""
        return None if self._lost is None else str(self._lost)

    async def call(self, capability: str, op: str, args: Dict[str, Any]) -> Any:
        """Send one ``call`` frame and wait (blocking) for its ``reply``; raise its error if it failed."""
        if self.violation is not None:
            raise ProtocolAbort(self.violation)
        call_id, data = _call_frame(self, capability, op, args)
        try:
            self._send(data)
        except OSError as exc:
            self.connection_lost("the runtime closed the connection (%s)" % exc)
            raise RuntimeDisconnected(str(self._lost)) from None
        self._in_call = True
        try:
            try:
                reply = read_frame(self._sock)
                if reply is not None:
                    if reply["type"] != "reply":
                        raise _protocol.ProtocolViolation("unexpected %r frame during an execution" % reply["type"])
                    got_id, failed, outcome = reply_outcome(reply)
                    if got_id != call_id:
                        raise _protocol.ProtocolViolation("reply for id %d, which is not a call in flight" % got_id)
            except _protocol.ProtocolViolation as exc:
                self.violation = str(exc)
                raise ProtocolAbort(self.violation) from None
            except OSError:
                reply = None
        finally:
            self._in_call = False
        if reply is None:
            self.connection_lost("the runtime closed the socket")
            raise RuntimeDisconnected(str(self._lost))
        if failed:
            raise outcome
        return outcome

    def connection_lost(self, reason: str) -> None:
        """The socket is gone: refuse new calls."""
        if self._lost is None:
            self._lost = RuntimeDisconnected(reason)

    @property
    def in_flight(self) -> int:
        """Number of calls still waiting for their reply (0 or 1)."""
        return 1 if self._in_call else 0

    def _send(self, data: bytes) -> None:
        with self._lock:
            self._sock.sendall(data)

    def emit(self, frame: Dict[str, Any]) -> None:
        """Send a frame that gets no reply (``log``, ``metric``); safe from any thread.

        Raises :class:`magic._protocol.EncodeError` if the frame cannot be encoded. Does
        nothing once the result is sent or the connection is lost.
        """
        data = _protocol.encode_frame(frame)
        try:
            with self._lock:
                # Checked under the lock: nothing may follow the result frame.
                if self._finished or self._lost is not None:
                    return
                self._sock.sendall(data)
        except OSError as exc:
            self.connection_lost("the runtime closed the connection (%s)" % exc)

    log = Channel.log

    def send_result(self, data: bytes) -> bool:
        """Send the encoded ``result`` frame (once); ``False`` if the connection is gone."""
        with self._lock:
            if self._finished:
                raise RuntimeError("result already sent")
            self._finished = True
            if self._lost is not None:
                return False
            try:
                self._sock.sendall(data)
            except OSError:
                return False
        return True


def _call_frame(channel: Any, capability: str, op: str, args: Dict[str, Any]) -> Tuple[int, bytes]:
    """The next ``call`` frame of `channel` (its id and encoded bytes); refuses once the
    runtime is gone or the execution has returned, and arguments that cannot be sent."""
    if channel._lost is not None:
        raise RuntimeDisconnected(str(channel._lost))
    if channel._finished:
        raise RuntimeDisconnected("the execution has already returned its result")
    call_id = channel._next_id
    frame = {"type": "call", "id": call_id, "capability": capability, "op": op, "args": args}
    try:
        data = _protocol.encode_frame(frame)
    except _protocol.EncodeError as exc:
        raise TypeError("arguments of %s.%s cannot be sent: %s" % (capability, op, exc)) from None
    channel._next_id += 1
    return call_id, data
