"""Aggregations over the ledger for the dashboard, computed **in the database** (SQLAlchemy Core).

Every query filters ``kind IN (...) AND at_ms >= ... AND at_ms < ...`` first, which the
``(kind, at_ms, id)`` index serves, then groups in SQL; only the groups travel back. The
same statements run on SQLite and PostgreSQL (amounts live in the JSON text columns
``estimate`` / ``actual``; :func:`_amount` reads one metric out of them in each dialect).

What counts:

* **spend** is ``cost_micros`` of the records that charge: COMMITTED, EXPIRED (charged at the
  estimate) and CORRECTED (a late Commit's difference, possibly negative), so per subject
  and window the sums equal the counters (DESIGN.md, "Events and the ledger");
* **usage** of a metric (tokens, images) is the record's ``actual`` for COMMITTED and
  CORRECTED, its ``estimate`` for EXPIRED;
* **answers per minute**: a request answered ALLOW or WARN ends in one COMMITTED, RELEASED or
  EXPIRED record carrying that ``decision``; a DENY is one DENIED record.

Times are unix milliseconds in, unix seconds out; amounts are in units (micro-dollars for
``cost_usd``). Percentiles are nearest-rank: the value at rank ``ceil(p * n)`` of the ``n``
sorted daily totals, picked with window functions (``row_number``/``count`` over the tier),
so nothing but one row per tier leaves the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from quota_service.ledger.events import EventKind
from quota_service.ledger.schema import events
from quota_service.ledger.store import Ledger, translate_errors
from quota_service.policy.domain import Decision
from quota_service.policy.units import COST_METRIC

__all__ = [
    "DIMENSIONS",
    "DailyDistribution",
    "MinuteActivity",
    "SpendRow",
    "activity",
    "daily_distribution",
    "spend_by",
]

#: The records that charge money (and count usage).
CHARGING_KINDS = (int(EventKind.COMMITTED), int(EventKind.EXPIRED), int(EventKind.CORRECTED))
#: The one record a request answered ALLOW or WARN ends in (CORRECTED is an extra one).
ANSWER_KINDS = (int(EventKind.COMMITTED), int(EventKind.RELEASED), int(EventKind.EXPIRED))
#: Grouping dimensions: name -> the column expression (``model`` is ``provider/model``).
DIMENSIONS = ("tier", "feature", "provider", "model")
#: Metrics read out of the JSON amounts besides ``cost_usd``.
AMOUNT_METRICS = ("tokens", "images")

MINUTE_MS = 60_000
DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class MinuteActivity:
    start: int  # unix seconds
    allow: int
    warn: int
    deny: int
    cost_micros: int


@dataclass(frozen=True, slots=True)
class SpendRow:
    key: str
    cost_micros: int
    tokens: int
    images: int
    records: int


@dataclass(frozen=True, slots=True)
class DailyDistribution:
    tier: str
    subject_days: int
    p50: int  # units
    p95: int
    max: int


def _amount(ledger: Ledger, column: sa.Column[Any], metric: str) -> sa.ColumnElement[Any]:
    """``column``'s (JSON text ``{"metric": units}``) amount of ``metric``, 0 when absent."""
    if ledger.dialect == "postgresql":
        value: sa.ColumnElement[Any] = sa.cast(sa.cast(column, sa.JSON)[metric].as_string(), sa.BigInteger)
    else:
        value = sa.func.json_extract(column, f'$."{metric}"')
    return sa.func.coalesce(value, 0)


def _usage(ledger: Ledger, metric: str) -> sa.ColumnElement[Any]:
    """A charging record's usage of ``metric`` (units; cost_usd: micro-dollars)."""
    if metric == COST_METRIC:
        return events.c.cost_micros
    return sa.case(
        (events.c.kind == int(EventKind.EXPIRED), _amount(ledger, events.c.estimate, metric)),
        else_=_amount(ledger, events.c.actual, metric),
    )


def _window(since_ms: int, until_ms: int) -> list[sa.ColumnElement[bool]]:
    return [events.c.at_ms >= since_ms, events.c.at_ms < until_ms]


async def activity(ledger: Ledger, *, since_ms: int, until_ms: int) -> list[MinuteActivity]:
    """Answers and spend per minute in ``[since_ms, until_ms)``; minutes without records
    are absent (the caller fills them)."""
    minute = (events.c.at_ms // MINUTE_MS).label("minute")
    decision = events.c.decision
    answered = events.c.kind.in_(ANSWER_KINDS)
    query = (
        sa.select(
            minute,
            sa.func.sum(sa.case((sa.and_(answered, decision == int(Decision.ALLOW.value)), 1), else_=0)),
            sa.func.sum(sa.case((sa.and_(answered, decision == int(Decision.WARN.value)), 1), else_=0)),
            sa.func.sum(sa.case((events.c.kind == int(EventKind.DENIED), 1), else_=0)),
            sa.func.sum(sa.case((events.c.kind.in_(CHARGING_KINDS), events.c.cost_micros), else_=0)),
        )
        .where(events.c.kind.in_((*ANSWER_KINDS, int(EventKind.CORRECTED), int(EventKind.DENIED))))
        .where(*_window(since_ms, until_ms))
        .group_by(minute)
        .order_by(minute)
    )
    rows = await _all(ledger, "analytics_activity", query)
    return [MinuteActivity(int(m) * 60, int(a or 0), int(w or 0), int(d or 0), int(c or 0)) for m, a, w, d, c in rows]


def _dimension(ledger: Ledger, name: str) -> sa.ColumnElement[Any]:
    if name == "model":
        return (events.c.provider + "/" + events.c.model).label("key")
    if name not in DIMENSIONS:
        raise ValueError(f"unknown dimension {name!r}")
    return events.c[name].label("key")


async def spend_by(ledger: Ledger, dimension: str, *, since_ms: int, until_ms: int) -> list[SpendRow]:
    """Spend, tokens, images and records per value of ``dimension`` (one of
    :data:`DIMENSIONS`), highest spend first."""
    key = _dimension(ledger, dimension)
    cost = sa.func.sum(events.c.cost_micros).label("cost")
    query = (
        sa.select(
            key,
            cost,
            sa.func.sum(_usage(ledger, "tokens")),
            sa.func.sum(_usage(ledger, "images")),
            sa.func.count(),
        )
        .where(events.c.kind.in_(CHARGING_KINDS), *_window(since_ms, until_ms))
        .group_by(key)
        .order_by(cost.desc(), key)
    )
    rows = await _all(ledger, f"analytics_by_{dimension}", query)
    return [SpendRow(str(k), int(c or 0), int(t or 0), int(i or 0), int(n or 0)) for k, c, t, i, n in rows]


async def daily_distribution(
    ledger: Ledger, metric: str, *, since_ms: int, until_ms: int, day_offset_ms: int = 0
) -> list[DailyDistribution]:
    """Per tier: every (subject, day) total of ``metric`` in the period (days start at
    ``day_offset_ms`` past UTC midnight: the policy timezone's offset) reduced to its
    count, p50, p95 and max, in units."""
    day = ((events.c.at_ms + day_offset_ms) // DAY_MS).label("day")
    daily = (
        sa.select(events.c.tier, events.c.subject, day, sa.func.sum(_usage(ledger, metric)).label("total"))
        .where(events.c.kind.in_(CHARGING_KINDS), *_window(since_ms, until_ms))
        .group_by(events.c.tier, events.c.subject, day)
        .subquery("daily")
    )
    ranked = sa.select(
        daily.c.tier,
        daily.c.total,
        sa.func.row_number().over(partition_by=daily.c.tier, order_by=daily.c.total).label("rank"),
        sa.func.count().over(partition_by=daily.c.tier).label("n"),
    ).subquery("ranked")

    def at(percent: int) -> sa.ColumnElement[Any]:
        # nearest rank: ceil(percent / 100 * n), in integer arithmetic
        return sa.func.max(sa.case((ranked.c.rank == (ranked.c.n * percent + 99) // 100, ranked.c.total), else_=None))

    query = (
        sa.select(ranked.c.tier, sa.func.max(ranked.c.n), at(50), at(95), sa.func.max(ranked.c.total))
        .group_by(ranked.c.tier)
        .order_by(ranked.c.tier)
    )
    rows = await _all(ledger, "analytics_daily", query)
    return [DailyDistribution(str(t), int(n or 0), int(p or 0), int(q or 0), int(m or 0)) for t, n, p, q, m in rows]


async def _all(ledger: Ledger, operation: str, query: sa.Select[Any]) -> Sequence[tuple[Any, ...]]:
    with translate_errors(operation):
        async with ledger.transaction(write=False) as conn:
            result = await conn.execute(query)
            return [tuple(row) for row in result.all()]
