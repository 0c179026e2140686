"""The decision engine: pure functions from a validated request, a compiled policy, the
subject's admin config and the active emergency stops to a :class:`Plan`, and from a plan
and counter values to an :class:`Outcome`. No I/O, no grpc, no redis, no yaml, nothing of
the store.

The decision rule (DESIGN.md), per limit on a counter the request uses (``ask > 0``),
with ``uh = used + held`` before this request:

* DENY  if ``uh >= block_at * max`` or ``uh + ask > max``
* WARN  if ``uh + ask >= warn_at * max``
* ALLOW otherwise

Hard stops and global caps have no thresholds (deny only past ``max``). The request's
decision is the worst over all its limits. This module is the one place the rule lives:
the store applies its DENY half atomically from the caps and block lines the plan hands it
(:meth:`CounterPlan.charge`), and :func:`decide` explains the store's verdict (reason,
message, the deciding limit) from the values the store saw; it never overrules it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from quota_service.errors import InvalidRequest
from quota_service.policy import messages
from quota_service.policy.compiled import CompiledPolicy, Limit, LimitKind, Tier, UnpricedMode, micros_at
from quota_service.policy.domain import (
    GLOBAL_SCOPE,
    CounterCharge,
    CounterRef,
    CounterValue,
    Decision,
    OverrideRecord,
    Reason,
    SubjectConfig,
)
from quota_service.policy.stops import EmergencyStop
from quota_service.policy.units import COST_METRIC, MAX_UNITS, METRIC_NAME, parse_usage
from quota_service.policy.validation import QuotaRequest
from quota_service.policy.windows import Window, current_span

__all__ = [
    "Admission",
    "CounterPlan",
    "LimitReport",
    "Outcome",
    "Plan",
    "PlanShape",
    "PlannedCharges",
    "active_overrides",
    "admit",
    "decide",
    "judge",
    "plan",
    "plan_shape",
    "report_usage",
    "settlement",
    "subject_limits",
    "usage_counters",
]


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


class PlannedCharges(tuple[CounterCharge, ...]):
    """Charges :func:`plan` built from a checked :class:`PlanShape`: every metric name,
    cap and block line was checked once when the shape was built, every ask when the plan
    was made, each counter is charged once and every counter is of one scope (the store
    still checks that one). The store's precondition check
    (:func:`quota_service.store.base.check_charges`) holds for them by construction and
    skips the rest; any other sequence of charges is checked in full. Made only by
    :func:`plan` (immutable: a tuple of frozen charges)."""

    __slots__ = ()


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
    """What to reserve for a request, or the denial that needs no counter (``denial``).

    ``estimate``: the request's usage per metric (units, ``cost_usd`` excluded), counted or
    not: a Commit may name any of them. ``rates``: USD per unit of each priced metric the
    request uses, at which a later Commit is priced (never a later policy's prices).
    ``cost``: the estimate's cost in micro-dollars (0 when nothing is priced)."""

    request: QuotaRequest
    tier: Tier | None
    counters: tuple[CounterPlan, ...] = ()
    global_counters: tuple[CounterPlan, ...] = ()
    denial: Outcome | None = None
    ttl_seconds: int = 0
    now: int = 0  # unix seconds the plan was made for
    estimate: Mapping[str, int] = field(default_factory=dict)
    rates: Mapping[str, Decimal] = field(default_factory=dict)
    cost: int = 0
    #: The cached, request-independent part this plan was made from (``None``: made
    #: another way). Not an init field: ``dataclasses.replace`` never carries it over.
    shape: PlanShape | None = field(default=None, init=False, compare=False, repr=False)
    #: The charges :func:`plan` built with the counters (subject's, company-wide's).
    _charges: tuple[tuple[CounterCharge, ...], tuple[CounterCharge, ...]] | None = field(
        default=None, init=False, compare=False, repr=False
    )

    def subject_charges(self) -> tuple[CounterCharge, ...]:
        if self._charges is not None:
            return self._charges[0]
        return tuple(c.charge() for c in self.counters)

    def global_charges(self) -> tuple[CounterCharge, ...]:
        if self._charges is not None:
            return self._charges[1]
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
        span = current_span(window, now, policy.timezone)
        ref = CounterRef(scope, metric, window, span.window_id, span.end)
        plans.append(CounterPlan(ref, (asks or {}).get(metric, 0), tuple(group)))
    return tuple(plans)


#: Plan shapes kept at once (policy x tier x overrides in force x metrics asked, in the
#: current windows); beyond, the oldest is dropped.
SHAPE_CACHE_SIZE = 1024
#: Policies whose shapes are kept (the live one, and those of requests still in flight or
#: of a simulation comparing policies); a shape of an older one is dropped with it.
SHAPE_POLICIES = 4


@dataclass(frozen=True, slots=True)
class _CounterShape:
    """One counter of a shape: its metric and current window, its limits and their gate."""

    metric: str
    window: Window
    window_id: str
    resets_at: int
    limits: tuple[Limit, ...]
    cap: int
    block: int


class PlanShape:
    """What every plan of one (policy, tier, overrides in force, metrics asked) has in
    common while its windows are current, whatever the request's subject and amounts:
    the counters grouped with their limits, each counter's cap and block line, the current
    window ids, the company-wide counters, and the plan-level replay text (filled in once
    by the caller, :attr:`answer`). Valid for the instants ``[valid_from, valid_until)``
    (the overlap of its windows). ``checked``: every metric name, cap and block line is
    one the store accepts (see :class:`PlannedCharges`)."""

    __slots__ = (
        "answer",
        "checked",
        "company",
        "company_refs",
        "lines",
        "own",
        "policy",
        "valid_from",
        "valid_until",
    )

    def __init__(
        self,
        policy: CompiledPolicy,
        own: tuple[_CounterShape, ...],
        company: tuple[_CounterShape, ...],
        valid_from: float,
        valid_until: float,
    ) -> None:
        self.policy = policy  # held, so the id in the cache key stays this policy's
        self.own = own
        self.company = company
        self.company_refs = tuple(
            CounterRef(GLOBAL_SCOPE, c.metric, c.window, c.window_id, c.resets_at) for c in company
        )
        self.valid_from = valid_from
        self.valid_until = valid_until
        self.checked = all(
            METRIC_NAME.fullmatch(c.metric) is not None and _is_units(c.cap) and _is_units(c.block)
            for c in own + company
        )
        #: The plan-level replay text (:func:`quota_service.policy.replay.encode`), once known.
        self.answer: str | None = None
        #: The caller's encoding of the threshold lines (subject's, company-wide), once known.
        self.lines: tuple[str, str] | None = None


def _is_units(value: object) -> bool:
    """A whole number of units in [0, 2**53) (what the store's ``check_units`` accepts)."""
    return type(value) is int and 0 <= value <= MAX_UNITS


def _counter_shapes(
    limits: Iterable[Limit], metrics: frozenset[str], policy: CompiledPolicy, now: datetime
) -> tuple[tuple[_CounterShape, ...], float, float]:
    """:func:`_group`'s counters for the metrics asked, and the overlap of their windows."""
    by_counter: dict[tuple[str, Window], list[Limit]] = {}
    for limit in limits:
        if limit.metric in metrics:
            by_counter.setdefault(limit.counter, []).append(limit)
    shapes = []
    start, end = float("-inf"), float("inf")
    for (metric, window), group in by_counter.items():
        span = current_span(window, now, policy.timezone)
        start, end = max(start, span.start), min(end, span.end)
        shapes.append(
            _CounterShape(
                metric,
                window,
                span.window_id,
                span.end,
                tuple(group),
                min(limit.max_units for limit in group),
                min(limit.block_units for limit in group),
            )
        )
    return tuple(shapes), start, end


_SHAPES: dict[tuple[object, ...], PlanShape] = {}
#: The policies with shapes in the cache, oldest first (at most ``SHAPE_POLICIES``).
_SHAPE_POLICIES: list[CompiledPolicy] = []
_SHAPES_LOCK = threading.Lock()


def plan_shape(
    policy: CompiledPolicy, tier: Tier, config: SubjectConfig, metrics: frozenset[str], now: datetime
) -> PlanShape:
    """The shape of every plan of ``tier`` under ``policy`` for a subject with ``config``
    asking ``metrics`` at ``now``: from a bounded cache keyed on the policy (the object),
    the tier, the overrides in force and the metrics, rebuilt once ``now`` leaves its
    windows. The config's version is not in the key: versions are per subject, and the
    shape depends only on the tier and the overrides in force."""
    instant = now.timestamp()
    now_s = int(instant)
    overrides = tuple(o for o in config.overrides if o.expires_at == 0 or o.expires_at > now_s)
    key = (id(policy), tier.name, overrides, metrics)
    shape = _SHAPES.get(key)
    if shape is not None and shape.policy is policy and shape.valid_from <= instant < shape.valid_until:
        return shape
    own, own_from, own_until = _counter_shapes(subject_limits(tier, config, now_s), metrics, policy, now)
    company, company_from, company_until = _counter_shapes(policy.global_limits, metrics, policy, now)
    shape = PlanShape(policy, own, company, max(own_from, company_from), min(own_until, company_until))
    with _SHAPES_LOCK:
        if not any(p is policy for p in _SHAPE_POLICIES):
            _SHAPE_POLICIES.append(policy)
            if len(_SHAPE_POLICIES) > SHAPE_POLICIES:
                # A reloaded policy's shapes go with it: the cache holds no policy for long.
                gone = id(_SHAPE_POLICIES.pop(0))
                for old in [k for k in _SHAPES if k[0] == gone]:
                    del _SHAPES[old]
        _SHAPES.pop(key, None)
        while len(_SHAPES) >= SHAPE_CACHE_SIZE:
            del _SHAPES[next(iter(_SHAPES))]
        _SHAPES[key] = shape
    return shape


@dataclass(frozen=True, slots=True)
class Admission:
    """What :func:`admit` found: the subject's tier, the denial that needs no counter
    (``None``: the counters decide), and, when admitted, every metric's ask in units
    (``cost_usd`` included when anything is priced), the metrics asked (``ask > 0``), the
    cost in micro-dollars and the rates it was priced at."""

    tier: Tier | None
    denial: Outcome | None = None
    asks: dict[str, int] = field(default_factory=dict)
    metrics: frozenset[str] = frozenset()
    cost: int = 0
    rates: dict[str, Decimal] = field(default_factory=dict)


def admit(
    policy: CompiledPolicy, request: QuotaRequest, *, config: SubjectConfig, stops: Sequence[EmergencyStop] = ()
) -> Admission:
    """The denials that need no counter, in order: unknown tier, emergency stop, feature
    not in tier, unpriced model; else the request's asks and cost (what :func:`plan` and a
    shadow policy's decision start from)."""
    tier = policy.tier_for(config.tier)
    if tier is None:
        return Admission(None, _deny(Reason.UNKNOWN_TIER, f"tier {config.tier!r} does not exist"))
    for stop in stops:
        if stop.covers(request, tier.name):
            return Admission(tier, _deny(Reason.EMERGENCY_STOP, f"denied by {stop.describe()}"))
    if not tier.allows_feature(request.feature):
        message = f"feature {request.feature!r} is not included in tier {tier.display_name!r}"
        return Admission(tier, _deny(Reason.FEATURE_NOT_ALLOWED, message))
    cost, unpriced, rates = policy.prices.cost_micros(request.provider, request.model, request.usage)
    if unpriced and policy.unpriced is UnpricedMode.DENY:
        target = f"{request.provider}/{request.model}" if request.provider else "(no provider)"
        return Admission(tier, _deny(Reason.UNPRICED_MODEL, f"no price for {', '.join(unpriced)} on {target}"))
    if cost > MAX_UNITS:
        raise InvalidRequest("the request's cost is too large to count")
    asks = dict(request.usage)
    if cost:
        asks[COST_METRIC] = cost
    return Admission(tier, None, asks, frozenset(m for m, ask in asks.items() if ask > 0), cost, rates)


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
    emergency stop, feature not in tier, unpriced model. What does not depend on the
    request's subject and amounts comes from :func:`plan_shape`."""
    now_s = int(now.timestamp())
    admitted = admit(policy, request, config=config, stops=stops)
    tier = admitted.tier
    if admitted.denial is not None or tier is None:
        return Plan(request, tier, denial=admitted.denial)
    asks = admitted.asks
    cost, rates = admitted.cost, admitted.rates
    shape = plan_shape(policy, tier, config, admitted.metrics, now)
    subject = request.subject
    counters = []
    own_charges = []
    checked = shape.checked
    for c in shape.own:
        ask = asks[c.metric]
        checked = checked and _is_units(ask)
        ref = CounterRef(subject, c.metric, c.window, c.window_id, c.resets_at)
        counters.append(CounterPlan(ref, ask, c.limits))
        own_charges.append(CounterCharge(ref, ask, c.cap, c.block))
    global_counters = []
    company_charges = []
    for c, ref in zip(shape.company, shape.company_refs, strict=True):
        ask = asks[c.metric]
        checked = checked and _is_units(ask)
        global_counters.append(CounterPlan(ref, ask, c.limits))
        company_charges.append(CounterCharge(ref, ask, c.cap, c.block))
    the_plan = Plan(
        request,
        tier,
        counters=tuple(counters),
        global_counters=tuple(global_counters),
        ttl_seconds=request.ttl_seconds or tier.reservation_ttl_seconds,
        now=now_s,
        estimate=dict(request.usage),
        rates=rates,
        cost=cost,
    )
    charges = (
        (PlannedCharges(own_charges), PlannedCharges(company_charges))
        if checked
        else (tuple(own_charges), tuple(company_charges))
    )
    object.__setattr__(the_plan, "shape", shape)
    object.__setattr__(the_plan, "_charges", charges)
    return the_plan


def usage_counters(
    policy: CompiledPolicy, tier: Tier, config: SubjectConfig, subject: str, now: datetime
) -> tuple[CounterPlan, ...]:
    """Every per-subject counter with its limits, for GetUsage (nothing asked)."""
    return _group(subject, subject_limits(tier, config, int(now.timestamp())), None, policy, now)


_DENY_REASON = {LimitKind.HARD_STOP: Reason.HARD_STOP, LimitKind.GLOBAL: Reason.GLOBAL_LIMIT}
_ALLOW = Decision.ALLOW
_WITHIN = (Decision.ALLOW, Reason.WITHIN_LIMITS)
_WARNED = (Decision.WARN, Reason.WARN_THRESHOLD)
_NO_VALUE = CounterValue()  # a missing counter counts as zero (immutable: shared)


def judge(limit: Limit, used: int, held: int, ask: int) -> tuple[Decision, Reason]:
    """The decision rule for one limit, in integer units (see the module docstring)."""
    uh = used + held
    if uh >= limit.block_units:
        return Decision.DENY, _DENY_REASON.get(limit.kind, Reason.BLOCK_THRESHOLD)
    if uh + ask > limit.max_units:
        return Decision.DENY, _DENY_REASON.get(limit.kind, Reason.LIMIT_EXCEEDED)
    warn = limit.warn_units
    if warn is not None and uh + ask >= warn:
        return _WARNED
    return _WITHIN


def _describe(report: LimitReport, ask: int) -> str:
    uh = report.used + report.held
    if report.decision is Decision.DENY:
        if report.reason is Reason.BLOCK_THRESHOLD:
            return messages.at_block_line(report.limit, uh)
        return messages.past_cap(report.limit, uh, ask)
    return messages.within(report.limit, uh, report.ratio)


def decide(
    plan: Plan, values: Mapping[CounterRef, CounterValue], *, reserved: bool, store_denied: bool = False
) -> Outcome:
    """The decision for ``plan`` given each counter's value *before* this request.

    The store's verdict, when there was one, is the decision's DENY half (its atomic gate
    applies the rule): ``reserved``: the store held every ask (the reported ``held``
    includes them), so the answer is ALLOW or WARN; ``store_denied``: the gate refused,
    so the answer is DENY. Neither (a dry run, a simulation): the rule alone decides.
    This function only explains the verdict: the reason, the message and the deciding
    limit, from the values the store saw. A verdict no limit explains (a bug, or values
    that moved under a non-atomic read) is said so in the message, never overruled.
    A missing value counts as zero.

    The deciding limit of a DENY is one the request can never pass (its ask alone is above
    the cap: no ``retry_after``), else the one that blocks longest (``retry_after`` is when
    it resets). Of a WARN: the limit nearest its cap.
    """
    if reserved and store_denied:
        raise ValueError("the store either held the request or denied it, not both")
    if plan.denial is not None:
        return plan.denial
    reports: list[tuple[LimitReport, int]] = []
    worst = _ALLOW  # the least decision: the worst of none is ALLOW
    for counters in (plan.counters, plan.global_counters):
        for counter in counters:
            value = values.get(counter.ref, _NO_VALUE)
            used, held, ask = value.used, value.held, counter.ask
            held_after = held + ask if reserved else held
            for limit in counter.limits:
                decision, reason = judge(limit, used, held, ask)
                if decision > worst:
                    worst = decision
                reports.append((LimitReport(limit, counter.ref, used, held_after, decision, reason), ask))
    limits = tuple(r for r, _ in reports)
    if store_denied and worst is not Decision.DENY:
        return Outcome(
            Decision.DENY,
            Reason.LIMIT_EXCEEDED,
            "denied by the quota store's atomic check, although no limit of this request explains it "
            "from the values it reported",
            limits,
        )
    if reserved and worst is Decision.DENY:
        # The store's gate held it: the request is within every cap as the store saw it. Its
        # values moved past a line meanwhile (or disagree): explain it as a WARN, never deny.
        candidates = [(r, ask) for r, ask in reports if r.decision is not Decision.ALLOW]
        deciding, _ = max(candidates, key=lambda item: item[0].ratio)
        message = messages.within(deciding.limit, deciding.used + deciding.held, deciding.ratio)
        return Outcome(Decision.WARN, Reason.WARN_THRESHOLD, message, limits, deciding)
    if not reports:
        return Outcome(Decision.ALLOW, Reason.WITHIN_LIMITS, "no limit applies", ())
    if worst is Decision.ALLOW:
        return Outcome(Decision.ALLOW, Reason.WITHIN_LIMITS, "within limits", limits)
    candidates = [(r, ask) for r, ask in reports if r.decision is worst]
    retry_after = 0
    if worst is Decision.DENY:
        hopeless = [(r, ask) for r, ask in candidates if ask > r.limit.max_units]
        if hopeless:
            deciding, ask = hopeless[0]
        else:
            deciding, ask = max(candidates, key=lambda item: (item[0].ref.resets_at, item[0].ratio))
            retry_after = max(0, deciding.ref.resets_at - plan.now)
    else:
        deciding, ask = max(candidates, key=lambda item: item[0].ratio)
    return Outcome(worst, deciding.reason, _describe(deciding, ask), limits, deciding, retry_after)


def settlement(estimate: Mapping[str, int], rates: Mapping[str, Decimal], usage: Mapping[str, float]) -> dict[str, int]:
    """The actual units to settle a reservation with: ``usage`` validated (a metric left
    out counts 0), plus ``cost_usd`` at the reservation's own ``rates`` (rounded up) when
    the reservation priced anything. ``estimate`` is what the reservation asked per metric
    (counted on a counter or only priced): a Commit may name any of those metrics, and no
    other (it would have nothing to land on and no price)."""
    actual = parse_usage(dict(usage))
    unknown = sorted(set(actual) - set(estimate))
    if unknown:
        raise InvalidRequest(
            f"usage names {', '.join(unknown)}, which this reservation did not estimate "
            f"(estimated: {', '.join(sorted(estimate)) or 'nothing'})"
        )
    settled = {metric: actual.get(metric, 0) for metric in estimate}
    if rates:
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
