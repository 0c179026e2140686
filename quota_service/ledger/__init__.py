"""The usage ledger: events, their store, and their delivery (DESIGN.md, "Events and the ledger").

* :mod:`~quota_service.ledger.events`: the domain :class:`Event` and its id scheme.
* :mod:`~quota_service.ledger.convert`: Event <-> ``quota.v1.Event`` and proto3 JSON.
* :mod:`~quota_service.ledger.store`: :class:`Ledger` over SQLite or PostgreSQL
  (:func:`ledger_from_url`), alembic migrations in ``migrations/``.
* :mod:`~quota_service.ledger.webhooks`: Standard Webhooks delivery, persisted, retried.

The ledger imports the core (``quota_service.policy``), never the reverse, and nothing of
``store/`` or ``server/``.
"""

from __future__ import annotations

from quota_service.ledger.errors import EventNotFound, LedgerConfigError, LedgerError, LedgerUnavailable
from quota_service.ledger.events import (
    Event,
    EventKind,
    LimitSnapshot,
    Threshold,
    new_event_id,
    record_id,
    threshold_event_id,
)
from quota_service.ledger.store import Ledger, TailPage, ledger_from_url

__all__ = [
    "Event",
    "EventKind",
    "EventNotFound",
    "Ledger",
    "LedgerConfigError",
    "LedgerError",
    "LedgerUnavailable",
    "LimitSnapshot",
    "TailPage",
    "Threshold",
    "ledger_from_url",
    "new_event_id",
    "record_id",
    "threshold_event_id",
]
