"""The analytics rollups: what the dashboard's period views read instead of every record.

A month of a busy ledger is millions of rows; grouping them for every ask takes seconds.
Two rollups, kept by :func:`catch_up` (the server runs it every few seconds, and before
every analytics read, so a read sees every record stored before it):

* ``rollup_spend``: per quarter hour and (tier, feature, provider, model), the charging
  records' spend, tokens, images and count: a month is a few thousand rows. Each step is
  one ``INSERT ... SELECT ... GROUP BY ... ON CONFLICT DO UPDATE`` over the events after the
  cursor (the ``relay_cursors`` row ``rollup``, an events ``seq``, which grows in commit
  order, so no record is skipped): the database sums them, no row comes back to Python.
* ``rollup_day_values``: per closed day of the policy's timezone, metric and tier, how many
  subjects' day totals have each value (to three significant digits, exact below 1,000
  units: :func:`shown`), the distribution p50 / p95 / max are read from: a few thousand
  rows per day and tier however many subjects there are. A day is reduced once it has
  closed (``rollup_closed_days``), and again when records of it arrive later (they waited
  in an outbox, or were restored). Today, and a day not reduced yet, are read from their
  records at the ask.
* ``rollup_month_values``: the same counts merged per calendar month (each day's counts added
  as it is reduced, its old ones taken back when it is reduced again): a period that holds a
  month's every closed day (this month so far, a whole past month) reads one row per
  distinct value instead of one per day and value.

What counts is what :mod:`quota_service.ledger.analytics` counts over the raw records (its
functions are the definition, and the tests compare the two): spend is ``cost_micros`` of
COMMITTED, EXPIRED and CORRECTED records; usage of a metric is the ``actual`` (COMMITTED,
CORRECTED) or the ``estimate`` (EXPIRED).

**Exactly once.** Each step holds the ledger's write lock (SQLite ``BEGIN IMMEDIATE``, a
PostgreSQL advisory lock) and moves the cursor in the transaction that adds the records:
two replicas never add the same record twice.

Days are counted in the timezone the caller gives; days reduced before a policy changes its
timezone keep the bounds they had. Retention (:meth:`Ledger.delete_older_than`) leaves the
rollups alone: past periods stay reportable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import date, datetime, time, tzinfo

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from quota_service.background import survived
from quota_service.ledger import analytics
from quota_service.ledger.analytics import DailyDistribution
from quota_service.ledger.errors import LedgerError
from quota_service.ledger.schema import (
    events,
    relay_cursors,
    rollup_closed_days,
    rollup_day_values,
    rollup_month_values,
    rollup_spend,
)
from quota_service.ledger.store import ROLLUP_LOCK_KEY, Ledger, translate_errors

__all__ = [
    "CURSOR",
    "METRICS",
    "QUARTER_MS",
    "RollupKeeper",
    "catch_up",
    "day_number",
    "day_range",
    "distribution",
    "shown",
    "spend",
]

log = logging.getLogger(__name__)

#: The ``relay_cursors`` row of the rollups.
CURSOR = "rollup"
#: The metrics a day's totals hold (``cost_usd`` in micro-dollars).
METRICS = ("cost_usd", "tokens", "images")
QUARTER_MS = 900_000
#: Events (by ``seq``) added to ``rollup_spend`` per transaction.
SEQ_CHUNK = 100_000
#: Closed days reduced to their distribution per pass.
DAYS_PER_PASS = 40
_SPEND_SUMS = ("cost_micros", "tokens", "images", "records")
_Counts = dict[tuple[str, str], Counter[int]]  # (metric, tier) -> {day total: subjects}


def day_number(at_ms: int, tz: tzinfo) -> int:
    """The calendar day of ``at_ms`` in ``tz``, as its date's ordinal."""
    return datetime.fromtimestamp(at_ms / 1000, tz).date().toordinal()


def day_bounds(day: int, tz: tzinfo) -> tuple[int, int]:
    """``[start, end)`` of a day (a date's ordinal) in ``tz``, unix milliseconds."""
    first, after = date.fromordinal(day), date.fromordinal(day + 1)
    return (
        int(datetime.combine(first, time(), tz).timestamp() * 1000),
        int(datetime.combine(after, time(), tz).timestamp() * 1000),
    )


def day_range(since_ms: int, until_ms: int, tz: tzinfo) -> tuple[int, int]:
    """The days ``[first, end)`` (ordinals in ``tz``) that ``[since_ms, until_ms)`` covers."""
    return day_number(since_ms, tz), day_number(max(since_ms, until_ms - 1), tz) + 1


def shown(units: int) -> int:
    """A day total as the distribution keeps it: exact below 1,000 units, else to three
    significant digits (rounded half away from zero), so a day's distribution has a few
    thousand values per tier however many subjects there are. Monotonic, so a percentile
    of the kept values is the kept value of the percentile."""
    size = abs(units)
    if size < 1000:
        return units
    step = int(10 ** (len(str(size)) - 3))
    rounded = (size + step // 2) // step * step
    return rounded if units > 0 else -rounded


async def catch_up(ledger: Ledger, tz: tzinfo, *, now_ms: int | None = None, seq_chunk: int = SEQ_CHUNK) -> int:
    """Add every event stored after the cursor to ``rollup_spend`` (marking the closed days
    late records belong to for another reduction), then reduce the closed days not yet
    reduced (at most :data:`DAYS_PER_PASS`); how many events the cursor moved past."""
    today = day_number(ledger.clock_ms() if now_ms is None else now_ms, tz)
    passed = 0
    while True:
        with translate_errors("rollup"):
            async with ledger.write_transaction(lock_key=ROLLUP_LOCK_KEY) as conn:
                moved, more = await _spend_step(conn, ledger, tz, today, seq_chunk)
        passed += moved
        if not more:
            break
    with translate_errors("rollup"):
        async with ledger.write_transaction(lock_key=ROLLUP_LOCK_KEY) as conn:
            await _close_days(conn, ledger, tz, today)
    return passed


async def _spend_step(
    conn: AsyncConnection, ledger: Ledger, tz: tzinfo, today: int, seq_chunk: int
) -> tuple[int, bool]:
    """One ``INSERT ... SELECT ... GROUP BY ... ON CONFLICT DO UPDATE``: the database sums
    the next events itself (no row comes back here)."""
    found = (
        await conn.execute(sa.select(relay_cursors.c.position).where(relay_cursors.c.source == CURSOR))
    ).scalar_one_or_none()
    cursor = int(found) if found else 0
    top = int((await conn.execute(sa.select(sa.func.coalesce(sa.func.max(events.c.seq), 0)))).scalar_one())
    if top <= cursor:
        return 0, False
    end = min(top, cursor + seq_chunk)
    # ``kind + 0``: the seq range is the index to use (SQLite, without statistics, would take
    # the (kind, at_ms) index and read every charging record)
    window = (events.c.seq > cursor, events.c.seq <= end, (events.c.kind + 0).in_(analytics.CHARGING_KINDS))
    quarter = (events.c.at_ms // QUARTER_MS).label("quarter")
    groups = (
        sa.select(
            quarter,
            events.c.tier,
            events.c.feature,
            events.c.provider,
            events.c.model,
            sa.func.sum(events.c.cost_micros),
            sa.func.sum(analytics.usage_of(ledger, "tokens")),
            sa.func.sum(analytics.usage_of(ledger, "images")),
            sa.func.count(),
        )
        .where(*window)
        .group_by(quarter, events.c.tier, events.c.feature, events.c.provider, events.c.model)
    )
    table = rollup_spend
    insert = ledger.dialect_insert(table).from_select(
        ["quarter", "tier", "feature", "provider", "model", *_SPEND_SUMS], groups
    )
    await conn.execute(
        insert.on_conflict_do_update(
            index_elements=list(table.primary_key.columns),
            set_={name: table.c[name] + insert.excluded[name] for name in _SPEND_SUMS},
        )
    )
    # records of days already reduced (they waited in an outbox, or were restored): again
    quarters = (await conn.execute(sa.select(quarter).where(*window).distinct())).scalars().all()
    late = sorted({d for d in (day_number(int(q) * QUARTER_MS, tz) for q in quarters) if d < today})
    if late:
        await conn.execute(sa.update(rollup_closed_days).where(rollup_closed_days.c.day.in_(late)).values(dirty=True))
    await conn.execute(sa.delete(relay_cursors).where(relay_cursors.c.source == CURSOR))
    await conn.execute(
        sa.insert(relay_cursors).values(source=CURSOR, position=str(end), updated_at_ms=ledger.clock_ms())
    )
    return end - cursor, end < top


async def _close_days(conn: AsyncConnection, ledger: Ledger, tz: tzinfo, today: int) -> None:
    """Reduce each closed day not reduced yet (or marked again) to its distribution."""
    reduced = {
        int(day): bool(dirty)
        for day, dirty in await conn.execute(sa.select(rollup_closed_days.c.day, rollup_closed_days.c.dirty))
    }
    first = (await conn.execute(sa.select(sa.func.min(events.c.at_ms)))).scalar_one_or_none()  # the at_ms index
    if first is None:
        return
    start = month_days(month_of(day_number(int(first), tz)))[0]  # whole months: their merge is whole too
    todo = [d for d in range(start, today) if reduced.get(d, True)][:DAYS_PER_PASS]
    for day in todo:
        counts = await _day_counts(conn, ledger, tz, day)
        # the month's merge: less what the day held before (reduced again), plus what it holds now
        month = month_of(day)
        moves: Counter[tuple[str, str, int]] = Counter()
        t = rollup_day_values
        for metric, tier, value, n in await conn.execute(
            sa.select(t.c.metric, t.c.tier, t.c.value, t.c.subjects).where(t.c.day == day)
        ):
            moves[(str(metric), str(tier), int(value))] -= int(n)
        for (metric, tier), values in counts.items():
            for value, n in values.items():
                moves[(metric, tier, value)] += n
        await _add_to_month(conn, ledger, month, moves)
        await conn.execute(sa.delete(rollup_day_values).where(rollup_day_values.c.day == day))
        rows = [
            {"metric": metric, "day": day, "tier": tier, "value": value, "subjects": n}
            for (metric, tier), values in counts.items()
            for value, n in values.items()
        ]
        if rows:
            await conn.execute(sa.insert(rollup_day_values), rows)
        await conn.execute(sa.delete(rollup_closed_days).where(rollup_closed_days.c.day == day))
        await conn.execute(sa.insert(rollup_closed_days).values(day=day, dirty=False, reduced_at_ms=ledger.clock_ms()))


def month_of(day: int) -> int:
    """The calendar month of a day (a date's ordinal) as ``year * 12 + month - 1``."""
    found = date.fromordinal(day)
    return found.year * 12 + found.month - 1


def month_days(month: int) -> tuple[int, int]:
    """The days ``[first, end)`` (ordinals) of a month (``year * 12 + month - 1``)."""
    year, index = divmod(month, 12)
    after = date(year + 1, 1, 1) if index == 11 else date(year, index + 2, 1)
    return date(year, index + 1, 1).toordinal(), after.toordinal()


async def _add_to_month(
    conn: AsyncConnection, ledger: Ledger, month: int, moves: Counter[tuple[str, str, int]]
) -> None:
    rows = [
        {"metric": metric, "month": month, "tier": tier, "value": value, "subjects": n}
        for (metric, tier, value), n in moves.items()
        if n
    ]
    if not rows:
        return
    t = rollup_month_values
    insert = ledger.dialect_insert(t)
    await conn.execute(
        insert.on_conflict_do_update(
            index_elements=list(t.primary_key.columns), set_={"subjects": t.c.subjects + insert.excluded.subjects}
        ),
        rows,
    )


async def _day_counts(conn: AsyncConnection, ledger: Ledger, tz: tzinfo, day: int) -> _Counts:
    """A day's distribution from its records: per metric and tier, how many subjects' day
    totals (:func:`shown`) have each value."""
    start, end = day_bounds(day, tz)
    totals = (
        sa.select(
            events.c.tier,
            *(sa.func.sum(analytics.usage_of(ledger, metric)) for metric in METRICS),
        )
        .where(events.c.kind.in_(analytics.CHARGING_KINDS), events.c.at_ms >= start, events.c.at_ms < end)
        .group_by(events.c.tier, events.c.subject)
    )
    counts: _Counts = {}
    for tier, *values in await conn.execute(totals):
        for metric, value in zip(METRICS, values, strict=True):
            counts.setdefault((metric, str(tier)), Counter())[shown(int(value or 0))] += 1
    return counts


async def spend(ledger: Ledger, *, since_ms: int, until_ms: int) -> list[tuple[str, str, str, str, int, int, int, int]]:
    """(tier, feature, provider, model, cost_micros, tokens, images, records) of the quarter
    hours in ``[since_ms, until_ms)`` (both rounded out to whole quarters)."""
    first, end = since_ms // QUARTER_MS, -(-until_ms // QUARTER_MS)
    t = rollup_spend
    query = (
        sa.select(
            t.c.tier,
            t.c.feature,
            t.c.provider,
            t.c.model,
            sa.func.sum(t.c.cost_micros),
            sa.func.sum(t.c.tokens),
            sa.func.sum(t.c.images),
            sa.func.sum(t.c.records),
        )
        .where(t.c.quarter >= first, t.c.quarter < end)
        .group_by(t.c.tier, t.c.feature, t.c.provider, t.c.model)
    )
    with translate_errors("rollup_spend"):
        async with ledger.transaction(write=False) as conn:
            return [
                (str(a), str(b), str(c), str(d), int(e or 0), int(f or 0), int(g or 0), int(h or 0))
                for a, b, c, d, e, f, g, h in (await conn.execute(query)).all()
            ]


async def distribution(
    ledger: Ledger, metrics: Sequence[str], tz: tzinfo, *, first_day: int, end_day: int, now_ms: int | None = None
) -> dict[str, list[DailyDistribution]]:
    """Per metric (of :data:`METRICS`) and tier: the (subject, day) totals of the days in
    ``[first_day, end_day)`` (date ordinals in ``tz``) reduced to their count, nearest-rank
    p50 and p95, and max (each :func:`shown`). Reduced days are read from the rollup; the
    others (today, a day not reduced yet or marked again) from their records."""
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"no rollup of {sorted(unknown)}")
    today = day_number(ledger.clock_ms() if now_ms is None else now_ms, tz)
    t, closed = rollup_day_values, rollup_closed_days
    counts: _Counts = {}
    with translate_errors("rollup_distribution"):
        async with ledger.transaction(write=False) as conn:
            first_month, last_month = month_of(first_day), month_of(max(first_day, end_day - 1))
            wide = month_days(first_month)[0], max(end_day, month_days(last_month)[1])
            states = {
                int(day): bool(dirty)
                for day, dirty in await conn.execute(
                    sa.select(closed.c.day, closed.c.dirty).where(closed.c.day >= wide[0], closed.c.day < wide[1])
                )
            }
            reduced = {day for day, dirty in states.items() if not dirty and first_day <= day < end_day}
            # a month whose every day before today lies in the period, each reduced and not marked
            # again, is read from its merge: one row per distinct value, not one per day and value
            whole: list[int] = []
            merged: set[int] = set()  # the days of the whole months
            for month in range(first_month, last_month + 1):
                start, after = month_days(month)
                closed_days = range(start, min(after, today))
                if (
                    start >= first_day
                    and min(after, today) <= end_day
                    and len(closed_days) > 0
                    and all(states.get(d) is False for d in closed_days)
                ):
                    whole.append(month)
                    merged.update(closed_days)
            reduced -= merged
            queries = []
            if whole:
                m = rollup_month_values
                queries.append(
                    sa.select(m.c.metric, m.c.tier, m.c.value, sa.func.sum(m.c.subjects))
                    .where(m.c.metric.in_(list(metrics)), m.c.month.in_(whole))
                    .group_by(m.c.metric, m.c.tier, m.c.value)
                )
            if reduced:
                queries.append(
                    sa.select(t.c.metric, t.c.tier, t.c.value, sa.func.sum(t.c.subjects))
                    .where(t.c.metric.in_(list(metrics)), t.c.day.in_(sorted(reduced)))
                    .group_by(t.c.metric, t.c.tier, t.c.value)
                )
            for query in queries:
                for metric, tier, value, n in (await conn.execute(query)).all():
                    counts.setdefault((str(metric), str(tier)), Counter())[int(value)] += int(n)
            for day in range(first_day, min(end_day, today + 1)):
                if day in reduced or day in merged:
                    continue
                for key, values in (await _day_counts(conn, ledger, tz, day)).items():
                    counts.setdefault(key, Counter()).update(values)
    found: dict[str, list[DailyDistribution]] = {metric: [] for metric in metrics}
    for (metric, tier), values in sorted(counts.items()):
        if metric in found:
            found[metric].append(_reduce(tier, sorted((v, n) for v, n in values.items() if n)))
    return found


def _reduce(tier: str, values: Sequence[tuple[int, int]]) -> DailyDistribution:
    """Nearest rank (``ceil(p * n)``) over sorted (value, how many) pairs."""
    n = sum(count for _, count in values)

    def at(percent: int) -> int:
        rank, seen = (n * percent + 99) // 100, 0
        for value, count in values:
            seen += count
            if seen >= rank:
                return value
        return values[-1][0]

    return DailyDistribution(tier, n, at(50), at(95), values[-1][0])


#: How often the server adds new records to the rollups (seconds).
KEEP_SECONDS = 5.0


class RollupKeeper:
    """Runs :func:`catch_up` every :data:`KEEP_SECONDS` in the background (each replica; the
    lock makes them take turns), so a read's own catch-up has little left to do."""

    def __init__(self, ledger: Ledger, timezone: Callable[[], tzinfo], *, every: float = KEEP_SECONDS) -> None:
        self._ledger = ledger
        self._timezone = timezone
        self._every = every
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="analytics rollups")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await catch_up(self._ledger, self._timezone())
            except LedgerError as exc:
                log.warning("analytics rollups: %s; retrying in %.0f s", exc, self._every)
            except Exception as exc:
                survived("analytics rollups", exc)
            await asyncio.sleep(self._every)
