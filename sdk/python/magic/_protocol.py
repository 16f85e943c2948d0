"""Frame encoding and decoding of the worker protocol (``docs/protocol.md``).

Owns: the 4-byte big-endian length prefix, the 16 MiB frame limit, strict JSON encoding
(no NaN, no lone surrogates: the runtime's parser rejects both) and the checks on frames the
runtime sends.

Must never: perform I/O or interpret what a frame asks for. ``worker.py`` does the talking.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Dict

#: Largest frame body either side may send (16 MiB).
MAX_FRAME = 16 * 1024 * 1024

#: Frame types the runtime sends to a worker.
RUNTIME_FRAME_TYPES = frozenset({"execute", "reply"})

_HEADER = struct.Struct(">I")
HEADER_SIZE = _HEADER.size


class ProtocolViolation(Exception):
    """The runtime sent something the protocol does not allow; the worker must stop."""


class EncodeError(ValueError):
    """A value cannot be sent: not JSON-serializable, or the frame would exceed 16 MiB."""


def dumps(value: Any) -> str:
    """Serialize ``value`` as strict JSON text, raising :class:`EncodeError` when it cannot be.

    ``NaN``/``Infinity``, non-string keys that JSON would silently coerce (other than ``int``,
    ``float``, ``bool`` and ``None``), and strings that are not valid Unicode are refused.
    """
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        # Lone surrogates survive json.dumps but are not UTF-8; the runtime would reject them.
        text.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise EncodeError(_explain(exc)) from None
    return text


def _explain(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "value is nested too deeply (or contains a reference cycle)"
    if isinstance(exc, UnicodeEncodeError):
        return "a string is not valid Unicode (it holds a lone surrogate)"
    text = str(exc)
    if "Circular reference" in text:
        return "value contains a reference cycle"
    if "Out of range float" in text:
        return "NaN and Infinity are not JSON (%s)" % text
    return text


def encode_frame(frame: Dict[str, Any]) -> bytes:
    """Length-prefix the JSON of ``frame``; :class:`EncodeError` if unserializable or > 16 MiB."""
    body = dumps(frame).encode("utf-8")
    if len(body) > MAX_FRAME:
        raise EncodeError(
            "message is %d bytes; the worker protocol allows at most %d (16 MiB)" % (len(body), MAX_FRAME)
        )
    return _HEADER.pack(len(body)) + body


def decode_length(header: bytes) -> int:
    """Length from a 4-byte header; :class:`ProtocolViolation` above 16 MiB."""
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ProtocolViolation(
            "frame length %d exceeds the 16 MiB limit (%d bytes)" % (length, MAX_FRAME)
        )
    return length


def decode_body(body: bytes) -> Dict[str, Any]:
    """Parse a frame body sent by the runtime and check its ``type``.

    Raises :class:`ProtocolViolation` when the body is not UTF-8 JSON holding one object with
    a known ``type`` (``execute`` or ``reply``).
    """
    try:
        frame = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolViolation("frame is not valid UTF-8 JSON: %s" % exc) from None
    if not isinstance(frame, dict):
        raise ProtocolViolation("frame is not a JSON object but %s" % type(frame).__name__)
    kind = frame.get("type")
    if not isinstance(kind, str):
        raise ProtocolViolation("frame has no string \"type\" field")
    if kind not in RUNTIME_FRAME_TYPES:
        raise ProtocolViolation("unknown frame type %r from the runtime" % kind[:64])
    return frame


def _reject_constant(name: str) -> Any:
    raise ValueError("%s is not JSON" % name)
