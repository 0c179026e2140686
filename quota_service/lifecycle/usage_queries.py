"""The ledger reads behind recommend and estimates (SQLAlchemy Core; SQLite and PostgreSQL).

* :func:`daily_totals`: per (tier, subject, day) the usage of each metric, summed **in the
  database** over the charging records: COMMITTED and CORRECTED ``actual``, EXPIRED
  ``estimate`` (``cost_usd``: ``cost_micros``), as the dashboard's analytics count it;
* :func:`day_signals`: per (subject, tier, day) the THRESHOLD_CROSSED events (warn, block,
  cap; the subject's own limits) and the DENIED records by a limit, counted in the database;
* :func:`committed_usage`: the COMMITTED records' estimates and actuals, in keyset pages.

Days are ``(at_ms + offset_ms) // 86,400,000`` (:class:`~quota_service.lifecycle.recommend.Period`).
Errors are the ledger's (:func:`~quota_service.ledger.store.translate_errors`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import sqlalchemy as sa

from quota_service.ledger import analytics
from quota_service.ledger.events import EventKind
from quota_service.ledger.schema import events
from quota_service.ledger.store import Ledger, translate_errors
from quota_service.lifecycle.estimates import CommittedUsage
from quota_service.lifecycle.recommend import DAY_MS, DailyTotal, DaySignal, Period
from quota_service.policy.domain import GLOBAL_SCOPE, Reason

__all__ = ["LIMIT_DENIALS", "committed_usage", "daily_totals", "day_signals"]

#: DENIED reasons that mean "at a limit" (not a stop, an outage, a feature or a price).
LIMIT_DENIALS = (Reason.BLOCK_THRESHOLD.value, Reason.LIMIT_EXCEEDED.value, Reason.HARD_STOP.value)
_PAGE_ROWS = 5000


def _day(period: Period) -> sa.ColumnElement[Any]:
    return ((events.c.at_ms + period.offset_ms) // DAY_MS).label("day")


async def _all(ledger: Ledger, operation: str, query: sa.Select[Any]) -> Sequence[Any]:
    with translate_errors(operation):
        async with ledger.transaction(write=False) as conn:
            rows: Sequence[Any] = (await conn.execute(query)).all()
            return rows


async def daily_totals(ledger: Ledger, metrics: Sequence[str], period: Period, *, tier: str = "") -> list[DailyTotal]:
    """Per (tier, subject, day) of ``period`` with a charging record: each metric's units."""
    day = _day(period)
    where = [
        events.c.kind.in_(analytics.CHARGING_KINDS),
        events.c.at_ms >= period.since_ms,
        events.c.at_ms < period.until_ms,
        events.c.subject != GLOBAL_SCOPE,
    ]
    if tier:
        where.append(events.c.tier == tier)
    query = (
        sa.select(events.c.tier, events.c.subject, day, *(sa.func.sum(analytics.usage_of(ledger, m)) for m in metrics))
        .where(*where)
        .group_by(events.c.tier, events.c.subject, day)
    )
    return [
        DailyTotal(str(r[0]), str(r[1]), int(r[2]), {m: int(v or 0) for m, v in zip(metrics, r[3:], strict=True)})
        for r in await _all(ledger, "recommend_daily", query)
    ]


async def day_signals(ledger: Ledger, period: Period) -> list[DaySignal]:
    """Per (subject, tier, day) of ``period``: THRESHOLD_CROSSED events and DENIED records by a limit."""
    day = _day(period)
    crossed = sa.and_(events.c.kind == int(EventKind.THRESHOLD_CROSSED), events.c.threshold > 0)
    denied = sa.and_(events.c.kind == int(EventKind.DENIED), events.c.reason.in_(LIMIT_DENIALS))
    query = (
        sa.select(
            events.c.subject,
            events.c.tier,
            day,
            sa.func.sum(sa.case((crossed, 1), else_=0)),
            sa.func.sum(sa.case((denied, 1), else_=0)),
        )
        .where(
            events.c.kind.in_((int(EventKind.THRESHOLD_CROSSED), int(EventKind.DENIED))),
            events.c.at_ms >= period.since_ms,
            events.c.at_ms < period.until_ms,
            events.c.subject != GLOBAL_SCOPE,
            sa.or_(crossed, denied),
        )
        .group_by(events.c.subject, events.c.tier, day)
    )
    return [
        DaySignal(str(r[0]), str(r[1]), int(r[2]), int(r[3] or 0), int(r[4] or 0))
        for r in await _all(ledger, "recommend_signals", query)
    ]


def _amounts(text: str) -> dict[str, int]:
    value = json.loads(text) if text else {}
    return value if isinstance(value, dict) else {}


async def committed_usage(ledger: Ledger, period: Period, *, tier: str = "") -> AsyncIterator[list[CommittedUsage]]:
    """The COMMITTED records of ``period`` (``tier``: only its), in keyset pages by ``(at_ms, id)``."""
    columns = (
        events.c.at_ms,
        events.c.id,
        events.c.tier,
        events.c.feature,
        events.c.provider,
        events.c.model,
        events.c.estimate,
        events.c.actual,
    )
    where = [
        events.c.kind == int(EventKind.COMMITTED),
        events.c.at_ms >= period.since_ms,
        events.c.at_ms < period.until_ms,
    ]
    if tier:
        where.append(events.c.tier == tier)
    after: tuple[int, str] | None = None
    while True:
        query = sa.select(*columns).where(*where)
        if after is not None:
            query = query.where(
                sa.tuple_(events.c.at_ms, events.c.id) > sa.tuple_(sa.literal(after[0]), sa.literal(after[1]))
            )
        rows = await _all(ledger, "estimates", query.order_by(events.c.at_ms, events.c.id).limit(_PAGE_ROWS))
        yield [CommittedUsage(r[2], r[3], r[4], r[5], _amounts(r[6]), _amounts(r[7])) for r in rows]
        if len(rows) < _PAGE_ROWS:
            return
        after = (int(rows[-1][0]), str(rows[-1][1]))
