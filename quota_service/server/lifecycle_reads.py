"""AdminService's lifecycle reads (viewer or admin token): Recommend and GetEstimates.

Thin: read the ledger (:mod:`quota_service.lifecycle.usage_queries`), compute with the pure
:mod:`quota_service.lifecycle.recommend` / :mod:`~quota_service.lifecycle.estimates`, convert.
Amounts leave in each metric's own measure (USD for ``cost_usd``), times in unix seconds.
Nothing is applied: the answers are suggestions.
"""

from __future__ import annotations

from datetime import datetime

from quota.v1 import admin_pb2
from quota_service.errors import InvalidRequest
from quota_service.ledger.store import Ledger
from quota_service.lifecycle import recommend as rec
from quota_service.lifecycle.estimates import EstimateRatios
from quota_service.lifecycle.usage_queries import committed_usage, daily_totals, day_signals
from quota_service.policy.compiled import CompiledPolicy
from quota_service.policy.units import COST_METRIC, from_units

__all__ = ["estimates", "recommendation"]


def _metrics(policy: CompiledPolicy) -> list[str]:
    """Every metric a limit of the policy counts or a price prices, cost_usd first."""
    found = {limit.metric for tier in policy.tiers.values() for limit in (*tier.limits, *tier.hard_stops)}
    found |= {limit.metric for limit in policy.global_limits}
    found |= set(policy.prices.priced_metrics)
    if policy.prices.priced_metrics:
        found.add(COST_METRIC)
    return sorted(found, key=lambda m: (m != COST_METRIC, m))


def _tier(policy: CompiledPolicy, tier: str) -> str:
    if tier and tier not in policy.tiers:
        raise InvalidRequest(f"tier {tier!r} does not exist (tiers: {', '.join(policy.tiers)})")
    return tier


async def recommendation(
    ledger: Ledger, policy: CompiledPolicy, request: admin_pb2.RecommendRequest, *, now: datetime
) -> admin_pb2.RecommendResponse:
    tier = _tier(policy, request.tier)
    percentile, days, promote_min_days, demote_below = rec.recommend_options(
        request.percentile, request.days, request.promote_min_days, request.demote_below
    )
    period = rec.period(policy.timezone, now, days)
    daily = await daily_totals(ledger, _metrics(policy), period)
    signals = await day_signals(ledger, period)
    found = rec.recommend(
        policy,
        daily,
        signals,
        first_day=period.first_day,
        days=days,
        percentile=percentile,
        promote_min_days=promote_min_days,
        demote_below=demote_below,
        tier=tier,
    )

    def subject(s: rec.SubjectSuggestion) -> admin_pb2.SubjectSuggestion:
        return admin_pb2.SubjectSuggestion(
            subject=s.subject,
            tier=s.tier,
            suggested_tier=s.suggested_tier,
            days=s.days,
            active_days=s.active_days,
            denied=s.denied,
            peak_ratio=s.peak_ratio,
            peak_metric=s.peak_metric,
            rule=s.rule,
        )

    return admin_pb2.RecommendResponse(
        percentile=percentile,
        days=days,
        since=period.since_ms // 1000,
        until=period.until_ms // 1000,
        promote_min_days=promote_min_days,
        demote_below=demote_below,
        caps=[
            admin_pb2.CapSuggestion(
                tier=c.tier,
                metric=c.metric,
                window="day",
                active_subjects=c.active_subjects,
                subject_days=c.subject_days,
                p50=from_units(c.metric, c.p50),
                at_percentile=from_units(c.metric, c.at_percentile),
                max=from_units(c.metric, c.max),
                current_cap=from_units(c.metric, c.current_cap),
                suggested_cap=from_units(c.metric, c.suggested_cap),
                change=c.change,
                days_over_suggested=c.days_over_suggested,
            )
            for c in found.caps
        ],
        promotions=[subject(s) for s in found.promotions],
        demotions=[subject(s) for s in found.demotions],
    )


async def estimates(
    ledger: Ledger, policy: CompiledPolicy, request: admin_pb2.GetEstimatesRequest, *, now: datetime
) -> admin_pb2.GetEstimatesResponse:
    tier = _tier(policy, request.tier)
    days = request.days or rec.DEFAULT_DAYS
    if days > rec.MAX_DAYS:
        raise InvalidRequest(f"days must be between 1 and {rec.MAX_DAYS}, got {days}")
    period = rec.period(policy.timezone, now, days)
    ratios = EstimateRatios(tier=tier)
    async for page in committed_usage(ledger, period, tier=tier):
        for record in page:
            ratios.add(record)
    return admin_pb2.GetEstimatesResponse(
        days=days,
        since=period.since_ms // 1000,
        until=period.until_ms // 1000,
        ratios=[
            admin_pb2.EstimateRatio(
                tier=r.tier,
                feature=r.feature,
                provider=r.provider,
                model=r.model,
                metric=r.metric,
                count=r.count,
                p50=r.p50,
                p95=r.p95,
                mean=r.mean,
                over=r.over,
            )
            for r in ratios.result()
        ],
    )
