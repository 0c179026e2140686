"""Recommend and GetEstimates over real SQLite ledgers (the queries and the pure rules together).

The distributions are built by tests/support/ledger_fixture.py (``recommend_story``,
``estimates_story``), whose docstrings work out the answers asserted here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.ledger_fixture import DAY_MS, HOUR_MS, RecordBuilder, estimates_story, recommend_story, write_ledger

from quota.v1 import admin_pb2
from quota_service.errors import InvalidRequest
from quota_service.ledger.store import Ledger, ledger_from_url
from quota_service.lifecycle.recommend import nearest_rank
from quota_service.policy.compiled import CompiledPolicy
from quota_service.policy.loader import load_policy
from quota_service.server.lifecycle_reads import estimates, recommendation

LIVE = Path(__file__).resolve().parents[2] / "fixtures" / "policies" / "lifecycle" / "live.yaml"
TODAY_MS = 1_766_102_400_000  # 2025-12-19T00:00:00Z
NOW = datetime.fromtimestamp((TODAY_MS + 15 * HOUR_MS) / 1000, UTC)


@pytest.fixture
def policy() -> CompiledPolicy:
    return load_policy(LIVE)


async def _ledger(tmp_path: Path, builder: RecordBuilder) -> AsyncIterator[Ledger]:
    url = await write_ledger(tmp_path / "ledger.db", builder.events)
    ledger = ledger_from_url(url)
    assert ledger is not None
    try:
        yield ledger
    finally:
        await ledger.close()


@pytest.fixture
async def story_ledger(tmp_path: Path, policy: CompiledPolicy) -> AsyncIterator[Ledger]:
    builder = RecordBuilder(policy)
    recommend_story(builder, TODAY_MS)
    estimates_story(builder, TODAY_MS - 3 * DAY_MS)
    async for ledger in _ledger(tmp_path, builder):
        yield ledger


def test_nearest_rank() -> None:
    values = list(range(1, 21))
    assert nearest_rank(values, 50) == 10
    assert nearest_rank(values, 95) == 19
    assert nearest_rank(values, 100) == 20
    assert nearest_rank(values, 1) == 1
    assert nearest_rank([], 95) == 0


async def test_caps_from_a_known_distribution(story_ledger: Ledger, policy: CompiledPolicy) -> None:
    reply = await recommendation(story_ledger, policy, admin_pb2.RecommendRequest(), now=NOW)
    assert (reply.percentile, reply.days, reply.promote_min_days) == (95, 14, 3)
    assert reply.until == (TODAY_MS + DAY_MS) // 1000
    assert reply.since == (TODAY_MS - 13 * DAY_MS) // 1000
    caps = {(c.tier, c.metric): c for c in reply.caps}
    free = caps[("free", "tokens")]
    assert (free.subject_days, free.active_subjects) == (20, 20)
    assert (free.p50, free.at_percentile, free.max) == (500, 950, 1000)
    assert free.current_cap == 1000
    assert free.suggested_cap == 950
    assert free.change == pytest.approx(-0.05)
    assert free.days_over_suggested == pytest.approx(1 / 20)
    basic = caps[("basic", "tokens")]
    # idle 5 x 500, busy 2,500, e2 480 (the estimates story): [480, 500 x 5, 2,500]
    assert (basic.subject_days, basic.active_subjects, basic.p50, basic.at_percentile) == (7, 3, 500, 2500)
    assert basic.current_cap == 10000
    # cost_usd: 50 tokens at $10 / 1M = $0.0005 per 50: p95 of free is 950 tokens = $0.0095
    free_cost = caps[("free", "cost_usd")]
    assert free_cost.at_percentile == pytest.approx(0.0095)
    assert free_cost.current_cap == 0  # no daily cap on cost_usd

    p90 = await recommendation(story_ledger, policy, admin_pb2.RecommendRequest(percentile=90, tier="free"), now=NOW)
    assert {(c.tier, c.metric): c.at_percentile for c in p90.caps}[("free", "tokens")] == 900
    assert {c.tier for c in p90.caps} == {"free"}


async def test_promotion_and_demotion_candidates(story_ledger: Ledger, policy: CompiledPolicy) -> None:
    reply = await recommendation(story_ledger, policy, admin_pb2.RecommendRequest(), now=NOW)
    assert [(s.subject, s.tier, s.suggested_tier, s.days, s.denied) for s in reply.promotions] == [
        ("climber", "free", "basic", 4, 1)
    ]
    assert "4 of the last 14 days" in reply.promotions[0].rule
    demotions = {s.subject: s for s in reply.demotions}
    assert set(demotions) == {"idle", "whale", "e1", "e2"}
    assert (demotions["idle"].tier, demotions["idle"].suggested_tier) == ("basic", "free")
    assert demotions["idle"].peak_ratio == pytest.approx(0.05)
    assert demotions["idle"].active_days == 5
    assert (demotions["whale"].tier, demotions["whale"].suggested_tier) == ("pro", "basic")
    assert demotions["whale"].peak_ratio == pytest.approx(0.02)
    # A stricter promotion rule and a looser demotion line.
    reply = await recommendation(
        story_ledger, policy, admin_pb2.RecommendRequest(promote_min_days=5, demote_below=0.3), now=NOW
    )
    assert list(reply.promotions) == []
    assert {s.subject for s in reply.demotions} == {"idle", "whale", "busy", "e1", "e2"}


async def test_recommend_refuses_bad_options(story_ledger: Ledger, policy: CompiledPolicy) -> None:
    for request in (
        admin_pb2.RecommendRequest(percentile=101),
        admin_pb2.RecommendRequest(tier="gold"),
        admin_pb2.RecommendRequest(days=2, promote_min_days=3),
        admin_pb2.RecommendRequest(demote_below=1.5),
    ):
        with pytest.raises(InvalidRequest):
            await recommendation(story_ledger, policy, request, now=NOW)


async def test_estimates_known_percentiles(story_ledger: Ledger, policy: CompiledPolicy) -> None:
    reply = await estimates(story_ledger, policy, admin_pb2.GetEstimatesRequest(), now=NOW)
    ratios = {(r.tier, r.feature, r.metric): r for r in reply.ratios}
    summary = ratios[("pro", "summary", "tokens")]
    assert (summary.provider, summary.model) == ("openai", "gpt-4o")
    assert summary.count == 20, "RELEASED and EXPIRED records do not count"
    assert (summary.p50, summary.p95, summary.over) == (0.5, 0.95, 0)
    assert summary.mean == pytest.approx(0.525)
    cost = ratios[("pro", "summary", "cost_usd")]
    assert (cost.count, cost.p50, cost.p95) == (20, 0.5, 0.95)
    seo = ratios[("basic", "seo", "tokens")]
    assert (seo.count, seo.p50, seo.p95, seo.over) == (4, 1.2, 1.2, 4)
    # The recommend story's COMMITTED records used what they estimated: ratio 1.
    chat = ratios[("free", "chat", "tokens")]
    assert (chat.count, chat.p50, chat.p95, chat.over) == (20, 1.0, 1.0, 0)
    only_basic = await estimates(story_ledger, policy, admin_pb2.GetEstimatesRequest(tier="basic"), now=NOW)
    assert {r.tier for r in only_basic.ratios} == {"basic"}
    # Three days back only: the estimates story (3 days ago) is in, nothing older.
    short = await estimates(story_ledger, policy, admin_pb2.GetEstimatesRequest(days=4), now=NOW)
    assert {(r.tier, r.feature) for r in short.ratios} >= {("pro", "summary"), ("basic", "seo")}
    none = await estimates(story_ledger, policy, admin_pb2.GetEstimatesRequest(days=1), now=NOW)
    assert [r for r in none.ratios if r.feature == "seo"] == []
