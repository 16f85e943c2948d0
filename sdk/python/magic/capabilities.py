"""The ``self.db``, ``self.http``, ``self.secrets``, ``self.queue``, ``self.cache``,
``self.metrics`` and ``self.log`` objects a controller uses.

Owns: turning each method call into one ``call`` frame (or, for metrics and logs, one
fire-and-forget frame) with the arguments ``docs/protocol.md`` lists, argument checks that
catch author mistakes early (with a message saying what is wrong), and wrapping results
(:class:`Response`).

Must never: talk to a database, the network, a secret store or a queue itself, or decide
whether a call is allowed. Everything goes to the runtime, whose broker checks it against the
contract, performs it and audits it. These checks are conveniences, not security.

Every capability method is a coroutine: ``await`` it. A failed call raises
:class:`magic.CapabilityError` (see :mod:`magic.errors`).
"""

from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Dict, Iterator, List, Optional, Union

from .errors import HttpStatusError

__all__ = [
    "Db",
    "Http",
    "Response",
    "Headers",
    "Secrets",
    "Queue",
    "Cache",
    "Metrics",
    "Log",
]

Duration = Union[int, float, datetime.timedelta]

_METRIC_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_LOG_LEVELS = ("debug", "info", "warning", "error")


def _seconds(value: Duration, what: str) -> float:
    """Seconds in ``value`` (a number of seconds or a ``timedelta``); must be positive."""
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError("%s must be a number of seconds or a datetime.timedelta, not %s" % (what, type(value).__name__))
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("%s must be a positive duration, got %r" % (what, value))
    return seconds


def _check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError("%s must be a non-empty string, not %r" % (what, value))
    return value


class _Capability:
    """Shared plumbing: each instance holds the execution's connection to the runtime."""

    _capability = ""

    def __init__(self, channel: Any):
        self._channel = channel

    async def _call(self, op: str, args: Dict[str, Any]) -> Any:
        return await self._channel.call(self._capability, op, args)


class Db(_Capability):
    """Structured database access: ``self.db``.

    Needs ``db:read: { tables: [...] }`` for :meth:`query` / :meth:`query_one`,
    ``db:write: { tables: [...] }`` for :meth:`insert` / :meth:`update` / :meth:`delete`, and
    ``db:rawsql`` (policy-approved) for :meth:`raw`. The table name is checked against the
    contract; no SQL is parsed.

    ``where`` is a dict of column → value; conditions are ``AND``-ed and a plain value means
    equality. For other comparisons give ``{"op": OP, "value": V}`` with OP one of ``<``,
    ``<=``, ``>``, ``>=``, ``!=``, ``in`` (V a list), ``like``, ``is_null`` (V true/false)::

        rows = await self.db.query(
            "invoices",
            where={"customer_id": cid, "amount": {"op": ">=", "value": 100}},
            columns=["id", "amount"],
            order_by="-created_at",
            limit=10,
        )
    """

    _capability = "db"

    @staticmethod
    def _select_args(table, where, columns, order_by, limit, offset) -> Dict[str, Any]:
        args: Dict[str, Any] = {"table": _check_name(table, "table")}
        if where is not None:
            if not isinstance(where, Mapping):
                raise TypeError("where must be a dict of column -> value, not %s" % type(where).__name__)
            args["where"] = dict(where)
        if columns is not None:
            if isinstance(columns, str):
                columns = [columns]
            args["columns"] = list(columns)
        if order_by is not None:
            args["order_by"] = order_by if isinstance(order_by, str) else list(order_by)
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise ValueError("limit must be a non-negative integer, got %r" % (limit,))
            args["limit"] = limit
        if offset is not None:
            if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
                raise ValueError("offset must be a non-negative integer, got %r" % (offset,))
            args["offset"] = offset
        return args

    async def query(
        self,
        table: str,
        where: Optional[Mapping[str, Any]] = None,
        columns: Optional[Sequence[str]] = None,
        order_by: Union[str, Sequence[str], None] = None,
        limit: Optional[int] = None,
        offset: Optional[int] = None,
    ) -> List[Dict[str, Any]]:
        """Rows of ``table`` matching ``where``, as a list of dicts (column → value).

        Args:
            table: table name; must be in the contract's ``db:read`` ``tables``.
            where: column → value (or ``{"op", "value"}``), ``AND``-ed. ``None``: every row.
            columns: columns to return (default: all).
            order_by: ``"column"``, ``"-column"`` (descending) or a list of those.
            limit: at most this many rows.
            offset: skip this many rows first.
        """
        return await self._call("query", self._select_args(table, where, columns, order_by, limit, offset))

    async def query_one(
        self,
        table: str,
        where: Optional[Mapping[str, Any]] = None,
        columns: Optional[Sequence[str]] = None,
        order_by: Union[str, Sequence[str], None] = None,
        limit: Optional[int] = None,
        offset: Optional[int] = None,
    ) -> Optional[Dict[str, Any]]:
        """The first row matching ``where`` as a dict, or ``None`` when there is none.

        Same arguments as :meth:`query`; needs ``db:read``.
        """
        return await self._call("query_one", self._select_args(table, where, columns, order_by, limit, offset))

    async def insert(self, table: str, values: Union[Mapping[str, Any], Sequence[Mapping[str, Any]]]) -> Dict[str, Any]:
        """Insert one row (a dict) or several (a list of dicts) into ``table``.

        Needs ``db:write`` on ``table``. Returns ``{"rows_affected": n}``, plus
        ``"last_insert_id"`` when the database reports one.
        """
        if isinstance(values, Mapping):
            payload: Any = dict(values)
        elif isinstance(values, (list, tuple)) and all(isinstance(v, Mapping) for v in values):
            payload = [dict(v) for v in values]
        else:
            raise TypeError("values must be a dict (one row) or a list of dicts (several rows)")
        return await self._call("insert", {"table": _check_name(table, "table"), "values": payload})

    @staticmethod
    def _filter(where, allow_all: bool, op: str) -> Dict[str, Any]:
        if where is not None and not isinstance(where, Mapping):
            raise TypeError("where must be a dict of column -> value, not %s" % type(where).__name__)
        if not where and not allow_all:
            raise ValueError(
                "db.%s without a where filter would touch every row; pass allow_all=True "
                "if that is what you mean" % op
            )
        args: Dict[str, Any] = {"where": dict(where or {})}
        if allow_all:
            args["allow_all"] = True
        return args

    async def update(
        self,
        table: str,
        values: Mapping[str, Any],
        where: Optional[Mapping[str, Any]] = None,
        allow_all: bool = False,
    ) -> Dict[str, Any]:
        """Set ``values`` (column → new value) on the rows of ``table`` matching ``where``.

        Needs ``db:write`` on ``table``. An empty ``where`` is refused unless
        ``allow_all=True``. Returns ``{"rows_affected": n}``.
        """
        if not isinstance(values, Mapping) or not values:
            raise TypeError("values must be a non-empty dict of column -> new value")
        args = {"table": _check_name(table, "table"), "values": dict(values)}
        args.update(self._filter(where, allow_all, "update"))
        return await self._call("update", args)

    async def delete(
        self,
        table: str,
        where: Optional[Mapping[str, Any]] = None,
        allow_all: bool = False,
    ) -> Dict[str, Any]:
        """Delete the rows of ``table`` matching ``where``.

        Needs ``db:write`` on ``table``. An empty ``where`` is refused unless
        ``allow_all=True``. Returns ``{"rows_affected": n}``.
        """
        args: Dict[str, Any] = {"table": _check_name(table, "table")}
        args.update(self._filter(where, allow_all, "delete"))
        return await self._call("delete", args)

    async def raw(self, sql: str, params: Optional[Sequence[Any]] = None) -> List[Dict[str, Any]]:
        """Run parameterized SQL; returns the rows (a list of dicts, empty for statements).

        Needs ``db:rawsql``, which production policy denies unless approved; the full query
        text is audited. Pass values in ``params``, never by formatting them into ``sql``.
        Placeholders follow the database: ``?`` for SQLite, ``$1`` for PostgreSQL.
        """
        if not isinstance(sql, str) or not sql.strip():
            raise TypeError("sql must be a non-empty string")
        if params is None:
            params = []
        elif isinstance(params, (str, bytes)) or not isinstance(params, Sequence):
            raise TypeError("params must be a list of values")
        return await self._call("raw", {"sql": sql, "params": list(params)})


class Headers(Mapping):
    """Response headers: a read-only mapping with case-insensitive names.

    ``response.headers["Content-Type"]`` and ``response.headers["content-type"]`` are the
    same. Iterating yields the lower-case names.
    """

    def __init__(self, raw: Optional[Mapping[str, Any]] = None):
        self._items: Dict[str, Any] = {}
        for name, value in (raw or {}).items():
            self._items[str(name).lower()] = value

    def __getitem__(self, name: str) -> Any:
        return self._items[str(name).lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return "Headers(%r)" % (self._items,)


_MISSING = object()


class Response:
    """What ``self.http.get/post/put/delete/request`` return.

    Attributes:
        status: HTTP status code (``int``).
        headers: :class:`Headers` (case-insensitive).
        text: the body as text.
        url: the URL that was requested.

    When the body is JSON, the response itself can be read like it: ``response["id"]``,
    ``"id" in response``, ``response.get("id")``. :meth:`json` returns the whole body.
    """

    def __init__(self, status: int, headers: Optional[Mapping[str, Any]] = None, text: str = "",
                 json_body: Any = None, url: str = ""):
        self.status = int(status)
        self.headers = Headers(headers)
        self.text = text if isinstance(text, str) else ""
        self.url = url
        self._json = json_body

    @classmethod
    def _from_wire(cls, value: Any, url: str) -> "Response":
        if not isinstance(value, Mapping) or not isinstance(value.get("status"), int):
            raise ValueError("malformed http reply from the runtime: %r" % (value,))
        return cls(value["status"], value.get("headers") or {}, value.get("text") or "", value.get("json"), url)

    @property
    def ok(self) -> bool:
        """``True`` for a status below 400."""
        return self.status < 400

    def raise_for_status(self) -> "Response":
        """Raise :class:`magic.HttpStatusError` for a 4xx/5xx status; return ``self`` otherwise."""
        if self.status >= 400:
            raise HttpStatusError(self)
        return self

    def json(self) -> Any:
        """The body parsed as JSON; raises ``ValueError`` when the body is not JSON."""
        if self._json is not None:
            return self._json
        return json.loads(self.text)

    def _body(self) -> Any:
        try:
            return self.json()
        except ValueError:
            raise TypeError(
                "the response body (HTTP %d) is not JSON; read response.text instead" % self.status
            ) from None

    def __getitem__(self, key: Any) -> Any:
        return self._body()[key]

    def __contains__(self, key: Any) -> bool:
        body = self._body()
        return key in body if isinstance(body, (dict, list)) else False

    def get(self, key: Any, default: Any = None) -> Any:
        """``response.json().get(key, default)`` for a JSON object body; ``default`` otherwise."""
        try:
            body = self.json()
        except ValueError:
            return default
        if isinstance(body, dict):
            return body.get(key, default)
        return default

    def __repr__(self) -> str:
        return "<Response %d %s>" % (self.status, self.url)


class Http(_Capability):
    """Outbound HTTP: ``self.http``. Needs ``http:egress: { allow: [host, "*.domain"] }``.

    The runtime makes the request (hosts outside ``allow`` → ``E2002``; hosts resolving to
    private addresses → ``E2008``) and returns a :class:`Response`. A 4xx/5xx status is *not*
    an exception; check ``response.status`` or call ``response.raise_for_status()``::

        response = await self.http.post(
            "https://api.stripe.com/v1/invoices",
            json={"amount": 100},
            headers={"Authorization": f"Bearer {key}"},
            timeout=5,
        )
        invoice_id = response["id"]
    """

    _capability = "http"

    async def request(
        self,
        method: str,
        url: str,
        json: Any = _MISSING,
        headers: Optional[Mapping[str, str]] = None,
        body: Optional[str] = None,
        timeout: Optional[Duration] = None,
    ) -> Response:
        """Send an HTTP request.

        Args:
            method: ``GET``, ``POST``, ``PUT``, ``DELETE``, ``PATCH``, ``HEAD``…
            url: absolute ``http://`` or ``https://`` URL.
            json: a JSON body (sets ``Content-Type: application/json``).
            headers: extra request headers (name → value, strings).
            body: a text body; not together with ``json``.
            timeout: seconds (or ``timedelta``) before the request fails.
        """
        if not isinstance(method, str) or not method.isalpha():
            raise ValueError("method must be an HTTP method name such as 'GET', got %r" % (method,))
        if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
            raise ValueError("url must be an absolute http:// or https:// URL, got %r" % (url,))
        args: Dict[str, Any] = {"method": method.upper(), "url": url}
        if headers:
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
                raise TypeError("headers must map header names to string values")
            args["headers"] = dict(headers)
        if json is not _MISSING and body is not None:
            raise ValueError("pass either json= or body=, not both")
        if json is not _MISSING:
            args["json"] = json
        if body is not None:
            if isinstance(body, (bytes, bytearray)):
                try:
                    body = bytes(body).decode("utf-8")
                except UnicodeDecodeError:
                    raise TypeError("body must be text (or UTF-8 bytes)") from None
            if not isinstance(body, str):
                raise TypeError("body must be a string; use json= for structured data")
            args["body"] = body
        if timeout is not None:
            args["timeout_ms"] = max(1, int(math.ceil(_seconds(timeout, "timeout") * 1000)))
        value = await self._call("request", args)
        return Response._from_wire(value, url)

    async def get(self, url: str, **kwargs: Any) -> Response:
        """``GET url``; keyword arguments as for :meth:`request`."""
        return await self.request("GET", url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> Response:
        """``POST url``; keyword arguments as for :meth:`request` (``json=``, ``body=``…)."""
        return await self.request("POST", url, **kwargs)

    async def put(self, url: str, **kwargs: Any) -> Response:
        """``PUT url``; keyword arguments as for :meth:`request`."""
        return await self.request("PUT", url, **kwargs)

    async def patch(self, url: str, **kwargs: Any) -> Response:
        """``PATCH url``; keyword arguments as for :meth:`request`."""
        return await self.request("PATCH", url, **kwargs)

    async def delete(self, url: str, **kwargs: Any) -> Response:
        """``DELETE url``; keyword arguments as for :meth:`request`."""
        return await self.request("DELETE", url, **kwargs)


class Secrets(_Capability):
    """Secret values: ``self.secrets``. Needs ``secrets:read: { keys: [KEY, ...] }``.

    Never log or return a secret: it would end up in logs or in the HTTP response.
    """

    _capability = "secrets"

    async def get(self, key: str) -> str:
        """The value of secret ``key`` (a string). Undeclared key → ``SecretDenied`` (E2003)."""
        return await self._call("get", {"key": _check_name(key, "key")})


class Queue(_Capability):
    """Message queues: ``self.queue``.

    Needs ``queue:publish: { queues: [...] }`` to publish and
    ``queue:subscribe: { queues: [...] }`` to receive and acknowledge. Delivery is
    at-least-once: a received message that is not acknowledged is delivered again later
    (with a higher ``attempt``).
    """

    _capability = "queue"

    async def publish(self, queue: str, message: Any) -> str:
        """Publish ``message`` (any JSON value) to ``queue``; returns the message id."""
        value = await self._call("publish", {"queue": _check_name(queue, "queue"), "message": message})
        if isinstance(value, Mapping):
            return value.get("id")
        return value

    async def receive(self, queue: str, wait: Optional[Duration] = None, max: Optional[int] = None) -> List[Dict[str, Any]]:
        """Receive up to ``max`` messages from ``queue``, waiting up to ``wait`` for the first.

        Returns a list (possibly empty) of dicts ``{"id", "message", "attempt"}``. Call
        :meth:`ack` with each ``id`` once it is handled.

        Args:
            wait: seconds (or ``timedelta``) to wait when the queue is empty; default: don't.
            max: most messages to return (default: the runtime's, 1).
        """
        args: Dict[str, Any] = {"queue": _check_name(queue, "queue")}
        if wait is not None:
            args["wait_ms"] = int(math.ceil(_seconds(wait, "wait") * 1000))
        if max is not None:
            if isinstance(max, bool) or not isinstance(max, int) or max < 1:
                raise ValueError("max must be a positive integer, got %r" % (max,))
            args["max"] = max
        return await self._call("receive", args)

    async def ack(self, queue: str, id: Any) -> None:
        """Acknowledge message ``id`` (or the message dict :meth:`receive` returned)."""
        if isinstance(id, Mapping):
            id = id.get("id")
        if not isinstance(id, str) or not id:
            raise TypeError("id must be the message id string from receive()")
        await self._call("ack", {"queue": _check_name(queue, "queue"), "id": id})


class Cache(_Capability):
    """A key-value cache: ``self.cache``.

    Needs ``cache:read: { prefix: "p:" }`` for :meth:`get` and
    ``cache:write: { prefix: "p:", max_ttl: 1h }`` for :meth:`set` / :meth:`delete`. Keys
    must start with the declared prefix; a TTL above ``max_ttl`` is refused (E2006).
    """

    _capability = "cache"

    async def get(self, key: str) -> Any:
        """The cached value for ``key``, or ``None`` when absent or expired."""
        return await self._call("get", {"key": _check_name(key, "key")})

    async def set(self, key: str, value: Any, ttl: Optional[Duration] = None) -> None:
        """Store ``value`` (any JSON value) under ``key``.

        Args:
            ttl: seconds (or ``timedelta``) until it expires, rounded up to whole seconds;
                default: the contract's ``max_ttl``.
        """
        args: Dict[str, Any] = {"key": _check_name(key, "key"), "value": value}
        if ttl is not None:
            args["ttl_s"] = int(math.ceil(_seconds(ttl, "ttl")))
        await self._call("set", args)

    async def delete(self, key: str) -> None:
        """Remove ``key`` (no error when it is absent). Needs ``cache:write``."""
        await self._call("delete", {"key": _check_name(key, "key")})


class Metrics:
    """Custom Prometheus metrics: ``self.metrics``. No capability needed; not ``async``.

    Each call sends one sample to the runtime, which exports it namespaced per controller.
    Names match ``^[a-zA-Z_][a-zA-Z0-9_]*$``; label values are turned into strings::

        self.metrics.counter("invoices_synced_total", labels={"plan": "pro"})
        self.metrics.histogram("invoice_sync_duration_seconds", self.elapsed_ms / 1000)
    """

    def __init__(self, channel: Any):
        self._channel = channel

    def _emit(self, kind: str, name: str, value: Any, labels: Optional[Mapping[str, Any]]) -> None:
        if not isinstance(name, str) or not _METRIC_NAME.match(name):
            raise ValueError("metric name %r must match ^[a-zA-Z_][a-zA-Z0-9_]*$" % (name,))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError("metric value must be a finite number, got %r" % (value,))
        frame: Dict[str, Any] = {"type": "metric", "kind": kind, "name": name, "value": value}
        if labels:
            if not all(isinstance(k, str) and _METRIC_NAME.match(k) for k in labels):
                raise ValueError("metric label names must match ^[a-zA-Z_][a-zA-Z0-9_]*$: %r" % (list(labels),))
            frame["labels"] = {k: str(v) for k, v in labels.items()}
        self._channel.emit(frame)

    def counter(self, name: str, value: Union[int, float] = 1, labels: Optional[Mapping[str, Any]] = None) -> None:
        """Add ``value`` (default 1, must be ≥ 0) to counter ``name``."""
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise ValueError("a counter only goes up; value must be >= 0, got %r" % (value,))
        self._emit("counter", name, value, labels)

    def gauge(self, name: str, value: Union[int, float], labels: Optional[Mapping[str, Any]] = None) -> None:
        """Set gauge ``name`` to ``value``."""
        self._emit("gauge", name, value, labels)

    def histogram(self, name: str, value: Union[int, float], labels: Optional[Mapping[str, Any]] = None) -> None:
        """Observe ``value`` in histogram ``name`` (e.g. a duration in seconds)."""
        self._emit("histogram", name, value, labels)


class Log:
    """Structured logging: ``self.log``. No capability needed; not ``async``.

    Each call becomes one JSON log line written by the runtime with the execution's request
    ID, controller and version; keyword arguments become extra fields::

        self.log.info("invoice synced", customer_id=cid, amount=amount)

    Messages are capped at 8 KiB and an execution's log lines at 1,000. Field values that are
    not JSON are logged as their ``str()``. ``print()`` also works: stdout lines are logged
    at ``info``, stderr lines at ``warning``.
    """

    def __init__(self, channel: Any):
        self._channel = channel

    def log(self, level: str, message: Any, **fields: Any) -> None:
        """Log ``message`` at ``level`` (``debug``, ``info``, ``warning`` or ``error``)."""
        if level not in _LOG_LEVELS:
            raise ValueError("level must be one of %s, got %r" % (", ".join(_LOG_LEVELS), level))
        self._channel.log(level, str(message), fields)

    def debug(self, message: Any, **fields: Any) -> None:
        """Log at ``debug``."""
        self.log("debug", message, **fields)

    def info(self, message: Any, **fields: Any) -> None:
        """Log at ``info``."""
        self.log("info", message, **fields)

    def warning(self, message: Any, **fields: Any) -> None:
        """Log at ``warning``."""
        self.log("warning", message, **fields)

    warn = warning

    def error(self, message: Any, **fields: Any) -> None:
        """Log at ``error``."""
        self.log("error", message, **fields)
