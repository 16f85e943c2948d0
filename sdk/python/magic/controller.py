"""``Controller``, the base class of every controller, and the ``@contract`` decorator.

Owns: what ``self`` offers inside ``execute`` (capabilities, ``request_id``, ``elapsed_ms``,
``temp_dir``) and recording the contract path on the class.

Must never: read the contract file or enforce it. The runtime parses the contract at deploy
time and its broker enforces it on every call; the path recorded here is for tools.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, Optional, Type, TypeVar

from .capabilities import Cache, Db, Http, Log, Metrics, Queue, Secrets
from .errors import CapabilityNotDeclared

__all__ = ["Controller", "contract", "ExecutionContext"]

C = TypeVar("C", bound=type)


def contract(path: str) -> Callable[[C], C]:
    """Class decorator naming the controller's contract file, relative to ``controller.py``::

        @contract("./contract.yaml")
        class InvoiceSync(Controller):
            ...

    Records ``path`` as ``cls.__magic_contract__`` (and the resolved absolute path as
    ``cls.__magic_contract_file__`` when the module's file is known). The runtime requires it
    on the one ``Controller`` subclass of a package.
    """
    if not isinstance(path, str) or not path:
        raise TypeError("@contract needs the contract file path, e.g. @contract(\"./contract.yaml\")")

    def decorate(cls: C) -> C:
        if not isinstance(cls, type):
            raise TypeError("@contract decorates a class deriving magic.Controller")
        cls.__magic_contract__ = path  # type: ignore[attr-defined]
        module = __import__("sys").modules.get(cls.__module__)
        module_file = getattr(module, "__file__", None)
        if module_file:
            cls.__magic_contract_file__ = os.path.normpath(  # type: ignore[attr-defined]
                os.path.join(os.path.dirname(os.path.abspath(module_file)), path)
            )
        return cls

    return decorate


class ExecutionContext:
    """Everything one execution gives its controller instance (built by the worker)."""

    def __init__(
        self,
        channel: Any,
        request_id: str,
        controller: str = "",
        version: str = "",
        timeout_ms: Optional[int] = None,
        temp_dir: Optional[str] = None,
        started: Optional[float] = None,
    ):
        self.channel = channel
        self.request_id = request_id
        self.controller = controller
        self.version = version
        self.timeout_ms = timeout_ms
        self.temp_dir = temp_dir
        self.started = time.monotonic() if started is None else started
        self.db = Db(channel)
        self.http = Http(channel)
        self.secrets = Secrets(channel)
        self.queue = Queue(channel)
        self.cache = Cache(channel)
        self.metrics = Metrics(channel)
        self.log = Log(channel)


def _from_context(name: str, doc: str) -> property:
    def getter(self: "Controller") -> Any:
        return getattr(self._magic_context(), name)

    getter.__name__ = name
    return property(getter, doc=doc)


class Controller:
    """Base class of a controller: derive from it, decorate with ``@contract``, and write
    ``async def execute(self, input: dict) -> dict``::

        from magic import Controller, contract

        @contract("./contract.yaml")
        class Hello(Controller):
            async def execute(self, input):
                self.log.info("greeting", name=input["name"])
                return {"greeting": f"Hello, {input['name']}!"}

    A fresh instance serves each execution. ``input`` has already passed the contract's
    input schema; the returned value must be JSON and must pass the output schema. Raising
    fails the execution with ``E5001`` (or, for a :class:`magic.CapabilityError`, with its
    code).

    Inside ``execute``, ``self`` offers:

    - ``self.db``: :class:`magic.capabilities.Db` (``db:read``, ``db:write``, ``db:rawsql``)
    - ``self.http``: :class:`magic.capabilities.Http` (``http:egress``)
    - ``self.secrets``: :class:`magic.capabilities.Secrets` (``secrets:read``)
    - ``self.queue``: :class:`magic.capabilities.Queue` (``queue:publish``, ``queue:subscribe``)
    - ``self.cache``: :class:`magic.capabilities.Cache` (``cache:read``, ``cache:write``)
    - ``self.metrics``: :class:`magic.capabilities.Metrics` (always allowed)
    - ``self.log``: :class:`magic.capabilities.Log` (always allowed)
    - ``self.request_id``, ``self.elapsed_ms``, ``self.temp_dir`` (``fs:temp``)

    Capability methods are coroutines (``await`` them; run several at once with
    ``asyncio.gather``). They work only while ``execute`` runs, in the worker's event loop,
    not from other threads.
    """

    _magic_ctx: Optional[ExecutionContext] = None

    async def execute(self, input: Dict[str, Any]) -> Any:
        """Handle one execution: take the validated input, return the output (JSON)."""
        raise NotImplementedError("%s must define `async def execute(self, input)`" % type(self).__name__)

    # ---- wiring (used by the worker) -------------------------------------------------------

    def _magic_bind(self, context: ExecutionContext) -> None:
        self._magic_ctx = context

    def _magic_context(self) -> ExecutionContext:
        context = self._magic_ctx
        if context is None:
            raise RuntimeError(
                "capabilities are only available while execute() runs (not in __init__ or at import)"
            )
        return context

    db = _from_context("db", "Structured database access (:class:`magic.capabilities.Db`).")
    http = _from_context("http", "Outbound HTTP (:class:`magic.capabilities.Http`).")
    secrets = _from_context("secrets", "Secret values (:class:`magic.capabilities.Secrets`).")
    queue = _from_context("queue", "Message queues (:class:`magic.capabilities.Queue`).")
    cache = _from_context("cache", "Key-value cache (:class:`magic.capabilities.Cache`).")
    metrics = _from_context("metrics", "Custom metrics (:class:`magic.capabilities.Metrics`).")
    log = _from_context("log", "Structured log lines (:class:`magic.capabilities.Log`).")
    request_id = _from_context("request_id", "The execution's request ID (the ``X-Request-ID``).")

    @property
    def elapsed_ms(self) -> float:
        """Milliseconds since this execution started (a float)."""
        return (time.monotonic() - self._magic_context().started) * 1000.0

    @property
    def timeout_ms(self) -> Optional[int]:
        """The contract's timeout in milliseconds; the execution is killed when it is reached."""
        return self._magic_context().timeout_ms

    @property
    def temp_dir(self) -> str:
        """A private, empty directory for temporary files, removed after the execution.

        Needs ``fs:temp: { size: 10M }`` in the contract (the size caps what may be written;
        beyond it writes fail and the execution ends with ``E3003``). Without it, reading
        this attribute raises :class:`magic.CapabilityNotDeclared` (``E2001``). While the
        execution runs, Python's ``tempfile`` module also uses this directory.
        """
        temp_dir = self._magic_context().temp_dir
        if not temp_dir:
            raise CapabilityNotDeclared(
                "E2001",
                "fs:temp is not declared in the contract, so there is no temp directory",
                {"capability": "fs:temp", "allow_with": "fs:temp: { size: 10M }"},
            )
        return temp_dir


def controller_classes(namespace: Dict[str, Any], module_name: str) -> "list[Type[Controller]]":
    """The ``Controller`` subclasses defined (not just imported) in a module's namespace."""
    found = []
    for value in namespace.values():
        if (
            isinstance(value, type)
            and issubclass(value, Controller)
            and value is not Controller
            and getattr(value, "__module__", None) == module_name
            and value not in found
        ):
            found.append(value)
    return found
