"""Read the ledger for the lifecycle tools (SQLAlchemy Core, SQLite or PostgreSQL).

The thin I/O side of :mod:`quota_service.lifecycle.simulate`: the usage records and admin
changes in the ledger's time order ``(at_ms, id)``, in keyset pages of :data:`PAGE_ROWS`
(never the whole ledger in memory), as :class:`~quota_service.lifecycle.simulate.RecordedRow`
values. Read only: nothing is written and no migration runs (a ledger without the schema is
a :class:`~quota_service.ledger.errors.LedgerError`). Errors are the ledger's own
(:func:`~quota_service.ledger.store.translate_errors`): :class:`LedgerUnavailable` when the
store does not answer, :class:`LedgerError` otherwise.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from quota_service.ledger.errors import LedgerConfigError, LedgerError
from quota_service.ledger.schema import events
from quota_service.ledger.store import Ledger, ledger_from_url, translate_errors
from quota_service.lifecycle.simulate import RecordedRow, RecordKind

__all__ = ["PAGE_ROWS", "open_ledger", "recorded_rows"]

#: Rows per keyset page.
PAGE_ROWS = 10_000
_KINDS = tuple(int(k) for k in RecordKind)
_COLUMNS = (
    events.c.kind,
    events.c.at_ms,
    events.c.id,
    events.c.subject,
    events.c.tier,
    events.c.feature,
    events.c.provider,
    events.c.model,
    events.c.reservation_id,
    events.c.estimate,
    events.c.actual,
    events.c.cost_micros,
    events.c.decision,
    events.c.reason,
    events.c.detail,
)


def open_ledger(url: str) -> Ledger:
    """The ledger at ``url`` for reading. A SQLite file must exist (opening a missing one
    would create an empty ledger and report nothing). :class:`LedgerConfigError` otherwise."""
    text = url.strip()
    if text.startswith("sqlite"):
        try:
            database = make_url(text).database or ""
        except sa.exc.ArgumentError as exc:
            raise LedgerConfigError(f"ledger URL {text!r} is not a URL: {exc}") from exc
        if database and database != ":memory:" and not Path(database).expanduser().is_file():
            raise LedgerConfigError(f"no ledger at {url}: {database} does not exist")
    ledger = ledger_from_url(text)
    if ledger is None:
        raise LedgerConfigError("the lifecycle tools read a ledger: --ledger none has nothing to read")
    return ledger


_loads = json.loads


def _amounts(text: str) -> dict[str, int]:
    """``{"metric": units}`` as the ledger writes it (``ledger.store._amounts_json``)."""
    value = _loads(text) if text else {}
    if type(value) is not dict:
        raise ValueError(f"amounts {text[:40]!r} are not a JSON object")
    return value


def _detail(text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


_ADMIN = RecordKind.ADMIN_CHANGE
_DENIED = RecordKind.DENIED
_KIND_OF = {int(k): k for k in RecordKind}


def _row(values: Any) -> RecordedRow:
    kind_number, at_ms, event_id, subject, tier, feature, provider, model, reservation_id = values[:9]
    estimate, actual, cost, decision, reason, detail_text = values[9:]
    kind = _KIND_OF[kind_number]
    if kind is _ADMIN:
        detail = _detail(detail_text)
        return RecordedRow(
            kind,
            at_ms,
            event_id,
            subject,
            action=str(detail.get("action", "")),
            before=detail.get("before"),
            after=detail.get("after"),
        )
    reserved = 0
    if kind is not _DENIED and detail_text:
        found = _loads(detail_text).get("reserved_at_ms", 0)
        reserved = found if isinstance(found, int) else 0
    return RecordedRow(
        kind,
        at_ms,
        event_id,
        subject,
        tier,
        feature,
        provider,
        model,
        reservation_id,
        _amounts(estimate),
        _amounts(actual),
        cost,
        decision,
        reason,
        reserved,
    )


async def recorded_rows(
    ledger: Ledger, *, since_ms: int = 0, until_ms: int = 0, page_rows: int = PAGE_ROWS
) -> AsyncIterator[list[RecordedRow]]:
    """Pages of rows, oldest first by ``(at_ms, id)``: every ADMIN_CHANGE before ``since_ms``
    (the admin state the period starts from), then the usage records and admin changes
    with ``since_ms <= at_ms < until_ms`` (``until_ms`` 0: no end). The caller widens
    ``until_ms`` by the records' settling horizon to see late settlements."""
    where: list[sa.ColumnElement[bool]] = [events.c.kind.in_(_KINDS)]
    if until_ms:
        where.append(events.c.at_ms < until_ms)
    if since_ms:
        prior = [events.c.kind == int(RecordKind.ADMIN_CHANGE), events.c.at_ms < since_ms]
        async for page in _pages(ledger, prior, page_rows):
            yield page
        where.append(events.c.at_ms >= since_ms)
    async for page in _pages(ledger, where, page_rows):
        yield page


async def _pages(
    ledger: Ledger, where: list[sa.ColumnElement[bool]], page_rows: int
) -> AsyncIterator[list[RecordedRow]]:
    """Keyset pages on ``(at_ms, id)``: each a query of its own, none held open while the
    caller works on a page (a shared PostgreSQL sees short reads only)."""
    after: tuple[int, str] | None = None
    while True:
        query = sa.select(*_COLUMNS).where(*where)
        if after is not None:
            query = query.where(
                sa.tuple_(events.c.at_ms, events.c.id) > sa.tuple_(sa.literal(after[0]), sa.literal(after[1]))
            )
        query = query.order_by(events.c.at_ms, events.c.id).limit(page_rows)
        with translate_errors("lifecycle_read"):
            async with ledger.transaction(write=False) as conn:
                rows = (await conn.execute(query)).all()
        try:
            page = [_row(r) for r in rows]
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise LedgerError(f"damaged row in the ledger: {exc}") from exc
        if page:
            yield page
        if len(rows) < page_rows:
            return
        after = (int(rows[-1][1]), str(rows[-1][2]))
