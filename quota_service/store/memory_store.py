"""``MemoryCounterStore``: the :class:`~quota_service.store.base.CounterStore` in process
memory, for tests of the orchestration that need no I/O.

It is a real implementation with the Redis store's semantics, step for step (the same
behaviour suite runs over both, ``tests/integration/store/test_behaviour.py``):

* ``reserve`` checks every charge of one scope and holds all of them or none; the
  subject's step first, then the company-wide one (keyed by the reservation id for
  idempotency); a global denial gives the subject's part back and is recorded as the
  request's answer (``DENIED_GLOBAL``).
* Each step runs in this order, as ``reserve.lua``: settle the scope's expired
  reservations (at most ``sweep_limit``), replay a recorded request_id (its first status,
  reservation id, the counter values recorded then, ``ReserveCommand.answer``, and the
  first command's estimate and rates),
  check the config version (``STALE_CONFIG``: nothing written), apply the gate, write.
  So a replay is answered whatever config version the command carries.
* A reservation neither committed nor released by its expiry is settled at its estimate
  the next time the scope is touched; a later commit corrects it, a later release refunds.
* ``withdraw`` releases a reservation whose caller was answered DENY and forgets its
  request_id, unless a replay handed it out since.
* Keys live as long as in Redis (counters ``retention_seconds`` after their window, records
  and recorded answers ``grace_seconds`` after the reservation's expiry), measured on the
  store's own clock (``clock_ms``, as Redis measures TTLs on its own), never earlier than
  that clock plus ``max(grace, 60 s)``.
* Every call takes its time from the request's deadline
  (:func:`quota_service.deadline.budget` of ``timeout_seconds``): with none left it raises
  :class:`~quota_service.errors.StoreUnavailable` at once.

Each step is synchronous Python between two awaits, hence atomic on one event loop, as a
Lua script is on Redis. For tests it counts calls per operation (:attr:`calls`), and can
fail them (:meth:`fail`, also *after* the effect: a write whose answer was lost) or hold
them until :meth:`thaw` (:meth:`freeze`, a Redis stopped with SIGSTOP). Operations are the
method names, plus ``global_step`` for the company-wide step inside ``reserve``.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from quota_service import deadline
from quota_service.errors import InvalidRequest, NotFound, StoreUnavailable
from quota_service.policy.domain import (
    GLOBAL_SCOPE,
    CounterCharge,
    CounterRef,
    CounterValue,
    OverrideRecord,
    SubjectConfig,
)
from quota_service.policy.units import validate_metric_name
from quota_service.policy.windows import WINDOW_ORDER, Window
from quota_service.store import keys
from quota_service.store.base import (
    FailOpenGrant,
    Reservation,
    ReservationState,
    ReserveCommand,
    ReserveResult,
    ReserveStatus,
    SettleResult,
    check_charges,
    check_subject,
    check_units,
)

__all__ = ["MemoryCounterStore"]

#: How long a counter outlives its window (seconds), as the Redis store's default.
COUNTER_RETENTION_SECONDS = 86_400
SWEEP_LIMIT = 100

_OPEN, _EXPIRED, _COMMITTED, _RELEASED = "open", "expired", "committed", "released"


@dataclass
class _Counter:
    used: int = 0
    held: int = 0
    forget_at_ms: int = 0


@dataclass(frozen=True, slots=True)
class _Details:
    """What a reservation keeps besides its charges (the Redis record's ``meta``)."""

    meta: Mapping[str, str]
    estimate: Mapping[str, int]
    rates: Mapping[str, str]


@dataclass
class _Part:
    """One scope's part of a reservation (the Redis record ``r:{S}:<id>``)."""

    charges: tuple[CounterCharge, ...]
    snapshot: dict[str, CounterValue]
    details: _Details
    created_ms: int
    expires_ms: int
    has_global: bool
    forget_at_ms: int
    state: str = _OPEN
    replayed: bool = False
    actual: dict[str, int] = field(default_factory=dict)


@dataclass
class _Answer:
    """A recorded answer (the Redis request key ``i:{S}:<id>``)."""

    status: str  # reserved | denied | denied_global
    reservation_id: str
    expires_ms: int
    snapshot: dict[str, CounterValue]
    forget_at_ms: int
    global_snapshot: dict[str, CounterValue] | None = None
    answer: str = ""
    #: The request's estimate and rates (the Redis record's ``estimate``, its plan text's rates).
    details: _Details | None = None


@dataclass
class _Scope:
    counters: dict[str, _Counter] = field(default_factory=dict)
    records: dict[str, _Part] = field(default_factory=dict)
    open: dict[str, int] = field(default_factory=dict)  # reservation id -> expires_ms
    answers: dict[str, _Answer] = field(default_factory=dict)


@dataclass
class _Config:
    tier: str | None = None
    version: int = 0
    overrides: dict[tuple[str, Window], OverrideRecord] = field(default_factory=dict)


@dataclass
class _Fault:
    error: Exception
    times: int
    after: bool


@dataclass(frozen=True, slots=True)
class _Step:
    status: str  # reserved | denied | denied_global | checked | stale_config | duplicate
    reservation_id: str
    expires_ms: int
    replayed: bool
    values: dict[CounterRef, CounterValue]
    global_snapshot: dict[str, CounterValue] | None = None
    answer: str = ""
    details: _Details | None = None


def _seconds_ceil(ms: int) -> int:
    return -(-ms // 1000)


class MemoryCounterStore:
    """Counters, reservations and subject configs in a dict (see the module docstring).

    ``clock_ms``: the store's own clock (unix ms) for key lifetimes; the logic (expiry
    sweeps, override expiry) uses the ``now_ms`` each call carries, as the Redis store does.
    Not thread-safe: one event loop owns it."""

    def __init__(
        self,
        *,
        clock_ms: Callable[[], int] | None = None,
        timeout_seconds: float = 0.25,
        grace_seconds: int = 3600,
        retention_seconds: int = COUNTER_RETENTION_SECONDS,
        sweep_limit: int = SWEEP_LIMIT,
    ) -> None:
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self.timeout_seconds = timeout_seconds
        self._grace_ms = grace_seconds * 1000
        self._retention_seconds = retention_seconds
        self._sweep_limit = sweep_limit
        self._scopes: dict[str, _Scope] = collections.defaultdict(_Scope)
        self._written_back: set[str] = set()  # fail-open grants charged
        self._configs: dict[str, _Config] = {}
        self._faults: dict[str, list[_Fault]] = collections.defaultdict(list)
        self._frozen: set[str] | None = set()  # operations held until thaw(); None: every one
        self._thawed = asyncio.Event()
        self._thawed.set()
        self._blocked = 0
        self._blocked_changed = asyncio.Event()
        self._subscribers: list[asyncio.Queue[str]] = []
        #: Calls made per operation (``global_step`` counted inside ``reserve``).
        self.calls: collections.Counter[str] = collections.Counter()

    # -- test controls ----------------------------------------------------------------------

    def fail(self, operation: str, error: Exception, *, times: int = 1, after: bool = False) -> None:
        """The next ``times`` calls of ``operation`` raise ``error``: before doing anything, or
        with ``after`` once their effect is applied (a write whose answer was lost)."""
        self._faults[operation].append(_Fault(error, times, after))

    def freeze(self, *operations: str) -> None:
        """Hold calls of ``operations`` (every operation when none is named) until :meth:`thaw`;
        a held call gives up with :class:`StoreUnavailable` when its time runs out, as a call
        to a Redis stopped with SIGSTOP does."""
        self._frozen = set(operations) if operations else None
        self._thawed.clear()

    def thaw(self) -> None:
        self._frozen = set()
        self._thawed.set()

    @property
    def blocked(self) -> int:
        """Calls held by :meth:`freeze` right now."""
        return self._blocked

    async def wait_blocked(self, count: int = 1) -> None:
        """Return once at least ``count`` calls are held by :meth:`freeze`."""
        while self._blocked < count:
            self._blocked_changed.clear()
            await self._blocked_changed.wait()

    def _is_frozen(self, operation: str) -> bool:
        return not self._thawed.is_set() and (self._frozen is None or operation in self._frozen)

    def _take_fault(self, operation: str, after: bool) -> Exception | None:
        for fault in self._faults.get(operation, []):
            if fault.after == after and fault.times > 0:
                fault.times -= 1
                return fault.error
        return None

    async def _enter(self, operation: str) -> None:
        """Count the call, take its time from the request's deadline, wait while frozen, and
        raise a fault injected to come before the effect."""
        self.calls[operation] += 1
        seconds = deadline.budget(self.timeout_seconds)
        if seconds <= 0:
            raise StoreUnavailable(f"memory store {operation}: no time left before the request's deadline")
        if self._is_frozen(operation):
            self._blocked += 1
            self._blocked_changed.set()
            try:
                async with asyncio.timeout(seconds):
                    await self._thawed.wait()
            except TimeoutError:
                raise StoreUnavailable(f"memory store {operation}: no answer within {seconds:g}s") from None
            finally:
                self._blocked -= 1
        else:
            await asyncio.sleep(0)  # a round trip yields to the loop, as I/O would
        error = self._take_fault(operation, after=False)
        if error is not None:
            raise error

    def _leave(self, operation: str) -> None:
        error = self._take_fault(operation, after=True)
        if error is not None:
            raise error

    # -- key lifetimes ------------------------------------------------------------------------

    def _floor_ms(self) -> int:
        return self._clock_ms() + max(self._grace_ms, 60_000)

    def _counter(self, scope: _Scope, key: str) -> _Counter | None:
        counter = scope.counters.get(key)
        if counter is not None and counter.forget_at_ms <= self._clock_ms():
            del scope.counters[key]
            return None
        return counter

    def _record(self, scope: _Scope, reservation_id: str) -> _Part | None:
        record = scope.records.get(reservation_id)
        if record is not None and record.forget_at_ms <= self._clock_ms():
            del scope.records[reservation_id]
            return None
        return record

    def _answer(self, scope: _Scope, request_id: str) -> _Answer | None:
        answer = scope.answers.get(request_id)
        if answer is not None and answer.forget_at_ms <= self._clock_ms():
            del scope.answers[request_id]
            return None
        return answer

    def _value(self, scope: _Scope, ref: CounterRef) -> CounterValue:
        counter = self._counter(scope, keys.counter_key(ref))
        return CounterValue(counter.used, counter.held) if counter else CounterValue()

    # -- settling (lib.lua) -------------------------------------------------------------------

    def _settle_record(
        self, scope: _Scope, reservation_id: str, mode: str, actual: Mapping[str, int], now_ms: int
    ) -> tuple[str, _Part | None]:
        """Settle one record; returns the state before ("" when there is none) and the record."""
        record = self._record(scope, reservation_id)
        if record is None:
            scope.open.pop(reservation_id, None)
            return "", None
        state = record.state
        if state in (_COMMITTED, _RELEASED) or (state == _EXPIRED and mode == "expire"):
            return state, record
        for charge in record.charges:
            counter = self._counter(scope, keys.counter_key(charge.counter))
            if counter is None:
                continue  # its window ended (or it was reset): never recreated
            units = actual.get(charge.counter.metric, 0) if mode == "commit" else 0
            if state == _OPEN:
                counter.held = max(0, counter.held - charge.ask)
                counter.used = max(0, counter.used + (charge.ask if mode == "expire" else units))
            else:
                counter.used = max(0, counter.used + units - charge.ask)
        record.state = {"expire": _EXPIRED, "commit": _COMMITTED}.get(mode, _RELEASED)
        if mode == "commit":
            record.actual = dict(actual)
        scope.open.pop(reservation_id, None)
        record.forget_at_ms = max(max(now_ms, record.expires_ms) + self._grace_ms, self._floor_ms())
        return state, record

    def _sweep(self, scope: _Scope, now_ms: int) -> None:
        due = sorted((expires, rid) for rid, expires in scope.open.items() if expires <= now_ms)
        for _, rid in due[: self._sweep_limit]:
            self._settle_record(scope, rid, "expire", {}, now_ms)

    # -- reserve (reserve_core.lua) ---------------------------------------------------------

    def _reserve_step(
        self,
        *,
        scope_name: str,
        charges: Sequence[CounterCharge],
        reservation_id: str,
        request_id: str,
        now_ms: int,
        expires_ms: int,
        config_version: str | None,
        details: _Details,
        has_global: bool,
        dry_run: bool,
        answer: str = "",
    ) -> _Step:
        scope = self._scopes[scope_name]
        self._sweep(scope, now_ms)
        current = {charge.counter: self._value(scope, charge.counter) for charge in charges}

        if request_id and not dry_run:
            prior = self._answer(scope, request_id)
            if prior is not None:
                values = {ref: prior.snapshot.get(keys.counter_key(ref), value) for ref, value in current.items()}
                if prior.status == "reserved" and prior.reservation_id:
                    record = self._record(scope, prior.reservation_id)
                    if record is not None:
                        record.replayed = True  # handed out again: a later withdraw must keep it
                return _Step(
                    prior.status,
                    prior.reservation_id,
                    prior.expires_ms,
                    True,
                    values,
                    prior.global_snapshot,
                    prior.answer,
                    prior.details,
                )

        if config_version is not None:
            config = self._configs.get(scope_name)
            if str(config.version if config else 0) != config_version:
                return _Step("stale_config", "", 0, False, current)

        denied = any(
            charge.ask > 0
            and (
                current[charge.counter].used + current[charge.counter].held >= charge.block
                or current[charge.counter].used + current[charge.counter].held + charge.ask > charge.cap
            )
            for charge in charges
        )
        if dry_run:
            return _Step("checked", "", 0, False, current)

        snapshot = {keys.counter_key(ref): value for ref, value in current.items()}
        floor_ms = self._floor_ms()
        answer_expiry = max(expires_ms + self._grace_ms, floor_ms)
        if denied:
            if request_id:
                scope.answers[request_id] = _Answer(
                    "denied", "", expires_ms, snapshot, answer_expiry, answer=answer, details=details
                )
            return _Step("denied", "", expires_ms, False, current)
        if self._record(scope, reservation_id) is not None:
            return _Step("duplicate", reservation_id, expires_ms, False, current)

        record_expiry = answer_expiry
        for charge in charges:
            if charge.ask <= 0:
                continue
            key = keys.counter_key(charge.counter)
            key_expiry = max((charge.counter.resets_at + self._retention_seconds) * 1000, floor_ms)
            counter = self._counter(scope, key)
            if counter is None:
                counter = scope.counters[key] = _Counter()
            counter.held += charge.ask
            counter.forget_at_ms = key_expiry
            record_expiry = max(record_expiry, key_expiry)
        scope.records[reservation_id] = _Part(
            charges=tuple(charges),
            snapshot=snapshot,
            details=details,
            created_ms=now_ms,
            expires_ms=expires_ms,
            has_global=has_global,
            forget_at_ms=record_expiry,
        )
        scope.open[reservation_id] = expires_ms
        if request_id:
            scope.answers[request_id] = _Answer(
                "reserved", reservation_id, expires_ms, snapshot, answer_expiry, answer=answer, details=details
            )
        return _Step("reserved", reservation_id, expires_ms, False, current)

    async def reserve(self, command: ReserveCommand) -> ReserveResult:
        """As :meth:`RedisCounterStore.reserve <quota_service.store.redis_store.RedisCounterStore.reserve>`."""
        await self._enter("reserve")
        check_subject(command.subject)
        check_charges(command.subject, command.subject_charges)
        check_charges(GLOBAL_SCOPE, command.global_charges)
        if command.ttl_seconds <= 0:
            raise InvalidRequest(f"ttl_seconds must be positive, got {command.ttl_seconds}")
        if not command.dry_run and keys.subject_of(command.reservation_id) != command.subject:
            raise InvalidRequest(f"reservation id {command.reservation_id!r} was not made for this subject")
        details = _Details(dict(command.meta), dict(command.estimate), dict(command.rates))
        expires_ms = command.now_ms + command.ttl_seconds * 1000
        subject = self._reserve_step(
            scope_name=command.subject,
            charges=command.subject_charges,
            reservation_id=command.reservation_id,
            request_id="" if command.dry_run else command.request_id,
            now_ms=command.now_ms,
            expires_ms=expires_ms,
            config_version=command.config_version,
            details=details,
            has_global=bool(command.global_charges),
            dry_run=command.dry_run,
            answer=command.answer,
        )
        values = dict(subject.values)
        if subject.status == "stale_config":  # with the config now, as the Redis store answers
            stale = ReserveResult(
                ReserveStatus.STALE_CONFIG, "", values, config=self._config_now(command.subject, command.now_ms)
            )
            return self._left("reserve", stale)
        if command.dry_run:
            if command.global_charges:
                await self._enter("global_step")
                checked = self._reserve_step(
                    scope_name=GLOBAL_SCOPE,
                    charges=command.global_charges,
                    reservation_id=command.reservation_id,
                    request_id="",
                    now_ms=command.now_ms,
                    expires_ms=expires_ms,
                    config_version=None,
                    details=details,
                    has_global=False,
                    dry_run=True,
                )
                values.update(checked.values)
                self._leave("global_step")
            return self._left("reserve", ReserveResult(ReserveStatus.CHECKED, "", values))
        if subject.status == "duplicate":
            raise InvalidRequest(f"reservation id {command.reservation_id!r} is already in use")
        replayed = subject.replayed
        first = subject.details if replayed else None
        # replayed, answer, recorded_estimate, recorded_rates (the last three: set on replays)
        kept = (replayed, subject.answer, dict(first.estimate) if first else {}, dict(first.rates) if first else {})
        if subject.status == "denied":
            return self._left("reserve", ReserveResult(ReserveStatus.DENIED, "", values, 0, *kept))
        if subject.status == "denied_global":
            recorded = subject.global_snapshot or {}
            scope = self._scopes[GLOBAL_SCOPE]
            for charge in command.global_charges:
                ref = charge.counter
                values[ref] = recorded.get(keys.counter_key(ref)) or self._value(scope, ref)
            return self._left("reserve", ReserveResult(ReserveStatus.DENIED_GLOBAL, "", values, 0, *kept))

        reservation_id = subject.reservation_id
        expires_at = _seconds_ceil(subject.expires_ms)
        if not command.global_charges:
            result = ReserveResult(ReserveStatus.RESERVED, reservation_id, values, expires_at, *kept)
            return self._left("reserve", result)

        await self._enter("global_step")
        company = self._reserve_step(
            scope_name=GLOBAL_SCOPE,
            charges=command.global_charges,
            reservation_id=reservation_id,
            request_id=reservation_id,
            now_ms=command.now_ms,
            expires_ms=subject.expires_ms,
            config_version=None,
            details=details,
            has_global=False,
            dry_run=False,
        )
        values.update(company.values)
        if company.status == "reserved":
            self._leave("global_step")
            result = ReserveResult(ReserveStatus.RESERVED, reservation_id, values, expires_at, *kept)
            return self._left("reserve", result)
        snapshot = {keys.counter_key(ref): value for ref, value in company.values.items()}
        self._settle_step(
            command.subject,
            reservation_id,
            "release",
            {},
            command.now_ms,
            request_id=command.request_id,
            global_snapshot=snapshot,
        )
        self._leave("global_step")
        return self._left("reserve", ReserveResult(ReserveStatus.DENIED_GLOBAL, "", values, 0, *kept))

    def _left(self, operation: str, result: ReserveResult) -> ReserveResult:
        self._leave(operation)
        return result

    # -- settle (settle.lua) ------------------------------------------------------------------

    def _settle_step(
        self,
        scope_name: str,
        reservation_id: str,
        mode: str,
        actual: Mapping[str, int],
        now_ms: int,
        *,
        request_id: str = "",
        global_snapshot: dict[str, CounterValue] | None = None,
        withdraw: bool = False,
    ) -> tuple[str, bool, dict[CounterRef, CounterValue]]:
        """Returns (outcome, has_global, values after): settled | already_settled | missing | kept."""
        scope = self._scopes[scope_name]
        existing = self._record(scope, reservation_id)
        if withdraw and existing is not None and existing.replayed:
            return "kept", False, {}
        state, record = self._settle_record(scope, reservation_id, mode, actual, now_ms)
        if record is None:
            return "missing", False, {}
        request_key = request_id or reservation_id
        if global_snapshot is not None:
            prior = self._answer(scope, request_key)
            if prior is not None:
                prior.status, prior.reservation_id, prior.global_snapshot = "denied_global", "", global_snapshot
        elif withdraw and state in (_OPEN, _EXPIRED):
            prior = self._answer(scope, request_key)
            if prior is not None and prior.reservation_id == reservation_id:
                del scope.answers[request_key]
        values = {charge.counter: self._value(scope, charge.counter) for charge in record.charges}
        outcome = "already_settled" if state in (_COMMITTED, _RELEASED) else "settled"
        return outcome, record.has_global, values

    def _settle(self, reservation_id: str, mode: str, actual: Mapping[str, int], now_ms: int) -> SettleResult:
        subject = keys.subject_of(reservation_id)
        outcome, has_global, values = self._settle_step(subject, reservation_id, mode, actual, now_ms)
        if outcome == "missing":
            raise NotFound(f"reservation {reservation_id!r} not found (unknown, or settled and forgotten)")
        if has_global:
            _, _, company = self._settle_step(GLOBAL_SCOPE, reservation_id, mode, actual, now_ms)
            values.update(company)
        return SettleResult(already_settled=outcome == "already_settled", values=values)

    async def commit(self, reservation_id: str, actual: Mapping[str, int], now_ms: int) -> SettleResult:
        await self._enter("commit")
        for metric, units in actual.items():
            validate_metric_name(metric)
            check_units(f"actual {metric}", units)
        result = self._settle(reservation_id, "commit", actual, now_ms)
        self._leave("commit")
        return result

    async def release(self, reservation_id: str, now_ms: int) -> SettleResult:
        await self._enter("release")
        result = self._settle(reservation_id, "release", {}, now_ms)
        self._leave("release")
        return result

    async def withdraw(self, reservation_id: str, request_id: str, now_ms: int) -> bool:
        await self._enter("withdraw")
        subject = keys.subject_of(reservation_id)
        outcome, has_global, _ = self._settle_step(
            subject, reservation_id, "release", {}, now_ms, request_id=request_id, withdraw=True
        )
        if outcome == "settled" and has_global:
            self._settle_step(GLOBAL_SCOPE, reservation_id, "release", {}, now_ms)
        self._leave("withdraw")
        return outcome == "settled"

    # -- reads ------------------------------------------------------------------------------

    async def get_reservation(self, reservation_id: str) -> Reservation | None:
        await self._enter("get_reservation")
        subject = keys.subject_of(reservation_id)
        record = self._record(self._scopes[subject], reservation_id)
        if record is None:
            self._leave("get_reservation")
            return None
        charges = list(record.charges)
        if record.has_global:
            company = self._record(self._scopes[GLOBAL_SCOPE], reservation_id)
            charges += list(company.charges) if company else []
        asks: dict[str, int] = {}
        for charge in charges:
            asks[charge.counter.metric] = max(asks.get(charge.counter.metric, 0), charge.ask)
        details = record.details
        self._leave("get_reservation")
        return Reservation(
            reservation_id=reservation_id,
            subject=subject,
            state=ReservationState(record.state),
            asks=asks,
            estimate=dict(details.estimate),
            rates=dict(details.rates),
            meta=dict(details.meta),
            created_at_ms=record.created_ms,
            expires_at=_seconds_ceil(record.expires_ms),
        )

    async def usage(self, counters: tuple[CounterRef, ...], now_ms: int) -> Mapping[CounterRef, CounterValue]:
        await self._enter("usage")
        values: dict[CounterRef, CounterValue] = {}
        for scope_name in dict.fromkeys(ref.scope for ref in counters):
            self._sweep(self._scopes[scope_name], now_ms)
        for ref in counters:
            values[ref] = self._value(self._scopes[ref.scope], ref)
        self._leave("usage")
        return values

    async def write_back(self, grant: FailOpenGrant) -> None:
        """As the Redis store's (no usage record: the in-memory store keeps no outbox)."""
        await self._enter("write_back")
        if grant.name not in self._written_back:
            self._written_back.add(grant.name)
            for ref, units in grant.charges:
                scope = self._scopes[ref.scope]
                key = keys.counter_key(ref)
                counter = self._counter(scope, key)
                if counter is None:
                    counter = scope.counters[key] = _Counter(
                        forget_at_ms=max((ref.resets_at + self._retention_seconds) * 1000, self._floor_ms())
                    )
                counter.used = max(0, counter.used + units)
        self._leave("write_back")

    async def subject_config(self, subject: str, now_ms: int) -> SubjectConfig:
        await self._enter("subject_config")
        check_subject(subject)
        config = self._configs.get(subject)
        if config is not None:
            now_s = now_ms // 1000
            for counter, override in list(config.overrides.items()):
                if 0 < override.expires_at <= now_s:
                    del config.overrides[counter]  # lazily, as config_get.lua: no version change
        self._leave("subject_config")
        return self._config_now(subject, now_ms)

    def _config_now(self, subject: str, now_ms: int) -> SubjectConfig:
        """The subject's config: its live overrides (expired ones left out, not deleted)."""
        config = self._configs.get(subject)
        if config is None:
            return SubjectConfig(tier=None, overrides=(), version="0")
        now_s = now_ms // 1000
        live = sorted(
            (o for o in config.overrides.values() if not 0 < o.expires_at <= now_s),
            key=lambda o: (o.metric, WINDOW_ORDER.index(o.window)),
        )
        return SubjectConfig(tier=config.tier, overrides=tuple(live), version=str(config.version))

    async def ping(self) -> None:
        await self._enter("ping")
        self._leave("ping")

    async def close(self) -> None:
        self._subscribers.clear()

    # -- admin writes (as the Redis store's; each bumps the version and is announced) ---------

    def _write(self, subject: str) -> _Config:
        check_subject(subject)
        return self._configs.setdefault(subject, _Config())

    def _changed(self, subject: str, config: _Config) -> None:
        config.version += 1
        for queue in self._subscribers:
            queue.put_nowait(subject)

    async def set_tier(self, subject: str, tier: str | None) -> str | None:
        await self._enter("set_tier")
        if tier is not None and not tier:
            raise InvalidRequest("tier must be a name, or None to unassign")
        config = self._write(subject)
        previous, config.tier = config.tier, tier
        self._changed(subject, config)
        self._leave("set_tier")
        return previous

    async def set_override(self, record: OverrideRecord) -> None:
        await self._enter("set_override")
        validate_metric_name(record.metric)
        check_units("override max_units", record.max_units)
        config = self._write(record.subject)
        config.overrides[(record.metric, record.window)] = record
        self._changed(record.subject, config)
        self._leave("set_override")

    async def delete_override(self, subject: str, metric: str, window: Window) -> bool:
        await self._enter("delete_override")
        config = self._write(subject)
        removed = config.overrides.pop((metric, window), None)
        live = removed is not None and not 0 < removed.expires_at <= self._clock_ms() // 1000
        if live:
            self._changed(subject, config)
        self._leave("delete_override")
        return live

    async def config_changes(self) -> AsyncGenerator[str | None, None]:
        """Yields ``None`` once subscribed, then the subject of every config write (as the
        Redis admin store's feed, without heartbeats: this one never breaks)."""
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._subscribers.append(queue)
        try:
            yield None
            while True:
                yield await queue.get()
        finally:
            if queue in self._subscribers:
                self._subscribers.remove(queue)
