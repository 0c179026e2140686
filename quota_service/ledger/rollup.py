"""The analytics rollups: what the dashboard's period views read instead of every record.

A month of a busy ledger is millions of rows; grouping them for every ask takes seconds.
The rollups are kept from the ``events`` table as records arrive, by :func:`catch_up`
(the server runs it every few seconds and before every analytics read, so a read sees
every record stored before it):

* ``rollup_spend``: per quarter hour and (tier, feature, provider, model), the charging
  records' spend, tokens, images and count (a month is a few thousand rows);
* ``rollup_subject_days``: per calendar day of the policy's timezone and (tier, subject),
  the day's totals;
* ``rollup_day_values``: per metric, day and tier, how many subjects' day totals equal each
  value: the exact distribution (one row per distinct value) that p50 / p95 / max are read
  from, however many subjects there are.

What counts is what :mod:`quota_service.ledger.analytics` counts over the raw records (its
functions are the definition, and the tests compare the two): spend is ``cost_micros`` of
COMMITTED, EXPIRED and CORRECTED records; usage of a metric is the ``actual`` (COMMITTED,
CORRECTED) or the ``estimate`` (EXPIRED).

**Exactly once.** Each step reads the charging events after the cursor (the
``relay_cursors`` row ``rollup``: an events ``seq``, which grows in commit order, so no
record is skipped), adds them to the rollups and moves the cursor, in one transaction that
holds the ledger's write lock (SQLite ``BEGIN IMMEDIATE``, a PostgreSQL advisory lock): two
replicas never add the same record twice. A day's totals are moved between the values of
``rollup_day_values`` as they grow (a late record for a past day is placed in its day).

Days are counted in the timezone the caller gives when the step runs; records rolled up
before a policy changes its timezone keep the days they were given. Retention
(:meth:`Ledger.delete_older_than`) leaves the rollups alone: past periods stay reportable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, tzinfo
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from quota_service.background import survived
from quota_service.ledger.analytics import DailyDistribution
from quota_service.ledger.errors import LedgerError
from quota_service.ledger.events import EventKind
from quota_service.ledger.schema import events, relay_cursors, rollup_day_values, rollup_spend, rollup_subject_days
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
    "spend",
]

log = logging.getLogger(__name__)

#: The ``relay_cursors`` row of the rollups.
CURSOR = "rollup"
#: The metrics a day's totals hold (``cost_usd`` in micro-dollars).
METRICS = ("cost_usd", "tokens", "images")
QUARTER_MS = 900_000
#: Records read and rolled up per transaction.
CHUNK = 20_000
#: Keys per ``IN`` list (SQLite allows 32,766 parameters per statement).
_KEYS_PER_QUERY = 3_000
_CHARGING = (int(EventKind.COMMITTED), int(EventKind.EXPIRED), int(EventKind.CORRECTED))
_EXPIRED = int(EventKind.EXPIRED)
_SpendKey = tuple[int, str, str, str, str]  # quarter, tier, feature, provider, model
_SPEND_SUMS = ("cost_micros", "tokens", "images", "records")


def day_number(at_ms: int, tz: tzinfo) -> int:
    """The calendar day of ``at_ms`` in ``tz``, as its date's ordinal."""
    return datetime.fromtimestamp(at_ms / 1000, tz).date().toordinal()


def _units(text: str, metric: str) -> int:
    if not text or metric not in text:
        return 0
    value = json.loads(text).get(metric, 0)
    return int(value)


async def catch_up(ledger: Ledger, tz: tzinfo, *, chunk: int = CHUNK) -> int:
    """Roll up every charging record stored after the cursor; how many were added."""
    total = 0
    while True:
        with translate_errors("rollup"):
            async with ledger.write_transaction(lock_key=ROLLUP_LOCK_KEY) as conn:
                added, more = await _step(conn, ledger, tz, chunk)
        total += added
        if not more:
            return total


async def _step(conn: AsyncConnection, ledger: Ledger, tz: tzinfo, chunk: int) -> tuple[int, bool]:
    found = (
        await conn.execute(sa.select(relay_cursors.c.position).where(relay_cursors.c.source == CURSOR))
    ).scalar_one_or_none()
    cursor = int(found) if found else 0
    rows = (
        await conn.execute(
            sa.select(
                events.c.seq,
                events.c.kind,
                events.c.at_ms,
                events.c.tier,
                events.c.subject,
                events.c.feature,
                events.c.provider,
                events.c.model,
                events.c.estimate,
                events.c.actual,
                events.c.cost_micros,
            )
            .where(events.c.seq > cursor, events.c.kind.in_(_CHARGING))
            .order_by(events.c.seq)
            .limit(chunk)
        )
    ).all()
    if not rows:
        return 0, False
    spend: dict[_SpendKey, list[int]] = {}
    days: dict[tuple[int, str, str], list[int]] = {}
    day_of_quarter: dict[int, int] = {}
    for _, kind, at_ms, tier, subject, feature, provider, model, estimate, actual, cost in rows:
        amounts = estimate if kind == _EXPIRED else actual
        tokens, images = _units(amounts, "tokens"), _units(amounts, "images")
        quarter = at_ms // QUARTER_MS
        row = spend.setdefault((quarter, tier, feature, provider, model), [0, 0, 0, 0])
        row[0] += cost
        row[1] += tokens
        row[2] += images
        row[3] += 1
        day = day_of_quarter.get(quarter)
        if day is None:  # every real timezone's midnight falls on a quarter hour
            day = day_of_quarter[quarter] = day_number(quarter * QUARTER_MS, tz)
        totals = days.setdefault((day, tier, subject), [0, 0, 0])
        totals[0] += cost
        totals[1] += tokens
        totals[2] += images
    await _add_spend(conn, ledger, spend)
    await _add_days(conn, ledger, days)
    last = int(rows[-1][0])
    await conn.execute(sa.delete(relay_cursors).where(relay_cursors.c.source == CURSOR))
    await conn.execute(
        sa.insert(relay_cursors).values(source=CURSOR, position=str(last), updated_at_ms=ledger.clock_ms())
    )
    return len(rows), len(rows) == chunk


async def _add_spend(
    conn: AsyncConnection, ledger: Ledger, spend: dict[tuple[int, str, str, str, str], list[int]]
) -> None:
    insert = ledger.dialect_insert(rollup_spend)
    statement = insert.on_conflict_do_update(
        index_elements=[c for c in rollup_spend.primary_key.columns],
        set_={
            name: rollup_spend.c[name] + insert.excluded[name]
            for name in ("cost_micros", "tokens", "images", "records")
        },
    )
    await conn.execute(
        statement,
        [
            {
                "quarter": q,
                "tier": t,
                "feature": f,
                "provider": p,
                "model": m,
                "cost_micros": v[0],
                "tokens": v[1],
                "images": v[2],
                "records": v[3],
            }
            for (q, t, f, p, m), v in spend.items()
        ],
    )


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for first in range(0, len(items), size):
        yield items[first : first + size]


async def _add_days(conn: AsyncConnection, ledger: Ledger, days: dict[tuple[int, str, str], list[int]]) -> None:
    keys = list(days)
    before: dict[tuple[int, str, str], tuple[int, int, int]] = {}
    table = rollup_subject_days
    for part in _chunks(keys, _KEYS_PER_QUERY):
        found = await conn.execute(
            sa.select(
                table.c.day, table.c.tier, table.c.subject, table.c.cost_micros, table.c.tokens, table.c.images
            ).where(sa.tuple_(table.c.day, table.c.tier, table.c.subject).in_(part))
        )
        for day, tier, subject, cost, tokens, images in found:
            before[(day, tier, subject)] = (cost, tokens, images)
    moves: dict[tuple[str, int, str, int], int] = {}
    rows = []
    for key, delta in days.items():
        old = before.get(key)
        new = tuple(delta) if old is None else tuple(o + d for o, d in zip(old, delta, strict=True))
        day, tier, subject = key
        for i, metric in enumerate(METRICS):
            if old is not None:
                moves[(metric, day, tier, old[i])] = moves.get((metric, day, tier, old[i]), 0) - 1
            moves[(metric, day, tier, new[i])] = moves.get((metric, day, tier, new[i]), 0) + 1
        rows.append(
            {"day": day, "tier": tier, "subject": subject, "cost_micros": new[0], "tokens": new[1], "images": new[2]}
        )
    insert = ledger.dialect_insert(table)
    await conn.execute(
        insert.on_conflict_do_update(
            index_elements=[c for c in table.primary_key.columns],
            set_={name: insert.excluded[name] for name in ("cost_micros", "tokens", "images")},
        ),
        rows,
    )
    changed = [
        {"metric": metric, "day": day, "tier": tier, "value": value, "subjects": n}
        for (metric, day, tier, value), n in moves.items()
        if n
    ]
    if changed:
        values = ledger.dialect_insert(rollup_day_values)
        await conn.execute(
            values.on_conflict_do_update(
                index_elements=[c for c in rollup_day_values.primary_key.columns],
                set_={"subjects": rollup_day_values.c.subjects + values.excluded.subjects},
            ),
            changed,
        )


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
    ledger: Ledger, metrics: Sequence[str], *, first_day: int, end_day: int
) -> dict[str, list[DailyDistribution]]:
    """Per metric (of :data:`METRICS`) and tier: the (subject, day) totals of the days in
    ``[first_day, end_day)`` (date ordinals) reduced to their count, nearest-rank p50 and
    p95, and max."""
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"no rollup of {sorted(unknown)}")
    t = rollup_day_values
    query = (
        sa.select(t.c.metric, t.c.tier, t.c.value, sa.func.sum(t.c.subjects))
        .where(t.c.metric.in_(list(metrics)), t.c.day >= first_day, t.c.day < end_day)
        .group_by(t.c.metric, t.c.tier, t.c.value)
        .order_by(t.c.metric, t.c.tier, t.c.value)
    )
    with translate_errors("rollup_distribution"):
        async with ledger.transaction(write=False) as conn:
            rows = (await conn.execute(query)).all()
    counts: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for metric, tier, value, n in rows:
        if n:
            counts.setdefault((str(metric), str(tier)), []).append((int(value), int(n)))
    found: dict[str, list[DailyDistribution]] = {metric: [] for metric in metrics}
    for (metric, tier), values in sorted(counts.items()):
        found[metric].append(_reduce(tier, values))
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


def day_range(since_ms: int, until_ms: int, tz: tzinfo) -> tuple[int, int]:
    """The days ``[first, end)`` (ordinals in ``tz``) that ``[since_ms, until_ms)`` covers."""
    return day_number(since_ms, tz), day_number(max(since_ms, until_ms - 1), tz) + 1


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
