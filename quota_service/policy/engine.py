"""The decision engine: pure functions from a request, a compiled policy, the subject's
admin config and the active emergency stops to a :class:`Plan`, and from a plan and
counter values to an :class:`Outcome`. No I/O, no grpc, no redis, no yaml.

The decision rule (DESIGN.md), per limit on a counter the request uses (``ask > 0``),
with ``uh = used + held`` before this request:

* DENY  if ``uh >= block_at * max`` or ``uh + ask > max``
* WARN  if ``uh + ask >= warn_at * max``
* ALLOW otherwise

Hard stops and global caps have no thresholds (deny only past ``max``). The request's
decision is the worst over all its limits. The Redis scripts apply the same DENY
predicate atomically (through :meth:`CounterPlan.charge`); this module is the one that
explains it: the reason, the message and the limit that decided.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from quota_service.errors import InvalidRequest
from quota_service.policy.compiled import CompiledPolicy, Limit, LimitKind, Tier, UnpricedMode, micros_at
from quota_service.policy.units import COST_METRIC, MAX_UNITS, from_units, parse_usage
from quota_service.policy.windows import Window, WindowSpan, current_span
from quota_service.store.base import (
    GLOBAL_SCOPE,
    CounterCharge,
    CounterRef,
    CounterValue,
    OverrideRecord,
    SubjectConfig,
)

# How long a counter key outlives its window: late commits still land on it.
COUNTER_RETENTION_SECONDS = 86_400
MAX_TTL_SECONDS = 86_400
_NAME = re.compile(r"^[^\s{}\x00-\x1f\x7f]{1,256}$")


class Decision(enum.IntEnum):
    """Ordered: a request's decision is the ``max`` over its limits."""

    ALLOW = 1
    WARN = 2
    DENY = 3


class Reason(enum.Enum):
    WITHIN_LIMITS = "WITHIN_LIMITS"
    WARN_THRESHOLD = "WARN_THRESHOLD"
    BLOCK_THRESHOLD = "BLOCK_THRESHOLD"
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
    HARD_STOP = "HARD_STOP"
    GLOBAL_LIMIT = "GLOBAL_LIMIT"
    EMERGENCY_STOP = "EMERGENCY_STOP"
    FEATURE_NOT_ALLOWED = "FEATURE_NOT_ALLOWED"
    UNPRICED_MODEL = "UNPRICED_MODEL"
    UNKNOWN_TIER = "UNKNOWN_TIER"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"


class StopScope(enum.Enum):
    GLOBAL = "GLOBAL"
    PROVIDER = "PROVIDER"
    FEATURE = "FEATURE"
    TIER = "TIER"
    SUBJECT = "SUBJECT"


@dataclass(frozen=True, slots=True)
class EmergencyStop:
    """An admin's stop: every request it covers is denied before any counter is read."""

    scope: StopScope
    target: str = ""
    reason: str = ""
    created_at: int = 0
    created_by: str = ""

    def covers(self, request: QuotaRequest, tier: str) -> bool:
        match self.scope:
            case StopScope.GLOBAL:
                return True
            case StopScope.PROVIDER:
                return request.provider == self.target
            case StopScope.FEATURE:
                return request.feature == self.target
            case StopScope.TIER:
                return tier == self.target
            case StopScope.SUBJECT:
                return request.subject == self.target

    def describe(self) -> str:
        where = "everything" if self.scope is StopScope.GLOBAL else f"{self.scope.value.lower()} {self.target!r}"
        return f"emergency stop on {where}" + (f": {self.reason}" if self.reason else "")


@dataclass(frozen=True, slots=True)
class QuotaRequest:
    """A validated CheckAndReserve request. ``usage`` is in whole units, zero amounts
    dropped, never ``cost_usd``. ``ttl_seconds`` 0 means the policy default."""

    subject: str
    feature: str
    provider: str
    model: str
    usage: Mapping[str, int]
    request_id: str = ""
    dry_run: bool = False
    ttl_seconds: int = 0


def validate_name(field_name: str, value: str, *, required: bool = True) -> str:
    """Subjects, features, providers, models and request ids: 1-256 characters, no
    whitespace, braces or control characters (they end up inside Redis keys)."""
    if not value:
        if required:
            raise InvalidRequest(f"{field_name} is required")
        return value
    if not _NAME.match(value):
        raise InvalidRequest(
            f"{field_name} {value[:80]!r} is not valid: 1-256 characters, no whitespace, braces or control characters"
        )
    return value


def build_request(
    *,
    subject: str,
    feature: str,
    provider: str,
    model: str,
    usage: Mapping[str, float],
    request_id: str = "",
    dry_run: bool = False,
    ttl_seconds: int = 0,
) -> QuotaRequest:
    """Validate wire values into a :class:`QuotaRequest`; :class:`InvalidRequest` otherwise."""
    validate_name("subject", subject)
    validate_name("feature", feature)
    validate_name("provider", provider, required=False)
    validate_name("model", model, required=False)
    validate_name("request_id", request_id, required=False)
    if model and not provider:
        raise InvalidRequest("model given without provider")
    if ttl_seconds < 0 or ttl_seconds > MAX_TTL_SECONDS:
        raise InvalidRequest(f"reservation_ttl_seconds must be between 0 and {MAX_TTL_SECONDS}")
    units = parse_usage(dict(usage))
    if not units:
        raise InvalidRequest("usage must name at least one metric with a positive amount")
    return QuotaRequest(subject, feature, provider, model, units, request_id, dry_run, ttl_seconds)


@dataclass(frozen=True, slots=True)
class CounterPlan:
    """One counter the request touches, the amount it asks and every limit on it."""

    ref: CounterRef
    ask: int
    limits: tuple[Limit, ...]

    def charge(self) -> CounterCharge:
        return CounterCharge(
            counter=self.ref,
            ask=self.ask,
            cap=min(limit.max_units for limit in self.limits),
            block=min(limit.block_units for limit in self.limits),
        )


@dataclass(frozen=True, slots=True)
class LimitReport:
    """One limit's state for the response; amounts in units, before this request
    unless ``reserved`` (then ``held`` includes the request's ask)."""

    limit: Limit
    ref: CounterRef
    used: int
    held: int
    decision: Decision
    reason: Reason

    @property
    def remaining(self) -> int:
        return max(0, self.limit.max_units - self.used - self.held)

    @property
    def ratio(self) -> float:
        if self.limit.max_units == 0:
            return 1.0 if self.used + self.held > 0 else 0.0
        return (self.used + self.held) / self.limit.max_units


@dataclass(frozen=True, slots=True)
class Outcome:
    decision: Decision
    reason: Reason
    message: str
    limits: tuple[LimitReport, ...] = ()
    deciding: LimitReport | None = None
    retry_after_seconds: int = 0


@dataclass(frozen=True, slots=True)
class Plan:
    """What to reserve for a request, or the denial that needs no counter (``denial``)."""

    request: QuotaRequest
    tier: Tier | None
    asks: Mapping[str, int]
    counters: tuple[CounterPlan, ...] = ()
    global_counters: tuple[CounterPlan, ...] = ()
    denial: Outcome | None = None
    ttl_seconds: int = 0
    now: int = 0  # unix seconds the plan was made for
    meta: Mapping[str, str] = field(default_factory=dict)

    def subject_charges(self) -> tuple[CounterCharge, ...]:
        return tuple(c.charge() for c in self.counters)

    def global_charges(self) -> tuple[CounterCharge, ...]:
        return tuple(c.charge() for c in self.global_counters)

    @property
    def all_counters(self) -> tuple[CounterPlan, ...]:
        return self.counters + self.global_counters


def _deny(reason: Reason, message: str) -> Outcome:
    return Outcome(Decision.DENY, reason, message)


def active_overrides(config: SubjectConfig, now: int) -> dict[tuple[str, Window], OverrideRecord]:
    return {(o.metric, o.window): o for o in config.overrides if o.expires_at == 0 or o.expires_at > now}


def subject_limits(tier: Tier, config: SubjectConfig, now: int) -> tuple[Limit, ...]:
    """Every per-subject limit in force: the tier's limits with overrides replacing the
    cap of the same metric and window (or adding one), then the hard stops."""
    overrides = active_overrides(config, now)
    limits: list[Limit] = []
    for limit in tier.limits:
        override = overrides.pop(limit.counter, None)
        limits.append(limit if override is None else limit.with_max(override.max_units, LimitKind.OVERRIDE))
    for (metric, window), override in sorted(overrides.items()):
        limits.append(Limit(metric, window, override.max_units, LimitKind.OVERRIDE, tier.thresholds))
    limits.extend(tier.hard_stops)
    return tuple(limits)


def _group(
    scope: str, limits: Iterable[Limit], asks: Mapping[str, int] | None, policy: CompiledPolicy, now: datetime
) -> tuple[CounterPlan, ...]:
    """Limits grouped by counter. With ``asks``, only counters of metrics the request uses."""
    by_counter: dict[tuple[str, Window], list[Limit]] = {}
    for limit in limits:
        if asks is not None and asks.get(limit.metric, 0) <= 0:
            continue
        by_counter.setdefault(limit.counter, []).append(limit)
    plans = []
    for (metric, window), group in by_counter.items():
        span: WindowSpan = current_span(window, now, policy.timezone)
        ref = CounterRef(scope, metric, window, span.window_id, span.end, span.end + COUNTER_RETENTION_SECONDS)
        plans.append(CounterPlan(ref, (asks or {}).get(metric, 0), tuple(group)))
    return tuple(plans)


def plan(
    policy: CompiledPolicy,
    request: QuotaRequest,
    *,
    now: datetime,
    config: SubjectConfig,
    stops: Sequence[EmergencyStop] = (),
) -> Plan:
    """Resolve the subject's tier, the denials that need no counter, the cost, and the
    counters to reserve with their caps. Order of the early denials: unknown tier,
    emergency stop, feature not in tier, unpriced model."""
    now_s = int(now.timestamp())
    tier = policy.tier_for(config.tier)
    if tier is None:
        return Plan(request, None, {}, denial=_deny(Reason.UNKNOWN_TIER, f"tier {config.tier!r} does not exist"))
    for stop in stops:
        if stop.covers(request, tier.name):
            return Plan(request, tier, {}, denial=_deny(Reason.EMERGENCY_STOP, f"denied by {stop.describe()}"))
    if not tier.allows_feature(request.feature):
        return Plan(
            request,
            tier,
            {},
            denial=_deny(
                Reason.FEATURE_NOT_ALLOWED,
                f"feature {request.feature!r} is not included in tier {tier.display_name!r}",
            ),
        )
    cost, unpriced, rates = policy.prices.cost_micros(request.provider, request.model, request.usage)
    if unpriced and policy.unpriced is UnpricedMode.DENY:
        target = f"{request.provider}/{request.model}" if request.provider else "(no provider)"
        return Plan(
            request,
            tier,
            {},
            denial=_deny(Reason.UNPRICED_MODEL, f"no price for {', '.join(unpriced)} on {target}"),
        )
    if cost > MAX_UNITS:
        raise InvalidRequest("the request's cost is too large to count")
    asks = dict(request.usage)
    if cost:
        asks[COST_METRIC] = cost
    ttl = request.ttl_seconds or tier.reservation_ttl_seconds
    meta = {
        "feature": request.feature,
        "provider": request.provider,
        "model": request.model,
        "tier": tier.name,
        # Commit prices the actual usage at the rates of the reservation, not of a later policy.
        "rates": json.dumps({metric: str(rate) for metric, rate in rates.items()}, sort_keys=True),
    }
    return Plan(
        request,
        tier,
        asks,
        counters=_group(request.subject, subject_limits(tier, config, now_s), asks, policy, now),
        global_counters=_group(GLOBAL_SCOPE, policy.global_limits, asks, policy, now),
        ttl_seconds=ttl,
        now=now_s,
        meta=meta,
    )


def usage_counters(
    policy: CompiledPolicy, tier: Tier, config: SubjectConfig, subject: str, now: datetime
) -> tuple[CounterPlan, ...]:
    """Every per-subject counter with its limits, for GetUsage (nothing asked)."""
    return _group(subject, subject_limits(tier, config, int(now.timestamp())), None, policy, now)


def judge(limit: Limit, used: int, held: int, ask: int) -> tuple[Decision, Reason]:
    """The decision rule for one limit, in integer units (see the module docstring)."""
    uh = used + held
    deny_reason = {
        LimitKind.HARD_STOP: Reason.HARD_STOP,
        LimitKind.GLOBAL: Reason.GLOBAL_LIMIT,
    }.get(limit.kind)
    if uh >= limit.block_units:
        return Decision.DENY, deny_reason or Reason.BLOCK_THRESHOLD
    if uh + ask > limit.max_units:
        return Decision.DENY, deny_reason or Reason.LIMIT_EXCEEDED
    if limit.warn_units is not None and uh + ask >= limit.warn_units:
        return Decision.WARN, Reason.WARN_THRESHOLD
    return Decision.ALLOW, Reason.WITHIN_LIMITS


def _amount(limit: Limit, units: int) -> str:
    value = from_units(limit.metric, units)
    if limit.metric == COST_METRIC:
        return f"${value:,.2f}"
    return f"{value:,.0f} {limit.metric}"


def _describe(report: LimitReport, ask: int) -> str:
    limit = report.limit
    label = {
        LimitKind.TIER: f"{limit.metric} per {limit.window.value}",
        LimitKind.OVERRIDE: f"{limit.metric} per {limit.window.value} (override)",
        LimitKind.HARD_STOP: f"hard stop on {limit.metric} per {limit.window.value}",
        LimitKind.GLOBAL: f"company-wide {limit.metric} per {limit.window.value}",
    }[limit.kind]
    uh = report.used + report.held
    if report.reason is Reason.BLOCK_THRESHOLD:
        return f"{label}: {_amount(limit, uh)} of {_amount(limit, limit.max_units)} used, at the block threshold"
    if report.decision is Decision.DENY:
        return (
            f"{label}: {_amount(limit, uh)} of {_amount(limit, limit.max_units)} used; "
            f"{_amount(limit, ask)} more would pass the cap"
        )
    return f"{label}: {_amount(limit, uh)} of {_amount(limit, limit.max_units)} used ({report.ratio:.0%})"


def decide(plan: Plan, values: Mapping[CounterRef, CounterValue], *, reserved: bool) -> Outcome:
    """The decision for ``plan`` given each counter's value *before* this request.

    ``reserved``: the store held the request's asks, so the reported ``held`` includes them.
    A missing value counts as zero.
    """
    if plan.denial is not None:
        return plan.denial
    reports: list[tuple[LimitReport, int]] = []
    for counter in plan.all_counters:
        value = values.get(counter.ref, CounterValue())
        held_after = value.held + (counter.ask if reserved else 0)
        for limit in counter.limits:
            decision, reason = judge(limit, value.used, value.held, counter.ask)
            reports.append((LimitReport(limit, counter.ref, value.used, held_after, decision, reason), counter.ask))
    if not reports:
        return Outcome(Decision.ALLOW, Reason.WITHIN_LIMITS, "no limit applies", ())
    worst = max(r.decision for r, _ in reports)
    if worst is Decision.ALLOW:
        return Outcome(Decision.ALLOW, Reason.WITHIN_LIMITS, "within limits", tuple(r for r, _ in reports))
    candidates = [(r, ask) for r, ask in reports if r.decision is worst]
    if worst is Decision.DENY:
        # The limit that blocks longest decides; its reset is when a retry can succeed.
        deciding, ask = max(candidates, key=lambda item: (item[0].ref.resets_at, item[0].ratio))
        retry_after = max(0, deciding.ref.resets_at - plan.now)
    else:
        deciding, ask = max(candidates, key=lambda item: item[0].ratio)
        retry_after = 0
    return Outcome(
        worst,
        deciding.reason,
        _describe(deciding, ask),
        tuple(r for r, _ in reports),
        deciding,
        retry_after,
    )


def settlement(asks: Mapping[str, int], meta: Mapping[str, str], usage: Mapping[str, float]) -> dict[str, int]:
    """The actual units to settle a reservation with: ``usage`` validated (a metric left
    out counts 0), and ``cost_usd`` derived at the reservation's own rates (rounded up)
    when the reservation held a cost. A metric that was not reserved is refused: it has
    no counter in the reservation to land on."""
    actual = parse_usage(dict(usage))
    unreserved = sorted(set(actual) - set(asks))
    if unreserved:
        raise InvalidRequest(
            f"usage names {', '.join(unreserved)}, which this reservation did not reserve "
            f"(reserved: {', '.join(sorted(m for m in asks if m != COST_METRIC))})"
        )
    settled = {metric: actual.get(metric, 0) for metric in asks if metric != COST_METRIC}
    if COST_METRIC in asks:
        rates = {m: Decimal(r) for m, r in json.loads(meta.get("rates", "{}")).items()}
        settled[COST_METRIC] = micros_at(rates, settled)
    return settled


def report_usage(counters: Iterable[CounterPlan], values: Mapping[CounterRef, CounterValue]) -> tuple[LimitReport, ...]:
    """Each limit's state with nothing asked: DENY means the next request will be refused."""
    reports = []
    for counter in counters:
        value = values.get(counter.ref, CounterValue())
        for limit in counter.limits:
            decision, reason = judge(limit, value.used, value.held, 0)
            reports.append(LimitReport(limit, counter.ref, value.used, value.held, decision, reason))
    return tuple(reports)
