"""The dashboard's aggregations, computed in the database, over SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from quota_service.ledger import Ledger, analytics
from quota_service.ledger.events import Event, EventKind, new_event_id, record_id
from quota_service.policy.domain import Decision, Reason

MINUTE = 60_000
DAY = 86_400_000
T0 = 1_796_083_200_000  # 2026-12-01T00:00:00Z


def usage(
    kind: EventKind,
    n: int,
    *,
    at_ms: int,
    subject: str,
    tier: str = "free_alpha",
    feature: str = "blog_writer",
    provider: str = "openai",
    model: str = "gpt-4o-mini",
    tokens: int = 0,
    cost_micros: int = 0,
    decision: Decision = Decision.ALLOW,
) -> Event:
    amounts = {"tokens": tokens}
    if kind is EventKind.DENIED:
        return Event(
            id=new_event_id(kind, at_ms),
            kind=kind,
            at_ms=at_ms,
            subject=subject,
            tier=tier,
            feature=feature,
            provider=provider,
            model=model,
            estimate=amounts,
            decision=Decision.DENY,
            reason=Reason.LIMIT_EXCEEDED,
        )
    return Event(
        id=record_id(kind, f"r{n}"),
        kind=kind,
        at_ms=at_ms,
        subject=subject,
        tier=tier,
        feature=feature,
        provider=provider,
        model=model,
        reservation_id=f"r{n}",
        estimate=amounts if kind is EventKind.EXPIRED else {"tokens": tokens * 2},
        actual={} if kind is EventKind.EXPIRED else amounts,
        cost_micros=cost_micros,
        decision=decision,
    )


@pytest.fixture
async def seeded(ledger: Ledger) -> Ledger:
    await ledger.insert(
        [
            usage(EventKind.COMMITTED, 1, at_ms=T0 + 10, subject="a", tokens=100, cost_micros=60),
            usage(
                EventKind.COMMITTED, 2, at_ms=T0 + 20, subject="a", tokens=50, cost_micros=30, decision=Decision.WARN
            ),
            usage(EventKind.EXPIRED, 3, at_ms=T0 + MINUTE + 5, subject="b", tokens=300, cost_micros=180),
            usage(EventKind.RELEASED, 4, at_ms=T0 + MINUTE + 6, subject="b"),
            usage(EventKind.DENIED, 5, at_ms=T0 + MINUTE + 7, subject="b", tokens=999),
            usage(
                EventKind.COMMITTED,
                6,
                at_ms=T0 + 2 * MINUTE,
                subject="c",
                tier="pro_alpha",
                provider="anthropic",
                model="claude",
                tokens=1000,
                cost_micros=15_000,
            ),
            # a day earlier: outside "today"
            usage(EventKind.COMMITTED, 7, at_ms=T0 - DAY + 5, subject="a", tokens=7, cost_micros=1),
        ]
    )
    return ledger


async def test_activity_counts_answers_and_spend_per_minute(seeded: Ledger) -> None:
    rows = await analytics.activity(seeded, since_ms=T0, until_ms=T0 + 3 * MINUTE)
    assert rows == [
        analytics.MinuteActivity(T0 // 1000, allow=1, warn=1, deny=0, cost_micros=90),
        analytics.MinuteActivity(T0 // 1000 + 60, allow=2, warn=0, deny=1, cost_micros=180),
        analytics.MinuteActivity(T0 // 1000 + 120, allow=1, warn=0, deny=0, cost_micros=15_000),
    ]


async def test_spend_by_dimension_sums_charging_records_only(seeded: Ledger) -> None:
    groups = await analytics.spend_by(seeded, since_ms=T0, until_ms=T0 + DAY)
    assert groups["tier"] == [
        analytics.SpendRow("pro_alpha", 15_000, 1000, 0, 1),
        analytics.SpendRow("free_alpha", 270, 450, 0, 3),  # the EXPIRED record counts its estimate
    ]
    assert [(r.key, r.cost_micros) for r in groups["model"]] == [
        ("anthropic/claude", 15_000),
        ("openai/gpt-4o-mini", 270),
    ]
    assert [(r.key, r.records) for r in groups["provider"]] == [("anthropic", 1), ("openai", 3)]


async def test_daily_distribution_is_nearest_rank_per_tier(seeded: Ledger) -> None:
    rows = await analytics.daily_distribution(seeded, ("tokens", "cost_usd"), since_ms=T0 - DAY, until_ms=T0 + DAY)
    # free_alpha: (a, yesterday) 7, (a, today) 150, (b, today) 300 -> p50 150, p95 300
    assert rows["tokens"] == [
        analytics.DailyDistribution("free_alpha", subject_days=3, p50=150, p95=300, max=300),
        analytics.DailyDistribution("pro_alpha", subject_days=1, p50=1000, p95=1000, max=1000),
    ]
    # cost per subject-day: 1, 90, 180 micro-dollars
    assert rows["cost_usd"][0] == analytics.DailyDistribution("free_alpha", 3, p50=90, p95=180, max=180)
