"""The ledger's errors, a branch of :mod:`quota_service.errors`' tree.

::

    QuotaServiceError
    ├── InvalidRequest
    │   (a bad page token, a negative page size: raised as InvalidRequest itself)
    ├── NotFound
    │   └── EventNotFound        a tail resumed from an id the ledger does not hold (never
    │                            written, or past retention)                -> NOT_FOUND
    ├── LedgerOff                an event read on a server whose ledger is off -> FAILED_PRECONDITION
    └── LedgerError              the ledger store answered with something that cannot be
        │                        right (a constraint other than the id, a schema mismatch):
        │                        a bug, not an outage                        -> INTERNAL
        ├── LedgerUnavailable    SQLite/PostgreSQL unreachable, refusing connections,
        │                        shutting down or timing out (an outage): retry later;
        │                        records wait in their outbox meanwhile       -> UNAVAILABLE
        └── LedgerConfigError    an unusable ledger URL, webhook endpoint or secret
                                                                             -> (refused at start)

Driver exceptions (SQLAlchemy, aiosqlite, asyncpg, OSError) are translated into these in
exactly one place, :func:`quota_service.ledger.store.translate_errors`.
"""

from __future__ import annotations

from quota_service.errors import NotFound, QuotaServiceError

__all__ = ["EventNotFound", "LedgerConfigError", "LedgerError", "LedgerOff", "LedgerUnavailable"]


class LedgerError(QuotaServiceError):
    """The ledger store failed in a way a retry will not fix (a bug or damage)."""


class LedgerUnavailable(LedgerError):
    """The ledger store cannot be reached right now (down, restarting, timing out).

    Nothing was written by the failed call (each call is one transaction), so the caller
    retries the same records later; idempotent inserts make the retry safe."""


class LedgerConfigError(LedgerError):
    """A ledger URL, webhook endpoint or webhook secret that cannot be used."""


class EventNotFound(NotFound):
    """The event id to resume after is not in the ledger (never written, or removed by
    retention): the caller cannot resume without a possible gap and must start over."""


class LedgerOff(QuotaServiceError):
    """Events were asked of a server whose ledger is turned off (``--ledger-url none``)."""
