"""The quota path: engine + store + live policy, with no transport in it.

:class:`Quotas` is what the gRPC servicers call. It owns the choreography:

1. read the policy reference once (a reload midway does not change this request);
2. resolve the subject's admin config from this replica's cache
   (:class:`SubjectConfigCache`); a plan built from a stale config costs one retry, never
   a wrong decision: the reserve script checks the config ``version`` atomically. A denial
   made before any counter that rests on the config (unknown tier, feature not in the tier,
   an emergency stop on the subject's tier) is answered from the cache only while the cached
   entry is trusted (see the cache), else after a fresh read;
3. plan with the pure engine, reserve with the store, and let the engine explain the
   store's verdict: the store's atomic gate decides DENY or reserve (one rule, one place),
   :func:`~quota_service.policy.engine.decide` only says WARN or ALLOW, why, and which
   limit; nothing here ever overrules or releases what the store decided;
4. a replay (the store recognised the request_id) is answered from what the first decision
   was made on, recorded with it (:mod:`quota_service.policy.replay`: the plan-level text,
   with the request's own recorded estimate and rates, which give every ask exactly as the
   first call computed it): the first answer, whatever the policy, prices, tier, overrides
   or this call's estimate say now (a DENY's ``retry_after_seconds`` counts from now); a
   replay never changes or releases the reservation. (A denial made before any counter is
   answered without asking the store, so an emergency stop, or a feature taken out of the
   tier, wins over a replay: that answer is DENY, and the reservation stays as it was,
   committable by whoever holds its id.);
5. on :class:`StoreUnavailable` (an outage, or the request's deadline passing), answer with
   the tier's ``on_store_error`` (after the emergency stops, which are in memory and apply
   whatever the store does); on :class:`StoreDataError` (damaged data, a script error),
   DENY ``STORE_ERROR`` whatever the tier says. When that answer is DENY and the failed
   step may have reserved (the subject's step went through and the global one failed, or a
   write's outcome is unknown), the reservation is withdrawn in the background (retried
   with backoff while the outcome stays unknown), so a denied caller is not charged the
   estimate when it expires.

Deadlines: every store call of a request runs under the request's deadline
(:mod:`quota_service.deadline`, set by the servicer from the gRPC deadline capped by
``request_budget_seconds``); :meth:`Quotas.check_and_reserve` also enforces it itself, so
the ``on_store_error`` answer is ready before the caller gives up whatever the store does.
Background work (withdraws) runs outside any request's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

from quota_service import deadline
from quota_service.background import survived
from quota_service.clock import Clock, SystemClock, to_ms
from quota_service.errors import (
    CommitRefused,
    InvalidRequest,
    NotFound,
    OutboxFull,
    StoreDataError,
    StoreUnavailable,
)
from quota_service.ledger.events import Event, EventKind, new_event_id
from quota_service.metrics import (
    COMMITS_REFUSED,
    DECISIONS,
    FAIL_OPEN,
    OUTBOX_REFUSALS,
    STORE_DATA_ERRORS,
    STORE_ERRORS,
    WITHDRAWS,
)
from quota_service.policy import replay
from quota_service.policy.compiled import CompiledPolicy, StoreErrorMode, Tier
from quota_service.policy.domain import GLOBAL_SCOPE, CounterRef, CounterValue, Decision, Reason, SubjectConfig
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
from quota_service.policy.stops import EmergencyStop, StopScope
from quota_service.policy.units import COST_METRIC
from quota_service.policy.validation import QuotaRequest
from quota_service.reload import LivePolicy
from quota_service.stops import ConfigListener
from quota_service.store import keys, protocol
from quota_service.store.base import (
    CounterStore,
    FailOpenGrant,
    Reservation,
    ReserveCommand,
    ReserveResult,
    ReserveStatus,
    SettledCounter,
    threshold_lines,
)
from quota_service.store.keys import new_reservation_id, subject_of

log = logging.getLogger(__name__)

#: Plans a request may build when the store keeps finding the config stale.
STALE_RETRIES = 3
#: The longest a request may take (seconds), whatever the caller's deadline: below the
#: Python client's default attempt timeout (0.5 s), so an answer always beats a retry.
DEFAULT_REQUEST_BUDGET_SECONDS = 0.4
#: Time kept back from the caller's deadline to compose and send the answer (seconds).
REPLY_MARGIN_SECONDS = 0.05
#: Background withdraws alive at once; beyond, a reservation is left to its TTL.
MAX_PENDING_WITHDRAWS = 1000
#: A config version no subject ever has (versions are integer strings): a reserve command
#: carrying it writes nothing unless the store replays the request_id (the replay comes first).
REPLAY_ONLY_VERSION = "replay-only"
#: The config of a subject no admin ever touched (its version is "0" in every store).
UNCONFIGURED = SubjectConfig(tier=None, overrides=(), version="0")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: before try ``n + 1`` (``n >= 1``), sleep a
    uniformly random time in ``[0, min(cap, base * 2**(n - 1))]`` seconds; ``attempts`` tries
    in all."""

    base: float = 0.1
    cap: float = 4.0
    attempts: int = 8

    def delay(self, retry: int, rng: random.Random) -> float:
        """Seconds to sleep before retry number ``retry`` (1 = the second try)."""
        return rng.uniform(0.0, min(self.cap, self.base * 2.0 ** (retry - 1)))

    @property
    def longest_sleep(self) -> float:
        """The most the sleeps of one withdraw can add up to (seconds)."""
        return float(sum(min(self.cap, self.base * 2.0 ** (n - 1)) for n in range(1, self.attempts)))


#: How a withdraw is retried while its outcome is unknown: at most 8 tries over about 10 s
#: of sleeps (plus each try's own bound), then the reservation is left to its TTL.
WITHDRAW_BACKOFF = Backoff()


@functools.cache
def _decision_counter(decision: Decision, reason: Reason) -> Any:
    """The Prometheus child for one (decision, reason): resolved once, not per request."""
    return DECISIONS.labels(decision.name, reason.value)


class StopSource(Protocol):
    def active(self) -> Sequence[EmergencyStop]:
        """The emergency stops in force, from this replica's cache (no I/O)."""
        ...


@runtime_checkable
class ConfigFeed(Protocol):
    """A stop source that also follows config changes (``StopWatcher``): Quotas hands it
    its config cache."""

    def follow_configs(self, listener: ConfigListener) -> None: ...


class NoStops:
    def active(self) -> Sequence[EmergencyStop]:
        return ()


class DecisionObserver(Protocol):
    """Told of every live answer decided by the engine on the store's counter values (a
    shadow policy, :class:`quota_service.lifecycle.shadow.Shadow`): must return at once and
    never raise (it schedules its work)."""

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
    ) -> None: ...


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
    """``windows``: every counter window the settlement landed on (or could not: ``lost``),
    in the window the reservation was made in; ``now`` (unix seconds) tells which of them
    is still the current one."""

    already_settled: bool
    limits: tuple[LimitReport, ...]
    windows: tuple[SettledCounter, ...] = ()
    now: int = 0


@dataclass(frozen=True, slots=True)
class UsageAnswer:
    tier: str
    policy_version: str
    limits: tuple[LimitReport, ...]


@dataclass(frozen=True, slots=True)
class _Cached:
    config: SubjectConfig
    read_at: float  # monotonic seconds when the read that produced it began


@dataclass(frozen=True, slots=True)
class ReadTicket:
    """Taken before a config read: a put with a ticket older than the last invalidation is
    dropped (the value read may predate the change that invalidated it)."""

    generation: int
    started_at: float


class SubjectConfigCache:
    """A bounded LRU of subject configs, kept honest by the config-change feed.

    Two uses, two rules:

    * planning a reservation may use an entry of any age (:meth:`get`): the reserve script
      checks the config version atomically, so a stale entry costs one retry;
    * a denial made before any counter (unknown tier, feature not in tier, a stop on the
      tier) may rest only on a *trusted* entry (:meth:`trusted`): read while the feed is up,
      less than ``max_age_seconds`` ago, or, while the feed is down or silent, less than
      ``unwatched_max_age_seconds`` ago (so a lost message costs at most that).

    The feed (every config write PUBLISHes the subject; :class:`~quota_service.stops.StopWatcher`
    subscribes) calls :meth:`feed_up` when (re)subscribed (everything cached is forgotten:
    messages may have been missed), :meth:`feed_changed` for each write, :meth:`feed_alive`
    on each heartbeat, :meth:`feed_down` when it breaks. It counts as up only while it was
    heard from within ``feed_silence_seconds`` (a half-open connection is no feed).
    Not thread-safe: one event loop owns it.
    """

    def __init__(
        self,
        size: int = 100_000,
        *,
        max_age_seconds: float = 30.0,
        unwatched_max_age_seconds: float = 0.5,
        feed_silence_seconds: float = 0.6,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._size = size
        self._max_age = max_age_seconds
        self._unwatched_max_age = unwatched_max_age_seconds
        self._feed_silence = feed_silence_seconds
        self._monotonic = monotonic
        self._items: OrderedDict[str, _Cached] = OrderedDict()
        self._generation = 0
        self._up_since: float | None = None
        self._heard_at = float("-inf")

    # -- reads -----------------------------------------------------------------------------

    def get(self, subject: str) -> SubjectConfig | None:
        """The cached config, whatever its age (for plans the store checks)."""
        cached = self._items.get(subject)
        if cached is None:
            return None
        self._items.move_to_end(subject)
        return cached.config

    def is_trusted(self, subject: str) -> bool:
        """Whether the cached entry may decide a denial without asking the store."""
        cached = self._items.get(subject)
        if cached is None:
            return False
        now = self._monotonic()
        age = now - cached.read_at
        if self.watched and self._up_since is not None and cached.read_at >= self._up_since:
            return age < self._max_age
        return age < self._unwatched_max_age

    def trusted(self, subject: str) -> SubjectConfig | None:
        return self.get(subject) if self.is_trusted(subject) else None

    @property
    def watched(self) -> bool:
        """The feed is up and was heard from recently."""
        return self._up_since is not None and self._monotonic() - self._heard_at <= self._feed_silence

    # -- writes ----------------------------------------------------------------------------

    def ticket(self) -> ReadTicket:
        return ReadTicket(self._generation, self._monotonic())

    def put(self, subject: str, config: SubjectConfig, ticket: ReadTicket | None = None) -> None:
        """Cache ``config``, read under ``ticket`` (``None``: read just now, nothing raced it)."""
        if ticket is None:
            ticket = self.ticket()
        elif ticket.generation != self._generation:
            return  # a change was announced while it was read: it may be the older value
        self._items[subject] = _Cached(config, ticket.started_at)
        self._items.move_to_end(subject)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def forget(self, subject: str) -> None:
        self._generation += 1
        self._items.pop(subject, None)

    def forget_all(self) -> None:
        self._generation += 1
        self._items.clear()

    # -- the feed (quota_service.stops.ConfigListener) ---------------------------------------

    def feed_up(self) -> None:
        self.forget_all()
        self._up_since = self._heard_at = self._monotonic()

    def feed_alive(self) -> None:
        self._heard_at = self._monotonic()

    def feed_changed(self, subject: str) -> None:
        self.forget(subject)
        self._heard_at = self._monotonic()

    def feed_down(self) -> None:
        self._up_since = None


def _rests_on_config(the_plan: Plan, request: QuotaRequest, stops: Sequence[EmergencyStop]) -> bool:
    """Whether the plan's early denial follows from the subject's config (its tier)."""
    assert the_plan.denial is not None
    reason = the_plan.denial.reason
    if reason in (Reason.UNKNOWN_TIER, Reason.FEATURE_NOT_ALLOWED):
        return True
    if reason is Reason.EMERGENCY_STOP:
        return not any(stop.scope is not StopScope.TIER and stop.covers(request, "") for stop in stops)
    return False


def _answer_text(policy: CompiledPolicy, the_plan: Plan) -> str:
    """The plan-level replay text of ``the_plan``: encoded once per plan shape (it depends
    only on what the shape holds: the policy, tier, counters, limits and windows)."""
    shape = the_plan.shape
    if shape is not None and shape.policy is policy and shape.answer is not None:
        return shape.answer
    text = replay.encode(the_plan, policy_version=policy.version, timezone=policy.timezone.key)
    if shape is not None and shape.policy is policy:
        shape.answer = text
    return text


def _lines(policy: CompiledPolicy, the_plan: Plan) -> tuple[str, str]:
    """The threshold lines of ``the_plan``'s counters (subject's, company-wide): encoded once
    per plan shape, like the answer text."""
    shape = the_plan.shape
    if shape is not None and shape.policy is policy and shape.lines is not None:
        return shape.lines
    lines = (threshold_lines(the_plan.counters), threshold_lines(the_plan.global_counters))
    if shape is not None and shape.policy is policy:
        shape.lines = lines
    return lines


#: The least number of seconds between two log lines about a full outbox.
OUTBOX_LOG_SECONDS = 10.0

#: Denials no store step records (decided before any store call, or because the store
#: failed): the core hands their DENIED record to ``records``. The gate's denials
#: (BLOCK_THRESHOLD, LIMIT_EXCEEDED, HARD_STOP, GLOBAL_LIMIT) are recorded by the store.
_UNRECORDED_DENIALS = frozenset(
    {
        Reason.EMERGENCY_STOP,
        Reason.FEATURE_NOT_ALLOWED,
        Reason.UNPRICED_MODEL,
        Reason.UNKNOWN_TIER,
        Reason.STORE_UNAVAILABLE,
        Reason.STORE_ERROR,
    }
)


def _denial_record(request: QuotaRequest, answer: ReserveAnswer, at_ms: int) -> Event:
    """The DENIED record of a denial no store step recorded. With a request_id its id is
    derived from (subject, request_id), so a retried request is recorded once."""
    if request.request_id:
        name = keys.ReservationName(request.subject, keys.request_name(request.subject, request.request_id), "")
        event_id = f"den_{name.reservation_id.removeprefix(keys.RESERVATION_PREFIX)}"
    else:
        event_id = new_event_id(EventKind.DENIED, at_ms)
    outcome = answer.outcome
    return Event(
        id=event_id,
        kind=EventKind.DENIED,
        at_ms=at_ms,
        subject=request.subject,
        tier=answer.tier,
        feature=request.feature,
        provider=request.provider,
        model=request.model,
        request_id=request.request_id,
        estimate=dict(request.usage),
        decision=Decision.DENY,
        reason=outcome.reason,
        policy_version=answer.policy_version,
        detail=json.dumps({"message": outcome.message[:1024]}, separators=(",", ":")),
    )


class Quotas:
    """The quota path (see the module docstring). Dependencies are keyword-only:

    ``stops``: this replica's emergency stops (a :class:`ConfigFeed` also keeps the config
    cache honest). ``request_budget_seconds``: the longest a request may take, whatever its
    caller's deadline. ``withdraw_backoff`` / ``max_pending_withdraws``: how withdraws after
    a store failure are retried and how many may be pending. ``rng``: the jitter's source.
    """

    def __init__(
        self,
        *,
        policy: LivePolicy,
        store: CounterStore,
        clock: Clock | None = None,
        stops: StopSource | None = None,
        config_cache: SubjectConfigCache | None = None,
        request_budget_seconds: float = DEFAULT_REQUEST_BUDGET_SECONDS,
        withdraw_backoff: Backoff | None = None,
        max_pending_withdraws: int = MAX_PENDING_WITHDRAWS,
        rng: random.Random | None = None,
        records: Callable[[Event], None] | None = None,
        observer: DecisionObserver | None = None,
    ) -> None:
        if request_budget_seconds <= 0:
            raise ValueError("request_budget_seconds must be positive")
        self.policy = policy
        self.store = store
        self.clock = clock or SystemClock()
        self.stops = stops or NoStops()
        self.configs = config_cache or SubjectConfigCache()
        self.request_budget_seconds = request_budget_seconds
        self.withdraw_backoff = withdraw_backoff or WITHDRAW_BACKOFF
        self._max_pending_withdraws = max_pending_withdraws
        self._rng = rng or random.Random()
        self._withdraws: set[asyncio.Task[None]] = set()
        self._missing_tiers_logged: set[tuple[str, str]] = set()
        #: Where the DENIED records of denials decided without a store step go (the usage
        #: relay); ``None``: no ledger. Every other record is written by the store's own step.
        self._records = records
        #: Told of every answer the engine decided on counter values (a shadow policy).
        self.observer = observer
        #: Set (to why) while the store has lost its data (the store identity guard): every
        #: reservation is denied, settlements answer UNAVAILABLE (retried) until a restore.
        self.lost = ""
        self._outbox_full_logged = float("-inf")
        #: Fail-open (``on_store_error: allow``): units this replica granted per counter during
        #: the current outage, and the grants to write back when the store answers again.
        self._outage_grants: dict[CounterRef, int] = {}
        self._grants: list[FailOpenGrant] = []
        self._write_back_task: asyncio.Task[None] | None = None
        if isinstance(self.stops, ConfigFeed):
            self.stops.follow_configs(self.configs)

    def request_seconds(self, time_remaining: float | None) -> float:
        """The deadline (seconds from now) for a request whose caller gives it
        ``time_remaining`` seconds (``None``: no deadline): the caller's time less a margin
        for the answer to travel, capped by ``request_budget_seconds``; never negative."""
        if time_remaining is None:
            return self.request_budget_seconds
        return max(0.0, min(self.request_budget_seconds, time_remaining - REPLY_MARGIN_SECONDS))

    @property
    def pending_withdraws(self) -> int:
        return len(self._withdraws)

    # -- subject config ----------------------------------------------------------------------

    async def subject_config(self, subject: str, *, fresh: bool = False) -> SubjectConfig:
        config, _ = await self._config(subject, fresh=fresh)
        return config

    async def _config(self, subject: str, *, fresh: bool) -> tuple[SubjectConfig, bool]:
        """The subject's config, and whether it may decide an early denial (read now, or a
        trusted cache entry)."""
        if not fresh:
            cached = self.configs.get(subject)
            if cached is not None:
                return cached, self.configs.is_trusted(subject)
            # Not cached (a cold subject): plan as for a subject nobody configured, without a
            # read. The reserve script checks the version ("0": none) atomically, so a subject
            # that has a config costs one STALE_CONFIG retry with a fresh read, and most
            # subjects (never configured) take one round trip instead of two. Unconfirmed: an
            # early denial resting on it is checked by a fresh read first.
            return UNCONFIGURED, False
        ticket = self.configs.ticket()
        config = await self.store.subject_config(subject, to_ms(self.clock.now()))
        self.configs.put(subject, config, ticket)
        return config, True

    def _tier_of(self, policy: CompiledPolicy, config: SubjectConfig | None) -> Tier | None:
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

    # -- CheckAndReserve ---------------------------------------------------------------------

    async def check_and_reserve(self, request: QuotaRequest) -> ReserveAnswer:
        policy = self.policy.current
        sent: list[str] = []  # reservation ids of the reserve commands sent, in order
        if self.lost:
            answer = self._lost_answer(policy, request)
            _decision_counter(answer.outcome.decision, answer.outcome.reason).inc()
            if self._records is not None and not request.dry_run:
                self._records(_denial_record(request, answer, to_ms(self.clock.now())))
            return answer
        try:
            async with asyncio.timeout(deadline.remaining()):
                answer = await self._check_and_reserve(policy, request, sent)
        except (StoreUnavailable, TimeoutError) as exc:
            failure = exc if isinstance(exc, StoreUnavailable) else StoreUnavailable("no answer before the deadline")
            STORE_ERRORS.labels("reserve").inc()
            answer = self._store_unavailable(policy, self.configs.get(request.subject), failure, request)
            if answer.outcome.decision is Decision.DENY and sent:
                # Only the last command can hold anything: earlier ones answered (stale config).
                self._withdraw_later(sent[-1], request.request_id)
        except StoreDataError as exc:
            STORE_DATA_ERRORS.labels("reserve").inc()
            answer = self._store_error(policy, request, exc)
            if sent:
                self._withdraw_later(sent[-1], request.request_id)
        except OutboxFull as exc:  # nothing was held: no spend goes unrecorded, whatever the tier says
            OUTBOX_REFUSALS.inc()
            if time.monotonic() - self._outbox_full_logged > OUTBOX_LOG_SECONDS:
                self._outbox_full_logged = time.monotonic()
                log.error(
                    "refusing new reservations (%r and every other subject of its slot): %s", request.subject, exc
                )
            answer = self._deny_store_error(policy, request, f"denied: {exc}")
        _decision_counter(answer.outcome.decision, answer.outcome.reason).inc()
        if (
            self._records is not None
            and answer.outcome.decision is Decision.DENY
            and answer.outcome.reason in _UNRECORDED_DENIALS
            and not request.dry_run
            and not answer.replayed
        ):
            self._records(_denial_record(request, answer, to_ms(self.clock.now())))
        return answer

    async def _check_and_reserve(self, policy: CompiledPolicy, request: QuotaRequest, sent: list[str]) -> ReserveAnswer:
        fresh = False
        known: SubjectConfig | None = None  # read by the store in the step that found the plan stale
        for _ in range(STALE_RETRIES):
            if known is not None:
                config, confirmed = known, True
            else:
                config, confirmed = await self._config(request.subject, fresh=fresh)
            self._warn_missing_tier(policy, config)
            now = self.clock.now()
            stops = self.stops.active()
            the_plan = plan(policy, request, now=now, config=config, stops=stops)
            if the_plan.denial is not None:
                if not confirmed and _rests_on_config(the_plan, request, stops):
                    fresh = True  # the denial rests on a cached tier nobody vouches for: read it
                    continue
                answer = self._answer(policy, the_plan, the_plan.denial)
                if self.observer is not None:
                    self._observe(answer, the_plan, config, stops, now, {})
                return answer
            command = self._command(policy, the_plan, config, now_ms=to_ms(now))
            left = deadline.remaining()
            if left is not None and left <= 0:
                raise StoreUnavailable("no time left before the request's deadline")
            if not command.dry_run:
                sent.append(command.reservation_id)
            ticket = self.configs.ticket()
            result = await self.store.reserve(command)
            if result.status is ReserveStatus.STALE_CONFIG:
                if result.config is not None:  # read atomically in that step: plan on it, cache it
                    known = result.config
                    self.configs.put(request.subject, known, ticket)
                else:
                    known, fresh = None, True
                continue
            if result.replayed:
                if not confirmed and not result.answer:
                    fresh = True  # explained by the current plan (nothing recorded): of a config read now
                    continue
                return await self._replayed(policy, the_plan, result)
            reserved = result.status is ReserveStatus.RESERVED
            answer = self._answer(
                policy,
                the_plan,
                self._explain(the_plan, result.values, result.status),
                reservation_id=result.reservation_id if reserved else "",
                expires_at=result.expires_at if reserved else 0,
            )
            if self.observer is not None:
                self._observe(answer, the_plan, config, stops, now, result.values)
            return answer
        raise StoreUnavailable("the subject's configuration kept changing during the request")

    def _observe(
        self,
        answer: ReserveAnswer,
        the_plan: Plan,
        config: SubjectConfig,
        stops: Sequence[EmergencyStop],
        now: datetime,
        values: Mapping[CounterRef, CounterValue],
    ) -> None:
        """Hand the answer and what it was decided on to the observer; its failure is logged."""
        assert self.observer is not None
        try:
            self.observer.observe(
                the_plan.request,
                config=config,
                stops=stops,
                now=now,
                live=answer.outcome,
                tier=answer.tier,
                policy_version=answer.policy_version,
                values=values,
            )
        except Exception:  # never the live answer's problem
            log.exception("the decision observer failed on %s", the_plan.request.subject)

    def _explain(self, the_plan: Plan, values: Mapping[CounterRef, CounterValue], status: ReserveStatus) -> Outcome:
        """The store's verdict, explained by the engine (never overruled)."""
        reserved = status is ReserveStatus.RESERVED
        denied = status in (ReserveStatus.DENIED, ReserveStatus.DENIED_GLOBAL)
        outcome = decide(the_plan, values, reserved=reserved, store_denied=denied)
        # ALLOW means no limit said DENY (decide answers a held request some limit denies WARN).
        if (
            reserved
            and outcome.decision is not Decision.ALLOW
            and any(r.decision is Decision.DENY for r in outcome.limits)
        ):
            log.error(
                "the store held %s although the rule denies it from the values it reported (%s); "
                "answering %s, the hold stands",
                the_plan.request.subject,
                outcome.message,
                outcome.decision.name,
            )
        elif denied and outcome.deciding is None:
            log.error("the store denied %s; no limit explains it from the values reported", the_plan.request.subject)
        return outcome

    async def _replayed(self, policy: CompiledPolicy, the_plan: Plan, result: ReserveResult) -> ReserveAnswer:
        """The first answer to this request_id, from what it was decided on (recorded with it)."""
        reserved = result.status is ReserveStatus.RESERVED
        reservation_id = result.reservation_id if reserved else ""
        expires_at = result.expires_at if reserved else 0
        recorded = self._recorded(result, the_plan.request.subject)
        if recorded is None:
            # Nothing recorded to explain it with (a record from before recorded answers):
            # the store's verdict stands, explained by this request's plan.
            outcome = self._explain(the_plan, result.values, result.status)
            return self._answer(
                policy, the_plan, outcome, reservation_id=reservation_id, expires_at=expires_at, replayed=True
            )
        values: Mapping[CounterRef, CounterValue] = result.values
        if any(counter.ref not in values for counter in recorded.counters):
            values = await self._recorded_values(recorded, the_plan, result)
        outcome = self._explain(recorded.plan_for(the_plan), values, result.status)
        return ReserveAnswer(
            outcome, recorded.tier, recorded.policy_version or policy.version, reservation_id, expires_at, replayed=True
        )

    @staticmethod
    def _recorded(result: ReserveResult, subject: str) -> replay.RecordedPlan | None:
        """The first decision's plan: the recorded (plan-level) answer text with the
        request's own recorded estimate and rates, which give every counter's ask exactly
        as the first call computed it (prices changed since or not)."""
        if not result.answer:
            return None
        try:
            return replay.decode(
                result.answer, subject=subject, estimate=result.recorded_estimate, rates=result.recorded_rates
            )
        except replay.ReplayFormatError as exc:
            log.error(
                "the recorded answer of a replayed request of %s cannot be read (%s): %r (estimate %r, rates %r)",
                subject,
                exc,
                result.answer,
                dict(result.recorded_estimate),
                dict(result.recorded_rates),
            )
            return None

    async def _recorded_values(
        self, recorded: replay.RecordedPlan, the_plan: Plan, result: ReserveResult
    ) -> Mapping[CounterRef, CounterValue]:
        """The recorded values of counters this request's plan no longer has (its windows
        rolled over, or the policy or config changed): asked of the store again with the
        first plan's counters, as a command that can only replay (never reserve)."""
        request = the_plan.request
        command = ReserveCommand(
            subject=request.subject,
            reservation_id=new_reservation_id(request.subject),
            request_id=request.request_id,
            subject_charges=tuple(c.charge() for c in recorded.counters if c.ref.scope != GLOBAL_SCOPE),
            global_charges=tuple(c.charge() for c in recorded.counters if c.ref.scope == GLOBAL_SCOPE),
            now_ms=to_ms(self.clock.now()),
            ttl_seconds=max(1, the_plan.ttl_seconds),
            config_version=REPLAY_ONLY_VERSION,
            estimate=recorded.estimate,
            rates={metric: str(rate) for metric, rate in recorded.rates.items()},
            answer=result.answer,
        )
        try:
            again = await self.store.reserve(command)
        except (StoreUnavailable, StoreDataError) as exc:
            log.warning("could not read the recorded values of a replay of %s again: %s", request.subject, exc)
            return result.values
        if again.replayed:
            return again.values
        if again.status is ReserveStatus.RESERVED:  # cannot happen: the version never matches
            log.error("a replay-only command reserved %s; withdrawing it", again.reservation_id)
            self._withdraw_later(again.reservation_id, request.request_id)
        return result.values  # the record expired meanwhile: what the first call reported

    def _command(self, policy: CompiledPolicy, the_plan: Plan, config: SubjectConfig, *, now_ms: int) -> ReserveCommand:
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
            answer="" if request.dry_run else _answer_text(policy, the_plan),
            policy_version=policy.version,
            estimate_cost=the_plan.cost,
            lines=_lines(policy, the_plan),
        )

    def _answer(
        self,
        policy: CompiledPolicy,
        the_plan: Plan,
        outcome: Outcome,
        *,
        reservation_id: str = "",
        expires_at: int = 0,
        replayed: bool = False,
    ) -> ReserveAnswer:
        tier = the_plan.tier.name if the_plan.tier else ""
        return ReserveAnswer(outcome, tier, policy.version, reservation_id, expires_at, replayed)

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
        tier = self._tier_of(policy, config)
        if request is not None:
            for stop in self.stops.active():
                if stop.covers(request, tier.name if tier else ""):
                    log.warning("store unavailable (%s); %s covers the request: DENY", exc, stop.describe())
                    outcome = Outcome(Decision.DENY, Reason.EMERGENCY_STOP, f"denied by {stop.describe()}")
                    return ReserveAnswer(outcome, tier.name if tier else "", policy.version)
        mode = tier.on_store_error if tier else policy.on_store_error
        log.warning("store unavailable (%s); answering %s by on_store_error", exc, mode.value)
        if mode is StoreErrorMode.ALLOW and tier is not None and request is not None:
            return self._fail_open(policy, tier, config, request)
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

    # -- fail-open, bounded ----------------------------------------------------------------------

    def _fail_open(
        self, policy: CompiledPolicy, tier: Tier, config: SubjectConfig | None, request: QuotaRequest
    ) -> ReserveAnswer:
        """``on_store_error: allow``, bounded: the engine still decides what needs no counter;
        an ask above a cap is denied; each counter may take at most ``fail_open_allowance`` of
        its cap from this replica during the outage (what was granted is kept, in memory, and
        written back to the counters and the ledger when the store answers again)."""
        now = self.clock.now()
        the_plan = plan(policy, request, now=now, config=config or UNCONFIGURED, stops=self.stops.active())
        if the_plan.denial is not None:
            return self._answer(policy, the_plan, the_plan.denial)
        charges = (*the_plan.subject_charges(), *the_plan.global_charges())
        for charge in charges:
            if charge.ask <= 0:
                continue
            bound = int(tier.fail_open_allowance * charge.cap)
            used = self._outage_grants.get(charge.counter, 0)
            if charge.ask > charge.cap or used + charge.ask > bound:
                FAIL_OPEN.labels("denied").inc()
                ref = charge.counter
                message = (
                    f"quota store unavailable: denied, {ref.metric} per {ref.window.value} would pass this replica's "
                    f"fail-open allowance ({tier.fail_open_allowance:%} of the cap) for this outage"
                )
                outcome = Outcome(Decision.DENY, Reason.STORE_UNAVAILABLE, message, retry_after_seconds=1)
                return ReserveAnswer(outcome, tier.name, policy.version)
        if request.dry_run:
            outcome = Outcome(Decision.ALLOW, Reason.STORE_UNAVAILABLE, "quota store unavailable: would be allowed")
            return ReserveAnswer(outcome, tier.name, policy.version)
        for charge in charges:
            self._outage_grants[charge.counter] = self._outage_grants.get(charge.counter, 0) + charge.ask
        name = keys.parse(new_reservation_id(request.subject))
        estimate = dict(the_plan.estimate)
        if the_plan.cost:
            estimate[COST_METRIC] = the_plan.cost
        head = protocol.head_of(
            tier.name,
            request.feature,
            request.provider,
            request.model,
            policy.version,
            request.request_id,
            the_plan.cost,
        )
        self._grants.append(
            FailOpenGrant(
                subject=request.subject,
                name=name.name,
                generation=name.generation,
                charges=tuple((c.counter, c.ask) for c in charges if c.ask > 0),
                estimate=estimate,
                head=head,
                at_ms=to_ms(now),
            )
        )
        FAIL_OPEN.labels("granted").inc()
        if self._write_back_task is None or self._write_back_task.done():
            self._write_back_task = asyncio.create_task(
                self._write_back(), name="fail-open write-back", context=contextvars.Context()
            )
        message = (
            f"quota store unavailable: allowed unverified within the fail-open allowance "
            f"({tier.fail_open_allowance:%} of each cap per outage); charged when the store is back"
        )
        return ReserveAnswer(Outcome(Decision.ALLOW, Reason.STORE_UNAVAILABLE, message), tier.name, policy.version)

    @property
    def pending_grants(self) -> int:
        """Fail-open grants waiting to be written back."""
        return len(self._grants)

    async def _write_back(self) -> None:
        """Writes the fail-open grants back, oldest first, retrying every second until the
        store answers; then the outage is over (the allowances start again from zero)."""
        while self._grants:
            try:
                await self.store.write_back(self._grants[0])
            except (StoreUnavailable, StoreDataError) as exc:
                log.debug("fail-open write-back waits for the store: %s", exc)
                await asyncio.sleep(1.0)
                continue
            except Exception:
                log.exception("fail-open write-back failed; retrying")
                await asyncio.sleep(1.0)
                continue
            self._grants.pop(0)
            FAIL_OPEN.labels("written_back").inc()
            if not self._grants:
                self._outage_grants.clear()
                log.warning("the store is back: every fail-open grant of the outage was charged and recorded")

    def _lost_answer(self, policy: CompiledPolicy, request: QuotaRequest) -> ReserveAnswer:
        """DENY ``STORE_ERROR`` whatever the tier says: the counters are gone, so nothing may be
        granted until they are restored from the ledger."""
        message = f"denied: the quota store lost its data ({self.lost}); an operator must run quota-service restore"
        return self._deny_store_error(policy, request, message)

    def _refuse_while_lost(self) -> None:
        if self.lost:
            raise StoreUnavailable(f"the quota store lost its data ({self.lost}); retry after it is restored")

    def _store_error(self, policy: CompiledPolicy, request: QuotaRequest, exc: StoreDataError) -> ReserveAnswer:
        """DENY ``STORE_ERROR``: damaged data is a bug, never an outage (no ``on_store_error``)."""
        log.error(
            "DAMAGED DATA in the quota store (key %s) for subject %r: %s; answering DENY STORE_ERROR",
            exc.key or "unknown",
            request.subject,
            exc,
        )
        return self._deny_store_error(policy, request, "quota store error (damaged data or a script error): denied")

    def _deny_store_error(self, policy: CompiledPolicy, request: QuotaRequest, message: str) -> ReserveAnswer:
        """DENY ``STORE_ERROR`` (never ``on_store_error``), in the tier this replica last read
        for the subject (the default tier if it never did)."""
        tier = self._tier_of(policy, self.configs.get(request.subject))
        outcome = Outcome(Decision.DENY, Reason.STORE_ERROR, message)
        return ReserveAnswer(outcome, tier.name if tier else "", policy.version)

    # -- withdraws after a failure -------------------------------------------------------------

    def _withdraw_later(self, reservation_id: str, request_id: str) -> None:
        """Withdraw ``reservation_id`` in the background: the answer (a DENY) does not wait
        for a store that just failed. Unknown ids (nothing was reserved) are fine. The
        request_id is forgotten with it, so a repeat is decided afresh rather than replayed
        as a reservation that no longer holds anything. At most ``max_pending_withdraws``
        are pending; beyond, the reservation is left to its TTL (settled at its estimate)."""
        if len(self._withdraws) >= self._max_pending_withdraws:
            WITHDRAWS.labels("shed").inc()
            log.warning(
                "%d withdraws already pending: %s is left to its TTL (settled at its estimate when it expires)",
                len(self._withdraws),
                reservation_id,
            )
            return
        # An empty context: no request's deadline bounds it (each try has the store's own).
        task = asyncio.create_task(
            self._withdraw(reservation_id, request_id), name=f"withdraw {reservation_id}", context=contextvars.Context()
        )
        self._withdraws.add(task)
        task.add_done_callback(self._withdraws.discard)

    async def _withdraw(self, reservation_id: str, request_id: str) -> None:
        """Tries until the store answers, with backoff. A first answer of "nothing held" is
        checked once more ``withdraw_backoff.cap`` seconds later: the reserve whose outcome
        was unknown may still be on its way (queued in a Redis that was frozen, say) and land
        after the first try."""
        backoff = self.withdraw_backoff
        confirming = False
        for attempt in range(backoff.attempts):
            if confirming:
                await asyncio.sleep(backoff.cap)
            elif attempt:
                await asyncio.sleep(backoff.delay(attempt, self._rng))
            try:
                withdrawn = await self.store.withdraw(reservation_id, request_id, to_ms(self.clock.now()))
            except (NotFound, InvalidRequest):
                withdrawn = False  # not (yet) reserved
            except StoreDataError as exc:
                STORE_DATA_ERRORS.labels("withdraw").inc()
                WITHDRAWS.labels("gave_up").inc()
                log.error("withdraw of %s hit damaged data (key %s): %s; left to its TTL", reservation_id, exc.key, exc)
                return
            except StoreUnavailable as exc:
                log.debug("withdraw of %s: %s (outcome unknown); retrying", reservation_id, exc)
                continue
            except Exception as exc:  # never die: the hold would stay until its TTL
                survived("withdraw", exc)
                continue
            if withdrawn:
                WITHDRAWS.labels("withdrawn").inc()
                log.info("withdrew %s: the request was denied after a store failure", reservation_id)
                return
            if confirming:
                # Never reserved, settled, or handed out by a replay since: nothing to give back.
                WITHDRAWS.labels("nothing_held").inc()
                return
            confirming = True
        WITHDRAWS.labels("gave_up").inc()
        log.warning(
            "could not withdraw %s after %d tries; it settles at its estimate when it expires",
            reservation_id,
            backoff.attempts,
        )

    async def drain(self, seconds: float | None = None) -> None:
        """Wait for the background withdraws (at shutdown): up to ``seconds``, by default
        as long as their retries can last (``withdraw_backoff.longest_sleep`` plus each
        try's own bound). Those still pending then are cancelled: their reservations settle
        at their estimate when they expire (the denied caller is charged the estimate)."""
        tasks = set(self._withdraws)
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=seconds)
        if not pending:
            return
        WITHDRAWS.labels("cancelled").inc(len(pending))
        log.warning("%d withdraws unfinished at shutdown: they settle at their estimate when they expire", len(pending))
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- Commit, Release, GetUsage -----------------------------------------------------------

    @contextlib.contextmanager
    def _data_errors(self, operation: str, what: str) -> Iterator[None]:
        """Count and log damaged data loudly; the caller gets the error (INTERNAL, not retried)."""
        try:
            yield
        except StoreDataError as exc:
            STORE_DATA_ERRORS.labels(operation).inc()
            key = exc.key or "unknown"
            log.error("DAMAGED DATA in the quota store (key %s) during %s of %s: %s", key, operation, what, exc)
            raise

    async def commit(self, reservation_id: str, usage: Mapping[str, float]) -> SettleAnswer:
        subject = subject_of(reservation_id)
        self._refuse_while_lost()
        with self._data_errors("commit", reservation_id):
            reservation = await self.store.get_reservation(reservation_id)
            if reservation is None:
                raise NotFound(f"reservation {reservation_id!r} not found (unknown, or settled long ago)")
            actual = settlement(reservation.estimate, {m: Decimal(r) for m, r in reservation.rates.items()}, usage)
            self._check_commit_bound(reservation, actual)
            now = self.clock.now()
            result = await self.store.commit(reservation_id, actual, to_ms(now))
            return SettleAnswer(
                result.already_settled,
                await self._reports_for(subject, result.values),
                tuple(result.windows),
                int(now.timestamp()),
            )

    def _check_commit_bound(self, reservation: Reservation, actual: Mapping[str, int]) -> None:
        """Refuse (for review) a Commit reporting more than ``commit_max_ratio`` times the
        estimate of a metric: one buggy caller must not charge the company-wide counters past
        every cap. The reservation is left as it is (it settles at its estimate when it
        expires, or a corrected Commit or a Release settles it)."""
        policy = self.policy.current
        tier = policy.tier_for(reservation.meta.get("tier") or None)
        if tier is None:
            return
        for metric, units in sorted(actual.items()):
            if metric == COST_METRIC:
                continue  # bounded through the metrics it is priced from
            estimate = reservation.estimate.get(metric, 0)
            bound = tier.commit_bound(estimate)
            if units > bound:
                COMMITS_REFUSED.labels(tier.name).inc()
                log.warning(
                    "commit refused for review: %s reports %s %s against an estimate of %s (more than %sx); "
                    "subject %s, tier %s",
                    reservation.reservation_id,
                    units,
                    metric,
                    estimate,
                    tier.commit_max_ratio,
                    reservation.subject,
                    tier.name,
                )
                raise CommitRefused(
                    f"commit reports {units:,} {metric} against an estimate of {estimate:,}: more than "
                    f"{tier.commit_max_ratio}x the estimate (commit_max_ratio of tier {tier.name!r}); refused "
                    "and recorded for review. Commit the real figure, or Release; left alone, the reservation "
                    "settles at its estimate when it expires"
                )

    async def release(self, reservation_id: str) -> bool:
        """Returns ``already_settled``."""
        subject_of(reservation_id)
        self._refuse_while_lost()
        with self._data_errors("release", reservation_id):
            result = await self.store.release(reservation_id, to_ms(self.clock.now()))
        return result.already_settled

    async def usage(self, subject: str) -> UsageAnswer:
        policy = self.policy.current
        with self._data_errors("usage", subject):
            config = await self.subject_config(subject, fresh=True)
            tier = self._tier_of(policy, config)
            if tier is None:
                return UsageAnswer("", policy.version, ())
            counters = usage_counters(policy, tier, config, subject, self.clock.now())
            values = await self.store.usage(tuple(c.ref for c in counters), to_ms(self.clock.now()))
        return UsageAnswer(tier.name, policy.version, report_usage(counters, values))

    async def _reports_for(self, subject: str, values: Mapping[CounterRef, CounterValue]) -> tuple[LimitReport, ...]:
        """The subject's current limits on the counters a settlement touched."""
        policy = self.policy.current
        config = await self.subject_config(subject)
        tier = self._tier_of(policy, config)
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
