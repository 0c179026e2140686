"""GetAnalytics served from memory: fresh answers as they are, stale ones while a refresh runs
in the background, the first ask of a period computed; over a real ledger."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from quota_service.ledger import Ledger
from quota_service.ledger.events import Event, EventKind, record_id
from quota_service.policy.loader import load_policy
from quota_service.server.dashboard_reads import ANALYTICS_FRESH_SECONDS, AnalyticsCache

POLICIES = Path(__file__).resolve().parents[3] / "policies"


def committed(n: int, at: datetime, cost: int) -> Event:
    return Event(
        id=record_id(EventKind.COMMITTED, f"r{n}"),
        kind=EventKind.COMMITTED,
        at_ms=int(at.timestamp() * 1000),
        subject=f"s{n}",
        tier="free_alpha",
        feature="blog_writer",
        provider="openai",
        model="gpt-4o-mini",
        reservation_id=f"r{n}",
        actual={"tokens": 10},
        cost_micros=cost,
    )


async def test_fresh_then_stale_while_revalidating(ledger: Ledger) -> None:
    policy = load_policy(POLICIES)
    now = datetime.now(UTC)
    ticks = [0.0]
    cache = AnalyticsCache(clock=lambda: ticks[0])
    await ledger.insert([committed(1, now, 1_000_000)])
    first = await cache.report(ledger, policy, period="today", now=now)
    assert first.cost_usd == 1.0
    await ledger.insert([committed(2, now, 2_000_000)])
    ticks[0] = ANALYTICS_FRESH_SECONDS - 1  # fresh: the same answer, no database work
    assert (await cache.report(ledger, policy, period="today", now=now)).cost_usd == 1.0
    ticks[0] = ANALYTICS_FRESH_SECONDS + 1  # stale: answered at once, refreshed behind
    assert (await cache.report(ledger, policy, period="today", now=now)).cost_usd == 1.0
    for _ in range(50):
        await asyncio.sleep(0.02)
        if (await cache.report(ledger, policy, period="today", now=now)).cost_usd == 3.0:
            break
    assert (await cache.report(ledger, policy, period="today", now=now)).cost_usd == 3.0
    # another period is its own entry, computed on its first ask
    assert (await cache.report(ledger, policy, period="month", now=now)).cost_usd == 3.0
