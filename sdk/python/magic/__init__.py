"""Magic Runtime SDK for Python controllers.

A controller is one class deriving :class:`Controller`, decorated with :func:`contract`,
with an ``async def execute(self, input)``::

    from magic import Controller, contract

    @contract("./contract.yaml")
    class InvoiceSync(Controller):
        async def execute(self, input):
            customer = await self.db.query_one("customers", where={"id": input["customer_id"]})
            return {"status": "completed", "request_id": self.request_id}

Each execution runs in its own worker process. Every ``self.db``, ``self.http``,
``self.secrets``, ``self.queue`` and ``self.cache`` call is a message to the runtime, which
checks it against the contract (default deny), performs it, audits it and answers. A denied
or failed call raises a :class:`CapabilityError` subclass carrying the error code.

Standard library only; Python 3.9 or newer.
"""

from .capabilities import Headers, Response
from .controller import Controller, contract
from .errors import (
    BackendUnavailable,
    CacheDenied,
    CapabilityDenied,
    CapabilityError,
    CapabilityNotDeclared,
    EgressAddressDenied,
    EgressDenied,
    HttpStatusError,
    MagicError,
    QueueDenied,
    RawSqlDenied,
    RuntimeDisconnected,
    SecretDenied,
    TableDenied,
)

__version__ = "0.1.0"

__all__ = [
    "Controller",
    "contract",
    "Response",
    "Headers",
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
]
