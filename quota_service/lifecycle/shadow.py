"""Shadow policies: ``serve --shadow-policies PATH`` decides a second policy on every
CheckAndReserve against the live counters, reserving nothing and enforcing nothing.

The rule is the engine's (:func:`~quota_service.policy.engine.plan` and
:func:`~quota_service.policy.engine.decide` with neither ``reserved`` nor ``store_denied``:
the rule alone decides, as for a dry run), applied to the counter values *before* the live
request, as the live reservation step reported them. A counter the shadow policy has and
the live request did not read (another window, a metric the live policy does not cap, or
an early live denial that read nothing) is read from the store afterwards, off the
request's path and outside its deadline (the store's own timeout bounds it); it is not one
the live request reserved on, so its value is the one the live request saw, give or take
concurrent requests.

Off the hot path: :meth:`Shadow.observe` (called by the quota path once the live answer is
built) only queues what the request saw and schedules one drain on the event loop; the
shadow decisions run after the live answer is on its way, in batches of at most
:data:`DRAIN_BATCH`. At most :data:`MAX_PENDING` requests wait; more are dropped and counted
(``dropped``), never queued without bound, never slowing the live path.

A **divergence** is a shadow decision other than the live one. Each is counted by the live
tier and the pair ``<live>-><shadow>`` (``ALLOW->DENY``, ``DENY->ALLOW``, ``ALLOW->WARN``,
...): the ``quota_shadow_divergences_total{tier,reason}`` metric and :meth:`Shadow.status`
(this replica, since start). At most ``samples_per_second`` per tier (a token bucket,
:class:`SampleGate`) become ``SHADOW_DIVERGED`` events in the feed, through ``record`` (the
usage relay's in-memory hand-over).

Live answers decided without the store's verdict (the store unreachable or damaged data,
an outage's fail-open grants) and replays (the first answer, shadowed when it was made) are
not shadowed: there are no counter values to judge them on.

The deciding parts (:func:`fast_decision`, :func:`shadow_decision`, :func:`shadow_outcome`,
:func:`divergence_reason`, :class:`SampleGate`, :func:`divergence_event`) are pure. Every
request pays the admission, the cached plan shape and the rule (:func:`fast_decision`); only
a counter the live request did not read costs a plan (and a read), only a sampled divergence
the explained answer. :class:`Shadow` is the little scheduling around them and imports
neither grpc nor redis (``read_counters`` is the store's ``usage``).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from quota_service.clock import to_ms
from quota_service.ledger.events import Event, EventKind, LimitSnapshot, new_event_id
from quota_service.metrics import SHADOW_DECISIONS, SHADOW_DIVERGENCES
from quota_service.policy.compiled import CompiledPolicy
from quota_service.policy.domain import GLOBAL_SCOPE, CounterRef, CounterValue, Decision, SubjectConfig
from quota_service.policy.engine import Outcome, Plan, admit, decide, judge, plan, plan_shape
from quota_service.policy.stops import EmergencyStop
from quota_service.policy.validation import QuotaRequest

__all__ = [
    "DEFAULT_SAMPLES_PER_SECOND",
    "SampleGate",
    "Shadow",
    "ShadowStatus",
    "divergence_event",
    "divergence_reason",
    "fast_decision",
    "shadow_decision",
    "shadow_outcome",
]

log = logging.getLogger(__name__)

#: SHADOW_DIVERGED events written per tier and second at most, by default.
DEFAULT_SAMPLES_PER_SECOND = 10.0
#: Requests waiting for their shadow decision at most (more are dropped and counted).
MAX_PENDING = 10_000
#: Shadow decisions made in one turn of the event loop at most (the rest in the next turn).
DRAIN_BATCH = 256
#: How long after the first waiting request the shadow decides (seconds): long enough for the
#: live answer to leave first (a call_soon would run before the gRPC reply is written), and
#: the requests of that time are decided in one turn.
DRAIN_DELAY = 0.002


# -- the pure part ------------------------------------------------------------------------------


def shadow_plan(
    policy: CompiledPolicy,
    request: QuotaRequest,
    *,
    config: SubjectConfig,
    stops: Sequence[EmergencyStop],
    now: datetime,
) -> Plan:
    """The shadow policy's plan of the live request (the same config, stops and instant)."""
    return plan(policy, request, now=now, config=config, stops=stops)


def shadow_outcome(the_plan: Plan, values: Mapping[CounterRef, CounterValue]) -> Outcome:
    """The shadow answer of ``the_plan`` on counter ``values`` before the live request
    (a missing value counts as zero): the engine's rule alone, nothing reserved, with its
    reason, message and deciding limit (what a SHADOW_DIVERGED event carries)."""
    return decide(the_plan, values, reserved=False)


_ZERO = CounterValue()


def fast_decision(
    policy: CompiledPolicy,
    request: QuotaRequest,
    *,
    config: SubjectConfig,
    stops: Sequence[EmergencyStop],
    now: datetime,
    values: Mapping[CounterRef, CounterValue],
) -> Decision | None:
    """``shadow_decision(shadow_plan(...), values)`` without building the plan (what every
    request pays: the admission, the cached plan shape and the rule per limit); ``None``
    when a counter of the shadow policy is not in ``values`` (then read it and use the plan).
    ``values`` are the live request's: its subject's counters and the company-wide ones."""
    admitted = admit(policy, request, config=config, stops=stops)
    if admitted.denial is not None or admitted.tier is None:
        return Decision.DENY
    shape = plan_shape(policy, admitted.tier, config, admitted.metrics, now)
    found = {(ref.scope == GLOBAL_SCOPE, ref.metric, ref.window, ref.window_id): v for ref, v in values.items()}
    asks = admitted.asks
    worst = Decision.ALLOW
    for company, counters in ((False, shape.own), (True, shape.company)):
        for counter in counters:
            value = found.get((company, counter.metric, counter.window, counter.window_id))
            if value is None:
                return None
            ask = asks[counter.metric]
            for limit in counter.limits:
                decision, _ = judge(limit, value.used, value.held, ask)
                if decision > worst:
                    worst = decision
    return worst


def shadow_decision(the_plan: Plan, values: Mapping[CounterRef, CounterValue]) -> Decision:
    """:func:`shadow_outcome`'s decision alone, without its message (what every request
    pays): the worst :func:`~quota_service.policy.engine.judge` over the plan's limits."""
    if the_plan.denial is not None:
        return the_plan.denial.decision
    worst = Decision.ALLOW
    for counter in the_plan.all_counters:
        value = values.get(counter.ref, _ZERO)
        for limit in counter.limits:
            decision, _ = judge(limit, value.used, value.held, counter.ask)
            if decision > worst:
                worst = decision
    return worst


def divergence_reason(live: Decision, shadow: Decision) -> str | None:
    """``"ALLOW->DENY"`` when the decisions differ; ``None`` when they agree."""
    return None if live is shadow else f"{live.name}->{shadow.name}"


class SampleGate:
    """At most ``per_second`` passes per key and second, in bursts of at most
    ``max(1, per_second)`` (a token bucket per key; ``per_second`` 0: never). ``monotonic``:
    seconds, injectable. Not thread-safe: one event loop uses it."""

    def __init__(self, per_second: float, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        if per_second < 0:
            raise ValueError("per_second must not be negative")
        self.per_second = per_second
        self._burst = max(1.0, per_second)
        self._monotonic = monotonic
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def allow(self, key: str) -> bool:
        if self.per_second == 0:
            return False
        now = self._monotonic()
        tokens, at = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self.per_second)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1, now)
        return True


def divergence_event(
    request: QuotaRequest,
    *,
    at_ms: int,
    live: Outcome,
    live_tier: str,
    live_version: str,
    shadow: Outcome,
    shadow_tier: str,
    shadow_version: str,
) -> Event:
    """The SHADOW_DIVERGED event: the request, the shadow's decision, reason and deciding
    limit (``decision``, ``reason``, ``limit``, ``policy_version`` are the shadow's), and both
    answers in ``detail``."""
    pair = divergence_reason(live.decision, shadow.decision) or "same"
    detail = {
        "divergence": pair,
        "live": {
            "decision": live.decision.name,
            "reason": live.reason.value,
            "tier": live_tier,
            "policy_version": live_version,
        },
        "shadow": {
            "decision": shadow.decision.name,
            "reason": shadow.reason.value,
            "tier": shadow_tier,
            "policy_version": shadow_version,
            "message": shadow.message[:512],
        },
    }
    return Event(
        id=new_event_id(EventKind.SHADOW_DIVERGED, at_ms),
        kind=EventKind.SHADOW_DIVERGED,
        at_ms=at_ms,
        subject=request.subject,
        tier=live_tier,
        feature=request.feature,
        provider=request.provider,
        model=request.model,
        request_id=request.request_id,
        estimate=dict(request.usage),
        decision=shadow.decision,
        reason=shadow.reason,
        limit=LimitSnapshot.from_report(shadow.deciding) if shadow.deciding is not None else None,
        policy_version=shadow_version,
        detail=json.dumps(detail, separators=(",", ":")),
    )


# -- the scheduling around it -------------------------------------------------------------------


class LoadStatus(Protocol):
    """What a policy source says of its last load (a :class:`~quota_service.reload.PolicyStatus`)."""

    @property
    def loaded_at(self) -> int: ...
    @property
    def last_error(self) -> str: ...


class PolicySource(Protocol):
    """The shadow policy in force (a :class:`~quota_service.reload.LivePolicy`)."""

    @property
    def current(self) -> CompiledPolicy: ...
    def status(self) -> LoadStatus: ...


ReadCounters = Callable[[tuple[CounterRef, ...], int], Awaitable[Mapping[CounterRef, CounterValue]]]


@dataclass(frozen=True, slots=True)
class ShadowStatus:
    """This replica's shadow decisions since start. ``divergences``: (live tier,
    ``<live>-><shadow>``) -> count."""

    version: str
    files: tuple[str, ...]
    decided: int
    divergences: Mapping[tuple[str, str], int]
    sampled: int
    dropped: int


@dataclass(slots=True)
class _Seen:
    request: QuotaRequest
    config: SubjectConfig
    stops: Sequence[EmergencyStop]
    now: datetime
    live: Outcome
    tier: str
    policy_version: str
    values: Mapping[CounterRef, CounterValue]


@dataclass(slots=True)
class _Counts:
    decided: int = 0
    sampled: int = 0
    dropped: int = 0
    divergences: dict[tuple[str, str], int] = field(default_factory=dict)


class Shadow:
    """Decides the shadow policy of every observed request, off the request's path (see
    the module docstring). ``record``: where sampled SHADOW_DIVERGED events go (``None``: no
    ledger, counted only). ``read_counters``: the store's ``usage(refs, now_ms)``, for
    counters the live request did not read."""

    def __init__(
        self,
        *,
        policy: PolicySource,
        read_counters: ReadCounters,
        record: Callable[[Event], None] | None = None,
        samples_per_second: float = DEFAULT_SAMPLES_PER_SECOND,
        max_pending: int = MAX_PENDING,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self._read = read_counters
        self._record = record
        self._gate = SampleGate(samples_per_second, monotonic=monotonic)
        self._max_pending = max_pending
        self._pending: deque[_Seen] = deque()
        self._scheduled = False
        self._reads: set[asyncio.Task[None]] = set()
        self._counts = _Counts()
        self._idle = asyncio.Event()
        self._idle.set()

    # -- the hot path: queue and return ---------------------------------------------------

    def observe(
        self,
        request: QuotaRequest,
        *,
        config: SubjectConfig,
        stops: Sequence[EmergencyStop],
        now: datetime,
        live: Outcome,
        tier: str,
        policy_version: str,
        values: Mapping[CounterRef, CounterValue],
    ) -> None:
        """Queue the live request's answer and what it was decided on; returns at once."""
        if len(self._pending) + len(self._reads) >= self._max_pending:
            self._counts.dropped += 1
            return
        self._pending.append(_Seen(request, config, stops, now, live, tier, policy_version, values))
        self._idle.clear()
        if not self._scheduled:
            self._scheduled = True
            # A context of its own: not the request's (its deadline would bound the reads).
            asyncio.get_running_loop().call_later(DRAIN_DELAY, self._drain, context=contextvars.Context())

    # -- after the answer -------------------------------------------------------------------

    def _drain(self) -> None:
        self._scheduled = False
        policy = self.policy.current
        for _ in range(min(DRAIN_BATCH, len(self._pending))):
            seen = self._pending.popleft()
            try:
                self._decide(policy, seen)
            except Exception:  # a shadow policy never breaks anything live
                log.exception("shadow decision failed for %s", seen.request.subject)
        if self._pending:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._drain, context=contextvars.Context())
        else:
            self._settle_idle()

    def _decide(self, policy: CompiledPolicy, seen: _Seen) -> None:
        decision = fast_decision(
            policy, seen.request, config=seen.config, stops=seen.stops, now=seen.now, values=seen.values
        )
        if decision is not None:
            self._judge(policy, seen, decision, seen.values)
            return
        the_plan = shadow_plan(policy, seen.request, config=seen.config, stops=seen.stops, now=seen.now)
        missing = tuple(c.ref for c in the_plan.all_counters if c.ref not in seen.values)
        task = asyncio.get_running_loop().create_task(self._read_then_judge(policy, seen, the_plan, missing))
        self._reads.add(task)
        task.add_done_callback(self._read_done)

    def _read_done(self, task: asyncio.Task[None]) -> None:
        self._reads.discard(task)
        self._settle_idle()

    def _settle_idle(self) -> None:
        if not self._pending and not self._reads and not self._scheduled:
            self._idle.set()

    async def _read_then_judge(
        self, policy: CompiledPolicy, seen: _Seen, the_plan: Plan, missing: tuple[CounterRef, ...]
    ) -> None:
        try:
            read = await self._read(missing, to_ms(seen.now))
        except Exception as exc:  # the store's trouble is the live path's to report
            log.debug("shadow: could not read %d counters of %s: %s", len(missing), seen.request.subject, exc)
            self._counts.dropped += 1
            return
        try:
            values = {**read, **seen.values}
            self._judge(policy, seen, shadow_decision(the_plan, values), values, the_plan)
        except Exception:
            log.exception("shadow decision failed for %s", seen.request.subject)

    def _judge(
        self,
        policy: CompiledPolicy,
        seen: _Seen,
        decision: Decision,
        values: Mapping[CounterRef, CounterValue],
        the_plan: Plan | None = None,
    ) -> None:
        counts = self._counts
        counts.decided += 1
        SHADOW_DECISIONS.inc()
        pair = divergence_reason(seen.live.decision, decision)
        if pair is None:
            return
        key = (seen.tier, pair)
        counts.divergences[key] = counts.divergences.get(key, 0) + 1
        SHADOW_DIVERGENCES.labels(seen.tier, pair).inc()
        if self._record is None or not self._gate.allow(seen.tier):
            return
        if the_plan is None:  # a sampled divergence: the explained answer, once
            the_plan = shadow_plan(policy, seen.request, config=seen.config, stops=seen.stops, now=seen.now)
        outcome = shadow_outcome(the_plan, values)
        self._record(
            divergence_event(
                seen.request,
                at_ms=to_ms(seen.now),
                live=seen.live,
                live_tier=seen.tier,
                live_version=seen.policy_version,
                shadow=outcome,
                shadow_tier=the_plan.tier.name if the_plan.tier is not None else "",
                shadow_version=policy.version,
            )
        )
        counts.sampled += 1

    # -- reads and shutdown -------------------------------------------------------------------

    def status(self) -> ShadowStatus:
        policy = self.policy.current
        counts = self._counts
        return ShadowStatus(
            version=policy.version,
            files=policy.files,
            decided=counts.decided,
            divergences=dict(counts.divergences),
            sampled=counts.sampled,
            dropped=counts.dropped,
        )

    async def settled(self) -> None:
        """Wait until every observed request is decided (tests, bench); bound it with
        ``asyncio.timeout``."""
        await self._idle.wait()

    async def close(self) -> None:
        """Drop what waits and cancel the reads in flight."""
        self._pending.clear()
        for task in list(self._reads):
            task.cancel()
        if self._reads:
            await asyncio.gather(*self._reads, return_exceptions=True)
        self._idle.set()
