"""Turning a controller's ``print()``, ``sys.stdout``/``sys.stderr`` writes and standard
``logging`` records into ``log`` frames.

Owns: line buffering of the replaced ``sys.stdout`` / ``sys.stderr``, the level each stream
maps to (stdout → ``info``, stderr → ``warning``), and a ``logging.Handler`` that forwards
records at their level.

Must never: write to the real file descriptors 1 and 2 (the worker keeps the original
``sys.__stderr__`` for its own protocol errors), or hold more than one partial line per stream.
"""

from __future__ import annotations

import io
import logging
import threading
from typing import Any, Callable, List, Optional, Tuple

from ._channel import MAX_LOG_MESSAGE

# (level, message, fields) → None
Sink = Callable[[str, str, dict], None]

#: Lines logged before a sink is attached (e.g. printed while importing the controller).
_MAX_EARLY_LINES = 100


class LogSinkSwitch:
    """Where captured lines go; lines before :meth:`attach` are kept (bounded) and replayed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sink: Optional[Sink] = None
        self._early: List[Tuple[str, str, dict]] = []

    def attach(self, sink: Optional[Sink]) -> None:
        """Send lines to ``sink`` from now on (``None``: buffer again), replaying early lines."""
        with self._lock:
            self._sink = sink
            early, self._early = self._early, []
        if sink is not None:
            for line in early:
                sink(*line)

    def take_early(self) -> List[Tuple[str, str, dict]]:
        """Remove and return the lines buffered while no sink was attached."""
        with self._lock:
            early, self._early = self._early, []
        return early

    def __call__(self, level: str, message: str, fields: dict) -> None:
        with self._lock:
            sink = self._sink
            if sink is None:
                if len(self._early) < _MAX_EARLY_LINES:
                    self._early.append((level, message, fields))
                return
        sink(level, message, fields)


class CapturedStream(io.TextIOBase):
    """A text stream that turns each written line into a log line at ``level``."""

    def __init__(self, sink: Callable[[str, str, dict], None], level: str, name: str):
        super().__init__()
        self._sink = sink
        self._level = level
        self._name = name
        self._partial = ""
        self._lock = threading.Lock()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "replace"

    @property
    def name(self) -> str:
        return "<magic %s>" % self._name

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: Any) -> int:
        if not isinstance(text, str):
            raise TypeError("write() argument must be str, not %s" % type(text).__name__)
        lines: List[str] = []
        with self._lock:
            data = self._partial + text
            parts = data.split("\n")
            self._partial = parts.pop()
            lines.extend(parts)
            # An endless line without a newline must not grow without bound.
            while len(self._partial) >= MAX_LOG_MESSAGE:
                lines.append(self._partial[:MAX_LOG_MESSAGE])
                self._partial = self._partial[MAX_LOG_MESSAGE:]
        for line in lines:
            self._emit(line)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            line, self._partial = self._partial, ""
        if line:
            self._emit(line)

    def _emit(self, line: str) -> None:
        line = line.rstrip("\r")
        if line:
            self._sink(self._level, line, {"stream": self._name})


class LogFrameHandler(logging.Handler):
    """Forwards standard ``logging`` records as log lines at the matching level."""

    def __init__(self, sink: Callable[[str, str, dict], None]):
        super().__init__(logging.DEBUG)
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.levelno >= logging.ERROR:
                level = "error"
            elif record.levelno >= logging.WARNING:
                level = "warning"
            elif record.levelno >= logging.INFO:
                level = "info"
            else:
                level = "debug"
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            self._sink(level, message, {"logger": record.name})
        except Exception:  # logging must never break the controller
            self.handleError(record)


def install(sink: Callable[[str, str, dict], None]) -> Tuple[CapturedStream, CapturedStream]:
    """Replace ``sys.stdout``/``sys.stderr`` and route root ``logging`` to ``sink``."""
    import sys

    out = CapturedStream(sink, "info", "stdout")
    err = CapturedStream(sink, "warning", "stderr")
    sys.stdout = out
    sys.stderr = err
    root = logging.getLogger()
    if not any(isinstance(h, LogFrameHandler) for h in root.handlers):
        root.addHandler(LogFrameHandler(sink))
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    return out, err
