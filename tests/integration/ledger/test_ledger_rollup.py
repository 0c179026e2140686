"""The analytics rollups answer exactly what the raw aggregations answer (day totals kept to
three significant digits), over SQLite and PostgreSQL: after one catch-up, after records
arriving in several steps (late ones for days already reduced among them), in small chunks,
and with two replicas catching up at once."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, timedelta, timezone, tzinfo

import pytest
import sqlalchemy as sa

from quota_service.ledger import Ledger, analytics, ledger_from_url, rollup
from quota_service.ledger.events import Event, EventKind, new_event_id, record_id
from quota_service.ledger.schema import rollup_closed_days, rollup_month_values
from quota_service.policy.domain import Decision, Reason

DAY = 86_400_000
T0 = 1_796_083_200_000  # 2026-12-01T00:00:00Z
NOW = T0 + DAY // 2  # the tests' "now": midday of 2026-12-01 UTC (the last day of the data is today)
TIERS = ("free_alpha", "basic_alpha", "pro_alpha")
MODELS = (("openai", "gpt-4o-mini"), ("openai", "gpt-4o"), ("anthropic", "claude-sonnet"))
KOLKATA = timezone(timedelta(hours=5, minutes=30))


def random_events(rng: random.Random, n: int, *, first: int, start_ms: int, days: int) -> list[Event]:
    found: list[Event] = []
    for i in range(first, first + n):
        kind = rng.choice(
            [EventKind.COMMITTED] * 6 + [EventKind.EXPIRED, EventKind.CORRECTED, EventKind.RELEASED, EventKind.DENIED]
        )
        at = start_ms + rng.randrange(days * DAY)
        provider, model = rng.choice(MODELS)
        about = {
            "at_ms": at,
            "subject": f"s{rng.randrange(12)}",
            "tier": rng.choice(TIERS),
            "feature": rng.choice(("blog_writer", "seo_analysis")),
            "provider": provider,
            "model": model,
        }
        tokens, images = rng.randrange(0, 500), rng.choice((0, 0, 1, 2))
        amounts = {"tokens": tokens, "images": images} if images else {"tokens": tokens}
        cost = rng.randrange(0, 20_000)
        if kind is EventKind.DENIED:
            found.append(
                Event(
                    id=new_event_id(kind, at),
                    kind=kind,
                    estimate=amounts,
                    decision=Decision.DENY,
                    reason=Reason.LIMIT_EXCEEDED,
                    **about,  # type: ignore[arg-type]
                )
            )
            continue
        if kind is EventKind.CORRECTED:  # a late commit's difference: may be negative
            amounts = {"tokens": -tokens}
            cost = -cost // 2
        found.append(
            Event(
                id=record_id(kind, f"r{i}"),
                kind=kind,
                reservation_id=f"r{i}",
                estimate=amounts if kind is EventKind.EXPIRED else {"tokens": tokens + 5},
                actual={} if kind in (EventKind.EXPIRED, EventKind.RELEASED) else amounts,
                cost_micros=0 if kind is EventKind.RELEASED else cost,
                decision=Decision.ALLOW,
                **about,  # type: ignore[arg-type]
            )
        )
    return found


def offset_ms(tz: tzinfo) -> int:
    offset = tz.utcoffset(None)
    return int(offset.total_seconds() * 1000) if offset is not None else 0


async def assert_rollups_equal_raw(ledger: Ledger, tz: tzinfo, periods: list[tuple[int, int]]) -> None:
    for since, until in periods:
        rolled = analytics.group_spend(await rollup.spend(ledger, since_ms=since, until_ms=until))
        raw = await analytics.spend_by(ledger, since_ms=since, until_ms=until)
        assert rolled == raw, (since, until)
        first, end = rollup.day_range(since, until, tz)
        metrics = ("cost_usd", "tokens", "images")
        rolled_days = await rollup.distribution(ledger, metrics, tz, first_day=first, end_day=end, now_ms=NOW)
        raw_days = await analytics.daily_distribution(
            ledger, metrics, since_ms=since, until_ms=until, day_offset_ms=offset_ms(tz)
        )
        # the rollup keeps day totals to three significant digits (rollup.shown, monotonic):
        # the raw percentiles so kept
        kept = {
            metric: [
                analytics.DailyDistribution(
                    r.tier, r.subject_days, rollup.shown(r.p50), rollup.shown(r.p95), rollup.shown(r.max)
                )
                for r in rows
            ]
            for metric, rows in raw_days.items()
        }
        assert rolled_days == kept, (since, until)


def day_periods(tz: tzinfo) -> list[tuple[int, int]]:
    """Today, the last 7 days and 30 days, each starting at a midnight of ``tz``; November
    (a whole closed month: its merge), and November with today."""
    midnight = T0 - offset_ms(tz)
    november = midnight - 30 * DAY
    return [
        (midnight, midnight + DAY),
        (midnight - 6 * DAY, midnight + DAY),
        (midnight - 29 * DAY, midnight + DAY),
        (november, midnight),
        (november, midnight + DAY),
    ]


@pytest.mark.parametrize("tz", [UTC, KOLKATA], ids=["utc", "kolkata"])
async def test_one_catch_up_equals_the_raw_aggregations(ledger: Ledger, tz: tzinfo) -> None:
    rng = random.Random(5)
    await ledger.insert(random_events(rng, 600, first=0, start_ms=T0 - 29 * DAY, days=30))
    assert await rollup.catch_up(ledger, tz, now_ms=NOW) == 600  # the cursor passed every event
    async with ledger.transaction(write=False) as conn:
        months = (await conn.execute(sa.select(sa.func.count()).select_from(rollup_month_values))).scalar_one()
    assert months > 0  # November's merge: what the November periods read
    await assert_rollups_equal_raw(ledger, tz, day_periods(tz))
    assert await rollup.catch_up(ledger, tz, now_ms=NOW) == 0  # nothing new: nothing added twice
    await assert_rollups_equal_raw(ledger, tz, day_periods(tz))


async def test_records_arriving_in_steps_and_late_ones_are_placed_in_their_days(ledger: Ledger) -> None:
    rng = random.Random(8)
    for step in range(5):
        # each step: recent records, and a few late ones for days long closed
        await ledger.insert(random_events(rng, 120, first=step * 1000, start_ms=T0 - 2 * DAY, days=3))
        await ledger.insert(random_events(rng, 15, first=step * 1000 + 500, start_ms=T0 - 25 * DAY, days=20))
        await rollup.catch_up(ledger, UTC, now_ms=NOW, seq_chunk=7)  # many small steps
        await assert_rollups_equal_raw(ledger, UTC, day_periods(UTC))


@pytest.mark.parametrize(
    ("units", "kept"),
    [
        (0, 0),
        (999, 999),
        (-999, -999),
        (1234, 1230),
        (1235, 1240),
        (99_950, 100_000),
        (123_456, 123_000),
        (-1_500, -1_500),
    ],
)
def test_day_totals_are_kept_to_three_significant_digits(units: int, kept: int) -> None:
    assert rollup.shown(units) == kept


async def test_the_distribution_is_exact_nearest_rank(ledger: Ledger) -> None:
    # five subjects with one day total each: 10, 20, 30, 40, 50 tokens -> p50 30, p95 50
    await ledger.insert(
        [
            Event(
                id=record_id(EventKind.COMMITTED, f"n{i}"),
                kind=EventKind.COMMITTED,
                at_ms=T0 + i,
                subject=f"u{i}",
                tier="free_alpha",
                reservation_id=f"n{i}",
                actual={"tokens": 10 * (i + 1)},
                decision=Decision.ALLOW,
            )
            for i in range(5)
        ]
    )
    await rollup.catch_up(ledger, UTC, now_ms=NOW + DAY)  # 2026-12-01 has closed: reduced
    day = rollup.day_number(T0, UTC)
    found = await rollup.distribution(ledger, ("tokens",), UTC, first_day=day, end_day=day + 1, now_ms=NOW + DAY)
    assert found == {"tokens": [analytics.DailyDistribution("free_alpha", 5, 30, 50, 50)]}
    async with ledger.transaction(write=False) as conn:
        reduced = (await conn.execute(sa.select(rollup_closed_days.c.day, rollup_closed_days.c.dirty))).all()
    assert (day, False) in [tuple(r) for r in reduced]  # (and the other days of its month, empty)
    # a second record moves u0 from 10 to 60: 20, 30, 40, 50, 60 -> p50 40, max 60
    await ledger.insert(
        [
            Event(
                id=record_id(EventKind.COMMITTED, "n9"),
                kind=EventKind.COMMITTED,
                at_ms=T0 + 99,
                subject="u0",
                tier="free_alpha",
                reservation_id="n9",
                actual={"tokens": 50},
                decision=Decision.ALLOW,
            )
        ]
    )
    # read before the next catch-up: the reduced day answers from the rollup, as reduced
    stale = await rollup.distribution(ledger, ("tokens",), UTC, first_day=day, end_day=day + 1, now_ms=NOW + DAY)
    assert stale == {"tokens": [analytics.DailyDistribution("free_alpha", 5, 30, 50, 50)]}
    # the catch-up sees the late record, marks its day and reduces it again
    await rollup.catch_up(ledger, UTC, now_ms=NOW + DAY)
    found = await rollup.distribution(ledger, ("tokens",), UTC, first_day=day, end_day=day + 1, now_ms=NOW + DAY)
    assert found == {"tokens": [analytics.DailyDistribution("free_alpha", 5, 40, 60, 60)]}


async def test_two_replicas_catching_up_at_once_add_each_record_once(ledger: Ledger, ledger_url: str) -> None:
    other = ledger_from_url(ledger_url, timeout_seconds=10.0)
    assert other is not None
    try:
        rng = random.Random(13)
        await ledger.insert(random_events(rng, 800, first=0, start_ms=T0 - 6 * DAY, days=7))
        passed = await asyncio.gather(
            rollup.catch_up(ledger, UTC, now_ms=NOW, seq_chunk=50),
            rollup.catch_up(other, UTC, now_ms=NOW, seq_chunk=50),
            rollup.catch_up(other, UTC, now_ms=NOW, seq_chunk=50),
        )
        assert sum(passed) == 800  # each event passed by exactly one of them
        await assert_rollups_equal_raw(ledger, UTC, day_periods(UTC))
    finally:
        await other.close()
