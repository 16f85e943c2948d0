"""Exceptions a controller sees when a capability call fails.

Owns: the mapping from the runtime's public error codes (``E2001`` … ``E5003``) to exception
classes, and the wording that tells a controller author how to fix a denial.

Must never: decide whether a call is allowed. The runtime's broker decides; these classes only
carry its answer back into the controller.

Every failed capability call raises a :class:`CapabilityError` (or one of its subclasses)
carrying the runtime's ``code``, ``message`` and ``details``::

    from magic import CapabilityDenied, BackendUnavailable

    try:
        rows = await self.db.query("orders", where={"customer_id": cid})
    except CapabilityDenied as exc:      # any E2xxx
        self.log.warning("orders not readable", code=exc.code)
        rows = []
    except BackendUnavailable:           # E5003: database, cache or queue is down
        raise                            # the caller gets E5003 (HTTP 503)

If a ``CapabilityError`` escapes ``execute``, the execution fails with *its* code and details
(e.g. ``E2004``, HTTP 403) instead of the generic ``E5001``.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Type

__all__ = [
    "MagicError",
    "CapabilityError",
    "CapabilityDenied",
    "CapabilityNotDeclared",
    "EgressDenied",
    "SecretDenied",
    "TableDenied",
    "QueueDenied",
    "CacheDenied",
    "RawSqlDenied",
    "EgressAddressDenied",
    "BackendUnavailable",
    "RuntimeDisconnected",
    "HttpStatusError",
    "error_from_wire",
]


class MagicError(Exception):
    """Base class of every exception the SDK raises on its own account."""


class CapabilityError(MagicError):
    """A capability call failed; raised by every ``await self.<capability>.<op>(…)``.

    Attributes:
        code: the runtime's public error code, e.g. ``"E2004"``.
        message: the runtime's explanation, e.g. ``"table orders is not in the contract's
            db:read tables"``.
        details: a dict with more context (may be empty). Denials usually carry
            ``capability``, ``target`` and ``allow_with`` (the contract entry that would
            allow the call).

    ``str(exc)`` is ``"[code] message"`` followed, when the runtime said how, by what to add
    to ``contract.yaml`` to allow the call.
    """

    def __init__(self, code: str, message: str, details: Optional[Mapping[str, Any]] = None):
        self.code = str(code)
        self.message = str(message)
        self.details: Dict[str, Any] = dict(details) if details else {}
        super().__init__(self.code, self.message, self.details)

    @property
    def hint(self) -> Optional[str]:
        """What to declare in ``contract.yaml`` to allow this call, or ``None`` if unknown."""
        allow_with = self.details.get("allow_with")
        if not allow_with:
            return None
        return (
            "to allow it, declare `- %s` under `capabilities:` in contract.yaml "
            "(merge it into an existing entry for the same capability) and redeploy" % allow_with
        )

    def __str__(self) -> str:
        text = "[%s] %s" % (self.code, self.message)
        hint = self.hint
        if hint:
            text += "; " + hint
        return text

    def __repr__(self) -> str:
        return "%s(%r, %r, %r)" % (type(self).__name__, self.code, self.message, self.details)

    # Exceptions are pickled by their args; keep them reconstructible.
    def __reduce__(self):
        return (type(self), (self.code, self.message, self.details))


class CapabilityDenied(CapabilityError):
    """The contract (or policy) does not allow this call: any ``E2xxx`` code (HTTP 403).

    Fix it by declaring the capability in ``contract.yaml``; ``str(exc)`` says what to add
    when the runtime knows.
    """


class CapabilityNotDeclared(CapabilityDenied):
    """``E2001``: the capability is not declared in the contract at all."""


class EgressDenied(CapabilityDenied):
    """``E2002``: the URL's host is not in ``http:egress`` ``allow``."""


class SecretDenied(CapabilityDenied):
    """``E2003``: the secret key is not in ``secrets:read`` ``keys``."""


class TableDenied(CapabilityDenied):
    """``E2004``: the table is not in the ``db:read`` / ``db:write`` ``tables``."""


class QueueDenied(CapabilityDenied):
    """``E2005``: the queue is not in ``queue:publish`` / ``queue:subscribe`` ``queues``."""


class CacheDenied(CapabilityDenied):
    """``E2006``: the cache key is outside the declared ``prefix``, or the TTL is above ``max_ttl``."""


class RawSqlDenied(CapabilityDenied):
    """``E2007``: ``db:rawsql`` is not declared, or not approved by the runtime's policy."""


class EgressAddressDenied(CapabilityDenied):
    """``E2008``: the host resolved to a private or reserved address."""


class BackendUnavailable(CapabilityError):
    """``E5003``: the backing service (database, cache, queue) is unavailable (HTTP 503).

    Usually transient. Letting it escape ``execute`` makes the execution fail with ``E5003``.
    """


class RuntimeDisconnected(CapabilityError):
    """The runtime closed the connection; no further capability call can succeed.

    This happens when the execution was killed (timeout) or the runtime shut down. The worker
    ends the execution right after; there is nothing useful to do but return.
    """

    def __init__(self, message: str = "the runtime closed the connection", details=None):
        super().__init__("E5001", message, details)

    def __reduce__(self):
        return (type(self), (self.message, self.details))


class HttpStatusError(MagicError):
    """Raised by :meth:`magic.Response.raise_for_status` for a 4xx or 5xx response.

    Attributes:
        response: the :class:`magic.Response`.
    """

    def __init__(self, response: Any):
        self.response = response
        super().__init__("HTTP %s from %s" % (response.status, response.url or "the server"))


_BY_CODE: Dict[str, Type[CapabilityError]] = {
    "E2001": CapabilityNotDeclared,
    "E2002": EgressDenied,
    "E2003": SecretDenied,
    "E2004": TableDenied,
    "E2005": QueueDenied,
    "E2006": CacheDenied,
    "E2007": RawSqlDenied,
    "E2008": EgressAddressDenied,
    "E5003": BackendUnavailable,
}


def error_from_wire(code: str, message: str, details: Optional[Mapping[str, Any]] = None) -> CapabilityError:
    """Build the exception for a failed ``reply`` frame: the most specific class for ``code``.

    Unknown ``E2xxx`` codes become :class:`CapabilityDenied`; any other unknown code becomes a
    plain :class:`CapabilityError`.
    """
    cls = _BY_CODE.get(code)
    if cls is None:
        cls = CapabilityDenied if str(code).startswith("E2") else CapabilityError
    return cls(code, message, details)
