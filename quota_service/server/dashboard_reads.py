"""The AdminService reads the dashboard needs beyond the admin RPCs (viewer or admin token):
GetCompanyUsage, DescribePolicy, GetActivity, GetAnalytics. Thin: read the policy, the
counters or the ledger's aggregates (:mod:`quota_service.ledger.analytics`, computed in the
database) and convert. Amounts leave in each metric's own measure (USD for ``cost_usd``),
times in unix seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from quota.v1 import admin_pb2
from quota_service.clock import to_ms
from quota_service.errors import InvalidRequest
from quota_service.ledger import analytics, rollup
from quota_service.ledger.store import Ledger
from quota_service.policy.compiled import CompiledPolicy, Limit
from quota_service.policy.domain import GLOBAL_SCOPE, CounterRef
from quota_service.policy.engine import CounterPlan, report_usage
from quota_service.policy.units import COST_METRIC, from_units
from quota_service.policy.windows import Window, current_span, window_span
from quota_service.quotas import Quotas
from quota_service.server import convert

#: GetActivity's default and largest span (minutes).
DEFAULT_ACTIVITY_MINUTES = 60
MAX_ACTIVITY_MINUTES = 1440
PERIODS = ("today", "7d", "month")
#: Metrics GetAnalytics reports a daily distribution of.
DISTRIBUTION_METRICS = ("cost_usd", "tokens", "images")


async def company_usage(quotas: Quotas) -> admin_pb2.GetCompanyUsageResponse:
    """The company-wide caps (``hard_stops.global``) on the ``__global__`` counters, now."""
    policy = quotas.policy.current
    now = quotas.clock.now()
    by_counter: dict[tuple[str, Window], list[Limit]] = {}
    for limit in policy.global_limits:
        by_counter.setdefault((limit.metric, limit.window), []).append(limit)
    plans = []
    for (metric, window), limits in by_counter.items():
        span = current_span(window, now, policy.timezone)
        plans.append(CounterPlan(CounterRef(GLOBAL_SCOPE, metric, window, span.window_id, span.end), 0, tuple(limits)))
    values = await quotas.store.usage(tuple(p.ref for p in plans), to_ms(now)) if plans else {}
    return admin_pb2.GetCompanyUsageResponse(
        limits=[convert.limit_status(r) for r in report_usage(plans, values)], policy_version=policy.version
    )


def _rule(limit: Limit) -> admin_pb2.LimitRule:
    thresholds = limit.thresholds
    return admin_pb2.LimitRule(
        metric=limit.metric,
        window=limit.window.value,
        max=from_units(limit.metric, limit.max_units),
        kind=convert.KIND[limit.kind],
        warn_at=float(thresholds.warn_at) if thresholds else 0.0,
        block_at=float(thresholds.block_at) if thresholds else 1.0,
    )


def describe_policy(policy: CompiledPolicy, status: admin_pb2.PolicyStatus) -> admin_pb2.DescribePolicyResponse:
    tiers = [
        admin_pb2.TierRules(
            name=tier.name,
            display_name=tier.display_name,
            features=["*"] if tier.all_features else sorted(tier.features),
            limits=[_rule(limit) for limit in tier.limits],
            hard_stops=[_rule(limit) for limit in tier.hard_stops],
            on_store_error=str(getattr(tier.on_store_error, "value", tier.on_store_error)),
            reservation_ttl_seconds=tier.reservation_ttl_seconds,
        )
        for tier in sorted(policy.tiers.values(), key=lambda t: t.name)
    ]
    prices = [
        admin_pb2.Price(pattern=pattern, metric=metric, usd_per_unit=format(rate, "f"))
        for pattern, rates in policy.prices.entries.items()
        for metric, rate in sorted(rates.items())
    ]
    return admin_pb2.DescribePolicyResponse(
        status=status,
        timezone=str(policy.timezone),
        unpriced=str(getattr(policy.unpriced, "value", policy.unpriced)),
        tiers=tiers,
        global_limits=[_rule(limit) for limit in policy.global_limits],
        prices=prices,
    )


async def activity(ledger: Ledger, *, minutes: int, now: datetime) -> admin_pb2.GetActivityResponse:
    """One bucket per minute of the last ``minutes`` (the current one included), oldest first."""
    if minutes > MAX_ACTIVITY_MINUTES:
        raise InvalidRequest(f"minutes must be at most {MAX_ACTIVITY_MINUTES} (0: {DEFAULT_ACTIVITY_MINUTES})")
    count = minutes or DEFAULT_ACTIVITY_MINUTES
    now_ms = to_ms(now)
    first = (now_ms // analytics.MINUTE_MS - count + 1) * analytics.MINUTE_MS
    rows = {r.start: r for r in await analytics.activity(ledger, since_ms=first, until_ms=now_ms + 1)}
    buckets = []
    for i in range(count):
        start = first // 1000 + 60 * i
        row = rows.get(start)
        buckets.append(
            admin_pb2.ActivityBucket(
                start=start,
                allow=row.allow if row else 0,
                warn=row.warn if row else 0,
                deny=row.deny if row else 0,
                cost_usd=from_units(COST_METRIC, row.cost_micros) if row else 0.0,
            )
        )
    return admin_pb2.GetActivityResponse(buckets=buckets)


def period_bounds(period: str, now: datetime, policy: CompiledPolicy) -> tuple[int, int]:
    """``[since, until)`` in unix seconds of ``today`` / ``7d`` (today and the 6 days before)
    / ``month``, calendar windows in the policy's timezone."""
    tz = policy.timezone
    day = window_span(Window.DAY, now, tz)
    if period == "today":
        return day.start, day.end
    if period == "7d":
        local = datetime.fromtimestamp(day.start, tz) - timedelta(days=6)
        return window_span(Window.DAY, local, tz).start, day.end
    if period == "month":
        month = window_span(Window.MONTH, now, tz)
        return month.start, month.end
    raise InvalidRequest(f"period must be one of {', '.join(PERIODS)}")


def _group(row: analytics.SpendRow) -> admin_pb2.SpendGroup:
    return admin_pb2.SpendGroup(
        key=row.key,
        cost_usd=from_units(COST_METRIC, row.cost_micros),
        tokens=float(row.tokens),
        images=float(row.images),
        records=row.records,
    )


def _daily_cap(policy: CompiledPolicy, tier_name: str, metric: str) -> float:
    tier = policy.tiers.get(tier_name)
    if tier is None:
        return 0.0
    daily = (*tier.limits, *tier.hard_stops)  # a per-subject hard stop per day is a daily cap too
    caps = [limit.max_units for limit in daily if limit.metric == metric and limit.window is Window.DAY]
    return from_units(metric, min(caps)) if caps else 0.0


async def analytics_report(
    ledger: Ledger, policy: CompiledPolicy, *, period: str, now: datetime
) -> admin_pb2.GetAnalyticsResponse:
    chosen = period or "today"
    since, until = period_bounds(chosen, now, policy)
    await rollup.catch_up(ledger, policy.timezone, now_ms=to_ms(now))  # every record stored before this ask
    groups = analytics.group_spend(await rollup.spend(ledger, since_ms=since * 1000, until_ms=until * 1000))
    first_day, end_day = rollup.day_range(since * 1000, until * 1000, policy.timezone)
    distributions = await rollup.distribution(
        ledger, DISTRIBUTION_METRICS, policy.timezone, first_day=first_day, end_day=end_day, now_ms=to_ms(now)
    )
    daily = [
        admin_pb2.DailyUsage(
            tier=row.tier,
            metric=metric,
            subject_days=row.subject_days,
            p50=from_units(metric, row.p50),
            p95=from_units(metric, row.p95),
            max=from_units(metric, row.max),
            cap=_daily_cap(policy, row.tier, metric),
        )
        for metric, rows in distributions.items()
        for row in rows
    ]
    by_tier = groups["tier"]
    return admin_pb2.GetAnalyticsResponse(
        period=chosen,
        since=since,
        until=until,
        cost_usd=from_units(COST_METRIC, sum(r.cost_micros for r in by_tier)),
        records=sum(r.records for r in by_tier),
        by_tier=[_group(r) for r in by_tier],
        by_feature=[_group(r) for r in groups["feature"]],
        by_provider=[_group(r) for r in groups["provider"]],
        by_model=[_group(r) for r in groups["model"]],
        daily=daily,
    )


#: GetAnalytics answers younger than this are served as they are (seconds) ...
ANALYTICS_FRESH_SECONDS = 15.0
#: ... older ones (up to this age) are served while a refresh runs in the background.
ANALYTICS_STALE_SECONDS = 600.0


class AnalyticsCache:
    """GetAnalytics from memory: the ledger's aggregates of a period scan every record of it
    (a second or more with a million rows on SQLite), so each (period, policy version) is
    computed at most once per :data:`ANALYTICS_FRESH_SECONDS` in the background and served
    from here (stale while revalidating, up to :data:`ANALYTICS_STALE_SECONDS`); the first
    ask of a period computes it. The live views (overview, subject) never go through it."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._answers: dict[tuple[str, str], tuple[float, admin_pb2.GetAnalyticsResponse]] = {}
        self._running: dict[tuple[str, str], asyncio.Task[admin_pb2.GetAnalyticsResponse]] = {}

    async def report(
        self, ledger: Ledger, policy: CompiledPolicy, *, period: str, now: datetime
    ) -> admin_pb2.GetAnalyticsResponse:
        chosen = period or "today"
        if chosen not in PERIODS:
            return await analytics_report(ledger, policy, period=chosen, now=now)  # the refusal, as ever
        key = (chosen, policy.version)
        cached = self._answers.get(key)
        age = self._clock() - cached[0] if cached else float("inf")
        if cached is not None and age < ANALYTICS_FRESH_SECONDS:
            return cached[1]
        task = self._refresh(key, ledger, policy, now)
        if cached is not None and age < ANALYTICS_STALE_SECONDS:
            return cached[1]  # the refresh runs on
        return await asyncio.shield(task)

    def _refresh(
        self, key: tuple[str, str], ledger: Ledger, policy: CompiledPolicy, now: datetime
    ) -> asyncio.Task[admin_pb2.GetAnalyticsResponse]:
        running = self._running.get(key)
        if running is not None and not running.done():
            return running

        async def compute() -> admin_pb2.GetAnalyticsResponse:
            try:
                answer = await analytics_report(ledger, policy, period=key[0], now=now)
                self._answers[key] = (self._clock(), answer)
                return answer
            finally:
                self._running.pop(key, None)

        task = asyncio.get_running_loop().create_task(compute(), name=f"analytics {key[0]}")
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: never "never retrieved"
        self._running[key] = task
        return task
