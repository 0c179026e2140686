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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from quota_service.ledger.events import EventKind
from quota_service.ledger.schema import events
from quota_service.ledger.store import Ledger, translate_errors
from quota_service.policy.domain import Decision
from quota_service.policy.units import COST_METRIC, METRIC_NAME

__all__ = [
    "CHARGING_KINDS",
    "DIMENSIONS",
    "DailyDistribution",
    "MinuteActivity",
    "SpendRow",
    "activity",
    "daily_distribution",
    "group_spend",
    "spend_by",
    "usage_of",
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
    """``column``'s (JSON text ``{"metric": units}``) amount of ``metric``, 0 when absent
    (``metric`` a metric name: it is spelled into the JSON path)."""
    if not METRIC_NAME.fullmatch(metric):
        raise ValueError(f"not a metric name: {metric!r}")
    if ledger.dialect == "postgresql":
        value: sa.ColumnElement[Any] = sa.cast(sa.cast(column, sa.JSON)[metric].as_string(), sa.BigInteger)
    else:
        value = sa.func.json_extract(column, f'$."{metric}"')
    return sa.func.coalesce(value, 0)


def usage_of(ledger: Ledger, metric: str) -> sa.ColumnElement[Any]:
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


async def spend_by(ledger: Ledger, *, since_ms: int, until_ms: int) -> dict[str, list[SpendRow]]:
    """Spend, tokens, images and records per value of each of :data:`DIMENSIONS` (``model``
    as ``provider/model``), highest spend first. One scan: the database groups the period's
    records by (tier, feature, provider, model), a few dozen groups, which are then summed
    per dimension here."""
    query = (
        sa.select(
            events.c.tier,
            events.c.feature,
            events.c.provider,
            events.c.model,
            sa.func.sum(events.c.cost_micros),
            sa.func.sum(usage_of(ledger, "tokens")),
            sa.func.sum(usage_of(ledger, "images")),
            sa.func.count(),
        )
        .where(events.c.kind.in_(CHARGING_KINDS), *_window(since_ms, until_ms))
        .group_by(events.c.tier, events.c.feature, events.c.provider, events.c.model)
    )
    return group_spend(await _all(ledger, "analytics_spend", query))


def group_spend(rows: Iterable[Sequence[Any]]) -> dict[str, list[SpendRow]]:
    """(tier, feature, provider, model, cost, tokens, images, records) groups summed per
    value of each of :data:`DIMENSIONS`, highest spend first (what :func:`spend_by` and the
    rollups' :func:`~quota_service.ledger.rollup.spend` answer)."""
    totals: dict[str, dict[str, list[int]]] = {name: {} for name in DIMENSIONS}
    for tier, feature, provider, model, cost, tokens, images, records in rows:
        keys = {"tier": tier, "feature": feature, "provider": provider, "model": f"{provider}/{model}"}
        for name, key in keys.items():
            row = totals[name].setdefault(str(key), [0, 0, 0, 0])
            row[0] += int(cost or 0)
            row[1] += int(tokens or 0)
            row[2] += int(images or 0)
            row[3] += int(records or 0)
    return {
        name: sorted((SpendRow(key, *values) for key, values in groups.items()), key=lambda r: (-r.cost_micros, r.key))
        for name, groups in totals.items()
    }


async def daily_distribution(
    ledger: Ledger, metrics: Sequence[str], *, since_ms: int, until_ms: int, day_offset_ms: int = 0
) -> dict[str, list[DailyDistribution]]:
    """Per metric and tier: every (subject, day) total in the period (days start at
    ``day_offset_ms`` past UTC midnight: the policy timezone's offset) reduced to its count,
    p50, p95 and max, in units. One scan of the period; the ranking runs in the database."""
    day = ((events.c.at_ms + day_offset_ms) // DAY_MS).label("day")
    daily = (
        sa.select(
            events.c.tier,
            events.c.subject,
            day,
            *(sa.func.sum(usage_of(ledger, metric)).label(f"total_{i}") for i, metric in enumerate(metrics)),
        )
        .where(events.c.kind.in_(CHARGING_KINDS), *_window(since_ms, until_ms))
        .group_by(events.c.tier, events.c.subject, day)
        .subquery("daily")
    )
    ranks = []
    for i in range(len(metrics)):
        total = daily.c[f"total_{i}"]
        ranks += [total, sa.func.row_number().over(partition_by=daily.c.tier, order_by=total).label(f"rank_{i}")]
    ranked = sa.select(daily.c.tier, sa.func.count().over(partition_by=daily.c.tier).label("n"), *ranks).subquery()

    def at(i: int, percent: int) -> sa.ColumnElement[Any]:
        # nearest rank: ceil(percent / 100 * n), in integer arithmetic
        rank, total = ranked.c[f"rank_{i}"], ranked.c[f"total_{i}"]
        return sa.func.max(sa.case((rank == (ranked.c.n * percent + 99) // 100, total), else_=None))

    columns: list[sa.ColumnElement[Any]] = []
    for i in range(len(metrics)):
        columns += [at(i, 50), at(i, 95), sa.func.max(ranked.c[f"total_{i}"])]
    query = sa.select(ranked.c.tier, sa.func.max(ranked.c.n), *columns).group_by(ranked.c.tier).order_by(ranked.c.tier)
    found: dict[str, list[DailyDistribution]] = {metric: [] for metric in metrics}
    for row in await _all(ledger, "analytics_daily", query):
        tier, n = str(row[0]), int(row[1] or 0)
        for i, metric in enumerate(metrics):
            p50, p95, top = (int(v or 0) for v in row[2 + 3 * i : 5 + 3 * i])
            found[metric].append(DailyDistribution(tier, n, p50, p95, top))
    return found


async def _all(ledger: Ledger, operation: str, query: sa.Select[Any]) -> Sequence[tuple[Any, ...]]:
    with translate_errors(operation):
        async with ledger.transaction(write=False) as conn:
            result = await conn.execute(query)
            return [tuple(row) for row in result.all()]
