"""The quota path: engine + store + live policy, with no transport in it.

:class:`Quotas` is what the gRPC servicers call. It owns the choreography:

1. read the policy reference once (a reload midway does not change this request);
2. resolve the subject's admin config (cached per replica; the store's reserve script
   checks the cached ``version`` atomically, so a stale cache costs one retry, never a
   wrong decision);
3. plan with the pure engine, reserve with the store, decide with the engine from the
   values the store saw;
4. on :class:`StoreUnavailable`, answer with the tier's ``on_store_error`` (after the
   emergency stops, which are in memory and apply whatever the store does). When that
   answer is DENY and the failed step may have reserved (the subject's step went through,
   the global one failed, or a write timed out with its outcome unknown), the command's
   reservation is released in the background (best effort, retried for a while), so a
   denied caller is not charged the estimate when it expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from quota_service.clock import Clock, SystemClock, to_ms
from quota_service.errors import InvalidRequest, NotFound, StoreUnavailable
from quota_service.metrics import DECISIONS, STORE_ERRORS
from quota_service.policy.compiled import CompiledPolicy, StoreErrorMode, Tier
from quota_service.policy.domain import CounterRef, CounterValue, Decision, Reason, SubjectConfig
from quota_service.policy.engine import (
    LimitReport,
    Outcome,
    Plan,
    decide,
    plan,
    report_usage,
    settlement,
    usage_counters,
)
from quota_service.policy.stops import EmergencyStop
from quota_service.policy.validation import QuotaRequest
from quota_service.reload import LivePolicy
from quota_service.store.base import CounterStore, ReserveCommand, ReserveStatus
from quota_service.store.keys import new_reservation_id, subject_of

log = logging.getLogger(__name__)

STALE_RETRIES = 3
#: Seconds between the tries of a background release after a store failure (then it gives
#: up: the reservation settles at its estimate when it expires, as any unsettled one does).
RELEASE_RETRY_DELAYS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)


@functools.cache
def _decision_counter(decision: Decision, reason: Reason) -> Any:
    """The Prometheus child for one (decision, reason): resolved once, not per request."""
    return DECISIONS.labels(decision.name, reason.value)


class StopSource(Protocol):
    def active(self) -> Sequence[EmergencyStop]:
        """The emergency stops in force, from this replica's cache (no I/O)."""
        ...


class NoStops:
    def active(self) -> Sequence[EmergencyStop]:
        return ()


@dataclass(frozen=True, slots=True)
class ReserveAnswer:
    outcome: Outcome
    tier: str
    policy_version: str
    reservation_id: str = ""
    expires_at: int = 0
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class SettleAnswer:
    already_settled: bool
    limits: tuple[LimitReport, ...]


@dataclass(frozen=True, slots=True)
class UsageAnswer:
    tier: str
    policy_version: str
    limits: tuple[LimitReport, ...]


class SubjectConfigCache:
    """A bounded LRU of subject configs. Correctness never depends on it: the reserve
    script rejects a plan built from a stale version."""

    def __init__(self, size: int = 100_000) -> None:
        self._size = size
        self._items: OrderedDict[str, SubjectConfig] = OrderedDict()

    def get(self, subject: str) -> SubjectConfig | None:
        config = self._items.get(subject)
        if config is not None:
            self._items.move_to_end(subject)
        return config

    def put(self, subject: str, config: SubjectConfig) -> None:
        self._items[subject] = config
        self._items.move_to_end(subject)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def forget(self, subject: str) -> None:
        self._items.pop(subject, None)


class Quotas:
    def __init__(
        self,
        *,
        policy: LivePolicy,
        store: CounterStore,
        clock: Clock | None = None,
        stops: StopSource | None = None,
        config_cache: SubjectConfigCache | None = None,
    ) -> None:
        self.policy = policy
        self.store = store
        self.clock = clock or SystemClock()
        self.stops = stops or NoStops()
        self.configs = config_cache or SubjectConfigCache()
        self._background: set[asyncio.Task[None]] = set()
        self._missing_tiers_logged: set[tuple[str, str]] = set()

    async def subject_config(self, subject: str, *, fresh: bool = False) -> SubjectConfig:
        cached = None if fresh else self.configs.get(subject)
        if cached is not None:
            return cached
        config = await self.store.subject_config(subject, to_ms(self.clock.now()))
        self.configs.put(subject, config)
        return config

    def _tier_name(self, policy: CompiledPolicy, config: SubjectConfig | None) -> Tier | None:
        tier = policy.tier_for(config.tier if config else None)
        self._warn_missing_tier(policy, config)
        return tier

    def _warn_missing_tier(self, policy: CompiledPolicy, config: SubjectConfig | None) -> None:
        """Log (once per tier and policy version) that an assigned tier no longer exists:
        its subjects get the default tier (a reload removed or renamed it)."""
        if not config or not config.tier or config.tier in policy.tiers:
            return
        key = (config.tier, policy.version)
        if key in self._missing_tiers_logged:
            return
        self._missing_tiers_logged.add(key)
        log.warning(
            "tier %r assigned to subjects (e.g. in this request) no longer exists in policy %s; "
            "using the default tier %r for them",
            config.tier,
            policy.version,
            policy.default_tier,
        )

    async def check_and_reserve(self, request: QuotaRequest) -> ReserveAnswer:
        policy = self.policy.current
        cached = self.configs.get(request.subject)
        sent: list[str] = []  # reservation ids of the reserve commands sent, in order
        try:
            answer = await self._check_and_reserve(policy, request, sent)
        except StoreUnavailable as exc:
            STORE_ERRORS.labels("reserve").inc()
            answer = self._store_unavailable(policy, self.configs.get(request.subject) or cached, exc, request)
            if answer.outcome.decision is Decision.DENY and sent:
                # Only the last command can hold anything: earlier ones answered (stale config).
                self._release_later(sent[-1], request.request_id)
        _decision_counter(answer.outcome.decision, answer.outcome.reason).inc()
        return answer

    def _release_later(self, reservation_id: str, request_id: str) -> None:
        """Withdraw ``reservation_id`` in the background: the answer (a DENY) does not wait
        for a store that just failed. Unknown ids (nothing was reserved) are fine. The
        request_id is forgotten with it, so a repeat is decided afresh rather than replayed
        as a reservation that no longer holds anything."""
        task = asyncio.create_task(self._release_quietly(reservation_id, request_id), name=f"release {reservation_id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _release_quietly(self, reservation_id: str, request_id: str) -> None:
        for delay in RELEASE_RETRY_DELAYS:
            await asyncio.sleep(delay)
            try:
                if not await self.store.withdraw(reservation_id, request_id, to_ms(self.clock.now())):
                    return  # never reserved, settled, or handed out by a replay since: keep it
            except (NotFound, InvalidRequest):
                return  # never reserved (the failure came first): nothing to give back
            except StoreUnavailable as exc:
                log.debug("release of %s after a store failure: %s; retrying", reservation_id, exc)
                continue
            log.info("released %s: the request was denied after a store failure", reservation_id)
            return
        log.warning(
            "could not release %s after a store failure; it settles at its estimate when it expires",
            reservation_id,
        )

    async def drain(self, seconds: float) -> None:
        """Wait up to ``seconds`` for background releases (at shutdown), then cancel them."""
        tasks = set(self._background)
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=seconds)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _check_and_reserve(
        self, policy: CompiledPolicy, request: QuotaRequest, sent: list[str] | None = None
    ) -> ReserveAnswer:
        fresh = False
        for _ in range(STALE_RETRIES):
            config = await self.subject_config(request.subject, fresh=fresh)
            self._warn_missing_tier(policy, config)
            now = self.clock.now()
            the_plan = plan(policy, request, now=now, config=config, stops=self.stops.active())
            if the_plan.denial is not None:
                if not fresh and the_plan.denial.reason in (Reason.FEATURE_NOT_ALLOWED, Reason.UNKNOWN_TIER):
                    fresh = True  # the denial rests on the cached tier: confirm it before answering
                    continue
                return self._answer(policy, the_plan, the_plan.denial)
            command = self._command(the_plan, config, now_ms=to_ms(now))
            if sent is not None and not command.dry_run:
                sent.append(command.reservation_id)
            result = await self.store.reserve(command)
            if result.status is ReserveStatus.STALE_CONFIG:
                fresh = True
                continue
            reserved = result.status is ReserveStatus.RESERVED
            outcome = decide(the_plan, result.values, reserved=reserved)
            if reserved and outcome.decision is Decision.DENY:
                # The script's gate and the engine's rule disagree: never let a DENY keep a hold.
                log.error("store reserved what the engine denies; releasing %s", result.reservation_id)
                await self.store.release(result.reservation_id, to_ms(now))
                reserved = False
            if not reserved and result.status is not ReserveStatus.CHECKED and outcome.decision is not Decision.DENY:
                log.error("store denied what the engine allows (%s); answering DENY", result.status)
                outcome = Outcome(Decision.DENY, Reason.LIMIT_EXCEEDED, "denied by the store's atomic check")
            return self._answer(
                policy,
                the_plan,
                outcome,
                reservation_id=result.reservation_id if reserved else "",
                expires_at=result.expires_at if reserved else 0,
                replayed=result.replayed,
            )
        raise StoreUnavailable("the subject's configuration kept changing during the request")

    def _command(self, the_plan: Plan, config: SubjectConfig, *, now_ms: int) -> ReserveCommand:
        request = the_plan.request
        return ReserveCommand(
            subject=request.subject,
            reservation_id=new_reservation_id(request.subject),
            request_id=request.request_id,
            subject_charges=the_plan.subject_charges(),
            global_charges=the_plan.global_charges(),
            now_ms=now_ms,
            ttl_seconds=the_plan.ttl_seconds,
            config_version=config.version,
            estimate=the_plan.estimate,
            rates={metric: str(rate) for metric, rate in the_plan.rates.items()},
            meta={
                "feature": request.feature,
                "provider": request.provider,
                "model": request.model,
                "tier": the_plan.tier.name if the_plan.tier else "",
            },
            dry_run=request.dry_run,
        )

    def _answer(self, policy: CompiledPolicy, the_plan: Plan, outcome: Outcome, **extra: object) -> ReserveAnswer:
        tier = the_plan.tier.name if the_plan.tier else ""
        return ReserveAnswer(outcome, tier, policy.version, **extra)  # type: ignore[arg-type]

    def _store_unavailable(
        self,
        policy: CompiledPolicy,
        config: SubjectConfig | None,
        exc: StoreUnavailable,
        request: QuotaRequest | None = None,
    ) -> ReserveAnswer:
        """The answer while the store fails: an emergency stop covering the request still
        denies (the stops are in memory); otherwise the tier's ``on_store_error``. The tier
        is the one this replica last read for the subject (the default tier if it never did)."""
        tier = self._tier_name(policy, config)
        if request is not None:
            for stop in self.stops.active():
                if stop.covers(request, tier.name if tier else ""):
                    log.warning("store unavailable (%s); %s covers the request: DENY", exc, stop.describe())
                    outcome = Outcome(Decision.DENY, Reason.EMERGENCY_STOP, f"denied by {stop.describe()}")
                    return ReserveAnswer(outcome, tier.name if tier else "", policy.version)
        mode = tier.on_store_error if tier else policy.on_store_error
        log.warning("store unavailable (%s); answering %s by on_store_error", exc, mode.value)
        if mode is StoreErrorMode.ALLOW:
            outcome = Outcome(
                Decision.ALLOW, Reason.STORE_UNAVAILABLE, "quota store unavailable: allowed unverified (on_store_error)"
            )
        else:
            outcome = Outcome(
                Decision.DENY,
                Reason.STORE_UNAVAILABLE,
                "quota store unavailable: denied (on_store_error: deny)",
                retry_after_seconds=1,
            )
        return ReserveAnswer(outcome, tier.name if tier else "", policy.version)

    async def commit(self, reservation_id: str, usage: Mapping[str, float]) -> SettleAnswer:
        subject = subject_of(reservation_id)
        reservation = await self.store.get_reservation(reservation_id)
        if reservation is None:
            raise NotFound(f"reservation {reservation_id!r} not found (unknown, or settled long ago)")
        actual = settlement(reservation.estimate, {m: Decimal(r) for m, r in reservation.rates.items()}, usage)
        result = await self.store.commit(reservation_id, actual, to_ms(self.clock.now()))
        return SettleAnswer(result.already_settled, await self._reports_for(subject, result.values))

    async def release(self, reservation_id: str) -> bool:
        """Returns ``already_settled``."""
        subject_of(reservation_id)
        result = await self.store.release(reservation_id, to_ms(self.clock.now()))
        return result.already_settled

    async def usage(self, subject: str) -> UsageAnswer:
        policy = self.policy.current
        config = await self.subject_config(subject, fresh=True)
        tier = self._tier_name(policy, config)
        if tier is None:
            return UsageAnswer("", policy.version, ())
        counters = usage_counters(policy, tier, config, subject, self.clock.now())
        values = await self.store.usage(tuple(c.ref for c in counters), to_ms(self.clock.now()))
        return UsageAnswer(tier.name, policy.version, report_usage(counters, values))

    async def _reports_for(self, subject: str, values: Mapping[CounterRef, CounterValue]) -> tuple[LimitReport, ...]:
        """The subject's current limits on the counters a settlement touched."""
        policy = self.policy.current
        config = await self.subject_config(subject)
        tier = self._tier_name(policy, config)
        if tier is None:
            return ()
        by_window = {(r.scope, r.metric, r.window, r.window_id): v for r, v in values.items()}
        counters = [
            c
            for c in usage_counters(policy, tier, config, subject, self.clock.now())
            if (c.ref.scope, c.ref.metric, c.ref.window, c.ref.window_id) in by_window
        ]
        return report_usage(
            counters, {c.ref: by_window[(c.ref.scope, c.ref.metric, c.ref.window, c.ref.window_id)] for c in counters}
        )
