"""``RedisCounterStore``: the :class:`~quota_service.store.base.CounterStore` on Redis or Redis Cluster.

Every state change is one Lua script (``store/lua/*.lua``) touching the keys of one hash
tag, hence one cluster slot (see :mod:`quota_service.store.keys`):

* ``reserve.lua`` checks every charge of one scope and holds all of them or none. It runs
  once for the subject and, when the plan has company-wide charges, once more for
  ``__global__`` (a second slot, keyed by the reservation id for idempotency). If the
  global step denies, ``settle.lua`` releases the subject's part and records the global
  denial in the same atomic step, so a replay of the request answers ``DENIED_GLOBAL``.
* ``settle.lua`` commits or releases one reservation of one scope.
* ``usage.lua`` reads counters after settling the scope's expired reservations.
* ``config_get.lua`` / ``config_write.lua`` read and write a subject's tier and overrides;
  every write bumps the subject's config version in the same step.

Deadlines: every Redis round trip is bounded by ``timeout_seconds`` (``asyncio.timeout``
plus socket timeouts); a method making several round trips (``reserve`` with a global
step, ``commit`` of a reservation with a global part) may take up to that many times it.
A write that timed out may still be applied once Redis answers again: its outcome is
unknown, and retrying ``reserve`` with the same ``request_id`` (or ``commit``/``release``)
is safe, since each counts once. Every Redis, connection or timeout error leaves this module as
:class:`~quota_service.errors.StoreUnavailable`: this is the one place where third-party
exceptions are translated.

Units: counter amounts are whole integer units (micro-dollars for ``cost_usd``), at most
:data:`~quota_service.policy.units.MAX_UNITS`; times are unix milliseconds (``now_ms``)
or unix seconds (``*_at``).
"""

from __future__ import annotations

import asyncio
import functools
import importlib.resources
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisClusterException, RedisError

from quota_service.errors import InvalidRequest, NotFound, StoreUnavailable
from quota_service.policy.domain import (
    GLOBAL_SCOPE,
    CounterCharge,
    CounterRef,
    CounterValue,
    OverrideRecord,
    SubjectConfig,
)
from quota_service.policy.units import MAX_UNITS, validate_metric_name
from quota_service.policy.windows import WINDOW_ORDER, Window
from quota_service.store import keys
from quota_service.store.base import (
    Reservation,
    ReservationState,
    ReserveCommand,
    ReserveResult,
    ReserveStatus,
    SettleResult,
)
from quota_service.store.batching import GroupCommit

__all__ = ["RedisCounterStore"]

T = TypeVar("T")

#: How long a counter key outlives its window (seconds): late commits still land on it.
COUNTER_RETENTION_SECONDS: Final = 86_400
#: Open reservations settled at their estimate per script call (bounds a script's run time).
SWEEP_LIMIT: Final = 100

_SCRIPT_NAMES: Final = ("reserve", "reserve_batch", "settle", "usage", "config_get", "config_write")
#: Scripts that call the functions of ``lib.lua`` (prepended to their text) ...
_NEEDS_LIB: Final = frozenset({"reserve", "reserve_batch", "settle", "usage"})
#: ... and of ``reserve_core.lua`` (prepended after it).
_NEEDS_RESERVE_CORE: Final = frozenset({"reserve", "reserve_batch"})
#: Most global steps one batched script call carries.
GLOBAL_BATCH: Final = 64
_CLUSTER_SCHEMES: Final = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_PLAIN_SCHEMES: Final = frozenset({"redis", "rediss", "unix"})

#: What a store error looks like coming out of redis-py (or the OS, or the deadline).
STORE_ERRORS: Final = (RedisError, RedisClusterException, OSError)


async def bounded_call(what: str, seconds: float, call: Callable[[], Awaitable[T]]) -> T:
    """One Redis round trip, bounded by ``seconds``. The one place where redis-py's
    (and the OS's, and the deadline's) failures become :class:`StoreUnavailable`."""
    try:
        async with asyncio.timeout(seconds):
            return await call()
    except TimeoutError as exc:
        raise StoreUnavailable(f"redis {what}: no answer within {seconds:g}s") from exc
    except STORE_ERRORS as exc:
        raise StoreUnavailable(f"redis {what} failed: {type(exc).__name__}: {exc}") from exc


@functools.cache
def script_source(name: str) -> str:
    """The text of ``store/lua/<name>.lua`` as sent to Redis (``lib.lua`` prepended when needed).

    Read once per process from the installed package data."""
    folder = importlib.resources.files("quota_service.store").joinpath("lua")
    text = folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    if name in _NEEDS_RESERVE_CORE:
        text = folder.joinpath("reserve_core.lua").read_text(encoding="utf-8") + "\n" + text
    if name in _NEEDS_LIB:
        text = folder.joinpath("lib.lua").read_text(encoding="utf-8") + "\n" + text
    return text


@dataclass(frozen=True, slots=True)
class _ReserveCall:
    """A prepared reserve.lua call and how to read its reply."""

    keys: list[str]
    args: list[str | int]
    refs: list[CounterRef]

    def parse(self, reply: Sequence[Any]) -> _StepResult:
        status, rid, expires, replayed, flat, global_snapshot = reply
        return _StepResult(
            status=status,
            reservation_id=rid,
            expires_ms=int(expires),
            replayed=replayed == "1",
            values=_values(flat, self.refs),
            global_snapshot=global_snapshot,
        )


@dataclass(frozen=True, slots=True)
class _StepResult:
    """What ``reserve.lua`` answered for one scope."""

    status: str
    reservation_id: str
    expires_ms: int
    replayed: bool
    values: dict[CounterRef, CounterValue]
    global_snapshot: str


@dataclass(frozen=True, slots=True)
class _SettleStep:
    """What ``settle.lua`` answered for one scope."""

    outcome: str  # settled | already_settled | missing
    has_global: bool
    values: dict[CounterRef, CounterValue]


def _check_subject(subject: str) -> None:
    if not subject or subject == GLOBAL_SCOPE:
        raise InvalidRequest(f"subject {subject!r} is not valid")
    if any(ch in "{}" or ch.isspace() or not ch.isprintable() for ch in subject):
        raise InvalidRequest(f"subject {subject!r} must not contain braces, whitespace or control characters")


def _check_units(what: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_UNITS:
        raise InvalidRequest(f"{what} must be a whole number of units in [0, 2**53), got {value!r}")


def _check_charges(scope: str, charges: Sequence[CounterCharge]) -> None:
    seen: set[str] = set()
    for charge in charges:
        ref = charge.counter
        if ref.scope != scope:
            raise InvalidRequest(f"charge on {ref.scope!r} counter {ref.metric}/{ref.window} in the {scope!r} step")
        validate_metric_name(ref.metric)
        _check_units(f"ask for {ref.metric}/{ref.window}", charge.ask)
        _check_units(f"cap for {ref.metric}/{ref.window}", charge.cap)
        _check_units(f"block for {ref.metric}/{ref.window}", charge.block)
        key = keys.counter_key(ref)
        if key in seen:
            raise InvalidRequest(f"counter {key} is charged twice; merge its limits into one charge")
        seen.add(key)


def _values(flat: Sequence[Any], refs: Sequence[CounterRef]) -> dict[CounterRef, CounterValue]:
    """Pairs ``used, held`` strings from a script reply with their counters."""
    return {ref: CounterValue(int(flat[2 * i]), int(flat[2 * i + 1])) for i, ref in enumerate(refs)}


def _snapshot_json(values: Mapping[CounterRef, CounterValue]) -> str:
    return json.dumps({keys.counter_key(ref): [str(v.used), str(v.held)] for ref, v in values.items()})


def _charges_json(charges: Sequence[CounterCharge], retention_seconds: int) -> str:
    """The record's charges: everything needed to settle them and to rebuild each ``CounterRef``."""
    rows = [
        [
            keys.counter_key(c.counter),
            c.counter.metric,
            str(c.ask),
            c.counter.window.value,
            c.counter.window_id,
            str(c.counter.resets_at),
            str(c.counter.resets_at + retention_seconds),
            str(c.cap),
            str(c.block),
        ]
        for c in charges
    ]
    return json.dumps(rows)


def _refs_from_charges(scope: str, charges_json: str) -> list[CounterRef]:
    return [CounterRef(scope, row[1], Window(row[3]), row[4], int(row[5])) for row in json.loads(charges_json)]


def _seconds_ceil(ms: int) -> int:
    return -(-ms // 1000)


def _override_field(metric: str, window: Window) -> str:
    return f"{metric}:{window.value}"


def _override_from(subject: str, field: str, raw: str) -> OverrideRecord:
    metric, _, window = field.partition(":")
    data = json.loads(raw)
    return OverrideRecord(
        subject=subject,
        metric=metric,
        window=Window(window),
        max_units=int(data["max_units"]),
        expires_at=int(data.get("expires_at", 0)),
        reason=str(data.get("reason", "")),
        created_at=int(data.get("created_at", 0)),
        created_by=str(data.get("created_by", "")),
    )


class RedisCounterStore:
    """Counters, reservations and subject config in Redis (standalone or Cluster).

    Concurrency: each step is one Lua script, so any number of service replicas may call
    any method concurrently; what one script checks, it writes with no other command in
    between. Across the two slots of a reservation (subject, then global) there is no
    atomicity, only compensation: a global denial releases the subject's part.

    ``client`` is a ``redis.asyncio.Redis`` or ``RedisCluster`` created with
    ``decode_responses=True`` (:meth:`from_url` builds one). ``timeout_seconds`` bounds every
    round trip. ``grace_seconds``: how long a request's answer and a settled reservation are
    kept after the reservation's expiry (replays and late commits within it are honoured).
    ``clock`` returns unix seconds; it is used only by the admin methods that take no ``now_ms``.
    """

    def __init__(
        self,
        *,
        client: Redis | RedisCluster,
        timeout_seconds: float = 0.25,
        grace_seconds: int = 3600,
        retention_seconds: int = COUNTER_RETENTION_SECONDS,
        sweep_limit: int = SWEEP_LIMIT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        if grace_seconds < 0:
            raise ValueError("grace_seconds must not be negative")
        self._client = client
        self._timeout = timeout_seconds
        self._grace_ms = grace_seconds * 1000
        self._retention_seconds = retention_seconds
        self._sweep_limit = sweep_limit
        self._clock = clock
        self._scripts: dict[str, AsyncScript] = {
            name: client.register_script(script_source(name)) for name in _SCRIPT_NAMES
        }
        self._global_batches: GroupCommit[_ReserveCall, Any] = GroupCommit(
            self._run_global_batch, max_batch=GLOBAL_BATCH
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout_seconds: float = 0.25,
        grace_seconds: int = 3600,
        max_connections: int = 256,
        clock: Callable[[], float] = time.time,
    ) -> RedisCounterStore:
        """A store for ``url``; nothing is connected until the first call.

        ``redis://``, ``rediss://`` and ``unix://`` use one Redis; ``redis+cluster://host:port``
        and ``rediss+cluster://`` use Redis Cluster, discovered from that node.
        ``max_connections`` caps the connection pool (per node on a cluster); on a single
        Redis, a burst beyond it waits for a free connection within the deadline.
        """
        scheme, sep, rest = url.partition("://")
        scheme = scheme.lower()
        socket_options: dict[str, Any] = {
            "decode_responses": True,
            "socket_timeout": timeout_seconds,
            "socket_connect_timeout": timeout_seconds,
            # One immediate retry: a pooled connection may be dead after a Redis restart.
            "retry": Retry(NoBackoff(), 1),
        }
        client: Redis | RedisCluster
        if sep and scheme in _CLUSTER_SCHEMES:
            client = RedisCluster.from_url(
                f"{_CLUSTER_SCHEMES[scheme]}://{rest}", max_connections=max_connections, **socket_options
            )
        elif sep and scheme in _PLAIN_SCHEMES:
            pool = BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=timeout_seconds, **socket_options
            )
            client = Redis.from_pool(pool)  # the client owns the pool: aclose() closes it
        else:
            raise ValueError(
                f"unsupported Redis URL {url!r}: use redis://, rediss://, unix://, redis+cluster:// "
                "or rediss+cluster://"
            )
        return cls(client=client, timeout_seconds=timeout_seconds, grace_seconds=grace_seconds, clock=clock)

    @property
    def client(self) -> Redis | RedisCluster:
        """The ``redis.asyncio`` client (read-only): the admin store shares its connections."""
        return self._client

    @property
    def timeout_seconds(self) -> float:
        """The deadline of one Redis round trip, in seconds."""
        return self._timeout

    # -- plumbing -------------------------------------------------------------------------

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        return await bounded_call(what, self._timeout, call)

    async def _script(self, name: str, script_keys: Sequence[str], args: Sequence[str | int]) -> Any:
        script = self._scripts[name]
        return await self._call(name, lambda: script(keys=list(script_keys), args=list(args)))

    async def _hgetall(self, key: str) -> dict[str, str]:
        client = self._client
        raw: Mapping[Any, Any] = await self._call("hgetall", lambda: client.hgetall(key))
        return {str(k): str(v) for k, v in raw.items()}

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- reserve ----------------------------------------------------------------------------

    def _reserve_call(
        self,
        *,
        scope: str,
        charges: Sequence[CounterCharge],
        reservation_id: str,
        request_id: str,
        now_ms: int,
        expires_ms: int,
        config_version: str | None,
        meta_json: str,
        has_global: bool,
        dry_run: bool,
    ) -> _ReserveCall:
        """KEYS and ARGV of one reserve.lua call (see its header)."""
        refs = [c.counter for c in charges]
        script_keys = [
            keys.open_set_key(scope),
            # Without a request id the script never touches KEYS[2]; any key of the slot will do.
            keys.request_key(scope, request_id or reservation_id),
            keys.reservation_key(scope, reservation_id),
            keys.config_key(scope),
            *(keys.counter_key(ref) for ref in refs),
        ]
        args: list[str | int] = [
            now_ms,
            reservation_id,
            expires_ms,
            self._grace_ms,
            self._sweep_limit,
            keys.reservation_key(scope, ""),
            "1" if request_id else "0",
            "1" if dry_run else "0",
            "" if config_version is None else config_version,
            meta_json,
            "1" if has_global else "0",
            _charges_json(charges, self._retention_seconds),
        ]
        return _ReserveCall(script_keys, args, refs)

    async def _reserve_step(self, **call: Any) -> _StepResult:
        """One reserve.lua call, on its own."""
        prepared = self._reserve_call(**call)
        return prepared.parse(await self._script("reserve", prepared.keys, prepared.args))

    async def _global_step(self, **call: Any) -> _StepResult:
        """One global reserve step, group-committed with the others in flight (reserve_batch.lua)."""
        prepared = self._reserve_call(**call)
        return prepared.parse(await self._global_batches.submit(prepared))

    async def _run_global_batch(self, batch: Sequence[_ReserveCall]) -> Sequence[Any]:
        if len(batch) == 1:
            return [await self._script("reserve", batch[0].keys, batch[0].args)]
        script_keys: list[str] = []
        counts: list[str | int] = [len(batch)]
        args: list[str | int] = []
        for prepared in batch:
            script_keys += prepared.keys
            args += prepared.args
            counts += [len(prepared.keys), len(prepared.args)]
        replies: Sequence[Any] = await self._script("reserve_batch", script_keys, counts + args)
        return replies

    async def reserve(self, command: ReserveCommand) -> ReserveResult:
        """Check and hold every charge of ``command``: the subject's in one atomic step, then
        the global ones in another (released again from the subject if the global step denies).

        ``reservation_id`` of the result is ``""`` unless the status is ``RESERVED``;
        ``expires_at`` (unix seconds, rounded up) likewise. A dry run neither reads nor
        records the ``request_id``'s answer. If the global step fails with
        ``StoreUnavailable`` after the subject step reserved, the subject's part stays open:
        it is settled at its estimate when it expires, or corrected by a later ``commit``.
        """
        _check_subject(command.subject)
        _check_charges(command.subject, command.subject_charges)
        _check_charges(GLOBAL_SCOPE, command.global_charges)
        if command.ttl_seconds <= 0:
            raise InvalidRequest(f"ttl_seconds must be positive, got {command.ttl_seconds}")
        if not command.dry_run and keys.subject_of(command.reservation_id) != command.subject:
            # commit finds a reservation through the subject its id names
            raise InvalidRequest(f"reservation id {command.reservation_id!r} was not made for this subject")
        meta_json = json.dumps(
            {
                **command.meta,
                "estimate": json.dumps({m: str(u) for m, u in command.estimate.items()}, sort_keys=True),
                "rates": json.dumps(dict(command.rates), sort_keys=True),
            },
            sort_keys=True,
        )
        expires_ms = command.now_ms + command.ttl_seconds * 1000
        step = functools.partial(
            self._reserve_step, now_ms=command.now_ms, meta_json=meta_json, dry_run=command.dry_run
        )

        subject = await step(
            scope=command.subject,
            charges=command.subject_charges,
            reservation_id=command.reservation_id,
            request_id="" if command.dry_run else command.request_id,
            expires_ms=expires_ms,
            config_version=command.config_version,
            has_global=bool(command.global_charges),
        )
        values: dict[CounterRef, CounterValue] = dict(subject.values)

        if subject.status == "stale_config":  # a dry run too: its plan rests on a stale config
            return ReserveResult(ReserveStatus.STALE_CONFIG, "", values)
        if command.dry_run:
            if command.global_charges:
                checked = await step(
                    scope=GLOBAL_SCOPE,
                    charges=command.global_charges,
                    reservation_id=command.reservation_id,
                    request_id="",
                    expires_ms=expires_ms,
                    config_version=None,
                    has_global=False,
                )
                values.update(checked.values)
            return ReserveResult(ReserveStatus.CHECKED, "", values)

        if subject.status == "duplicate":
            raise InvalidRequest(f"reservation id {command.reservation_id!r} is already in use")
        if subject.status == "denied":
            return ReserveResult(ReserveStatus.DENIED, "", values, replayed=subject.replayed)
        if subject.status == "denied_global":
            values.update(await self._recorded_global(command, subject.global_snapshot))
            return ReserveResult(ReserveStatus.DENIED_GLOBAL, "", values, replayed=subject.replayed)
        if subject.status != "reserved":
            raise StoreUnavailable(f"reserve.lua answered an unknown status {subject.status!r}")

        reservation_id = subject.reservation_id
        expires_at = _seconds_ceil(subject.expires_ms)
        if not command.global_charges:
            return ReserveResult(ReserveStatus.RESERVED, reservation_id, values, expires_at, subject.replayed)

        # The global step is idempotent by reservation id: a replay of the request re-runs it
        # and gets its first answer (or, after a crash in between, its first run).
        company = await self._global_step(
            now_ms=command.now_ms,
            meta_json=meta_json,
            dry_run=False,
            scope=GLOBAL_SCOPE,
            charges=command.global_charges,
            reservation_id=reservation_id,
            request_id=reservation_id,
            expires_ms=subject.expires_ms,
            config_version=None,
            has_global=False,
        )
        values.update(company.values)
        if company.status == "reserved":
            return ReserveResult(ReserveStatus.RESERVED, reservation_id, values, expires_at, subject.replayed)
        if company.status != "denied":
            raise StoreUnavailable(f"reserve.lua (global) answered an unexpected status {company.status!r}")
        await self._settle_step(
            command.subject,
            reservation_id,
            "release",
            {},
            command.now_ms,
            request_id=command.request_id,
            global_snapshot=_snapshot_json(company.values),
        )
        return ReserveResult(ReserveStatus.DENIED_GLOBAL, "", values, replayed=subject.replayed)

    async def _recorded_global(self, command: ReserveCommand, snapshot_json: str) -> dict[CounterRef, CounterValue]:
        """The global values recorded with a global denial; current values for counters it did not name."""
        recorded = json.loads(snapshot_json) if snapshot_json else {}
        found: dict[CounterRef, CounterValue] = {}
        missing: list[CounterRef] = []
        for charge in command.global_charges:
            pair = recorded.get(keys.counter_key(charge.counter))
            if pair is None:
                missing.append(charge.counter)
            else:
                found[charge.counter] = CounterValue(int(pair[0]), int(pair[1]))
        if missing:
            found.update(await self.usage(tuple(missing), command.now_ms))
        return found

    # -- settle ---------------------------------------------------------------------------

    async def _settle_step(
        self,
        scope: str,
        reservation_id: str,
        mode: str,
        actual: Mapping[str, int],
        now_ms: int,
        *,
        request_id: str = "",
        global_snapshot: str | None = None,
        withdraw: bool = False,
    ) -> _SettleStep:
        script_keys = [
            keys.reservation_key(scope, reservation_id),
            keys.open_set_key(scope),
            keys.request_key(scope, request_id or reservation_id),
        ]
        args: list[str | int] = [
            mode,
            now_ms,
            self._grace_ms,
            json.dumps({metric: str(units) for metric, units in actual.items()}),
            reservation_id,
            "2" if withdraw else "0" if global_snapshot is None else "1",
            global_snapshot or "",
        ]
        outcome, _state, charges_json, has_global, flat = await self._script("settle", script_keys, args)
        return _SettleStep(outcome, has_global == "1", _values(flat, _refs_from_charges(scope, charges_json)))

    async def _settle(self, reservation_id: str, mode: str, actual: Mapping[str, int], now_ms: int) -> SettleResult:
        subject = keys.subject_of(reservation_id)
        part = await self._settle_step(subject, reservation_id, mode, actual, now_ms)
        if part.outcome == "missing":
            raise NotFound(f"reservation {reservation_id!r} not found (unknown, or settled and forgotten)")
        values = dict(part.values)
        if part.has_global:
            # Settled independently of the subject's part (and idempotently), so a retry after
            # a failure in between still settles the global part.
            company = await self._settle_step(GLOBAL_SCOPE, reservation_id, mode, actual, now_ms)
            values.update(company.values)
        return SettleResult(already_settled=part.outcome == "already_settled", values=values)

    async def withdraw(self, reservation_id: str, request_id: str, now_ms: int) -> bool:
        """Give back a reservation whose caller was answered DENY (the store failed midway)
        and forget its ``request_id``, so a repeat of the request is decided afresh. Returns
        ``False`` (and changes nothing) when a replay of the request has handed the
        reservation out since, or when it is unknown or already settled."""
        subject = keys.subject_of(reservation_id)
        part = await self._settle_step(
            subject, reservation_id, "release", {}, now_ms, request_id=request_id, withdraw=True
        )
        if part.outcome != "settled":
            return False
        if part.has_global:
            await self._settle_step(GLOBAL_SCOPE, reservation_id, "release", {}, now_ms)
        return True

    async def commit(self, reservation_id: str, actual: Mapping[str, int], now_ms: int) -> SettleResult:
        """Settle with ``actual`` units per metric (a metric left out counts 0; a metric the
        reservation holds no counter for is ignored). Every counter of the reservation on that
        metric (each window, subject and global) gets the same actual amount.

        Open: ``used += actual``, ``held -= ask``; expired (already charged its estimate):
        ``used += actual - ask``. ``used`` may pass the cap: an overshoot is recorded, never
        lost. Committed or released before: nothing changes, ``already_settled``.
        Raises :class:`NotFound` for an unknown (or long forgotten) reservation."""
        for metric, units in actual.items():
            validate_metric_name(metric)
            _check_units(f"actual {metric}", units)
        return await self._settle(reservation_id, "commit", actual, now_ms)

    async def release(self, reservation_id: str, now_ms: int) -> SettleResult:
        """The call did not happen: give the estimate back (from ``held`` when open, from
        ``used`` when it had expired). Settled before: nothing changes, ``already_settled``.
        Raises :class:`NotFound` for an unknown reservation."""
        return await self._settle(reservation_id, "release", {}, now_ms)

    # -- reads ----------------------------------------------------------------------------

    async def get_reservation(self, reservation_id: str) -> Reservation | None:
        """The reservation's record, or ``None`` when unknown. ``asks`` covers the subject's
        and the global part; ``state`` is as stored (an open reservation past its expiry is
        reported ``OPEN`` until something settles it)."""
        try:
            subject = keys.subject_of(reservation_id)
        except NotFound:
            return None
        record = await self._hgetall(keys.reservation_key(subject, reservation_id))
        if not record:
            return None
        rows = list(json.loads(record.get("charges", "[]")))
        if record.get("has_global") == "1":
            company = await self._hgetall(keys.reservation_key(GLOBAL_SCOPE, reservation_id))
            rows += json.loads(company.get("charges", "[]"))
        asks: dict[str, int] = {}
        for row in rows:
            asks[row[1]] = max(asks.get(row[1], 0), int(row[2]))
        meta: dict[str, str] = json.loads(record.get("meta", "{}"))
        return Reservation(
            reservation_id=reservation_id,
            subject=subject,
            state=ReservationState(record["state"]),
            asks=asks,
            estimate={m: int(u) for m, u in json.loads(meta.pop("estimate", "{}")).items()},
            rates=json.loads(meta.pop("rates", "{}")),
            meta=meta,
            created_at_ms=int(record.get("created_ms", 0)),
            expires_at=_seconds_ceil(int(record.get("expires_ms", 0))),
        )

    async def usage(self, counters: tuple[CounterRef, ...], now_ms: int) -> Mapping[CounterRef, CounterValue]:
        """Current values (absent counters read ``0``), after settling up to ``sweep_limit``
        expired reservations of every scope involved: one atomic step per scope."""
        by_scope: dict[str, list[CounterRef]] = {}
        for ref in dict.fromkeys(counters):
            by_scope.setdefault(ref.scope, []).append(ref)
        values: dict[CounterRef, CounterValue] = {}
        for scope, refs in by_scope.items():
            script_keys = [keys.open_set_key(scope), *(keys.counter_key(ref) for ref in refs)]
            args: list[str | int] = [now_ms, self._grace_ms, self._sweep_limit, keys.reservation_key(scope, "")]
            flat = await self._script("usage", script_keys, args)
            values.update(_values(flat, refs))
        return values

    async def subject_config(self, subject: str, now_ms: int) -> SubjectConfig:
        """Tier, live overrides (``expires_at`` 0 or later than ``now_ms``) and version, read
        atomically. Expired overrides are deleted on the way (no version change)."""
        _check_subject(subject)
        reply = await self._script(
            "config_get", [keys.config_key(subject), keys.overrides_key(subject)], [now_ms // 1000]
        )
        tier, has_tier, version, flat = reply
        overrides = [_override_from(subject, flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
        now_s = now_ms // 1000
        live = [o for o in overrides if o.expires_at == 0 or o.expires_at > now_s]
        live.sort(key=lambda o: (o.metric, WINDOW_ORDER.index(o.window)))
        return SubjectConfig(tier=tier if has_tier == "1" else None, overrides=tuple(live), version=version)

    async def ping(self) -> None:
        client = self._client
        await self._call("ping", lambda: client.ping())

    async def close(self) -> None:
        """Close every connection; the store is not usable afterwards."""
        client = self._client
        await self._call("close", lambda: client.aclose())

    # -- admin writes ---------------------------------------------------------------------

    async def _config_write(self, subject: str, op: str, name: str = "", value: str = "") -> tuple[str, bool]:
        _check_subject(subject)
        reply = await self._script(
            "config_write",
            [keys.config_key(subject), keys.overrides_key(subject)],
            [op, name, value, self._now_ms() // 1000],
        )
        previous, changed, _version = reply
        return previous, changed == "1"

    async def set_tier(self, subject: str, tier: str | None) -> str | None:
        """Assign ``tier`` (``None``: back to the policy's default). Returns the tier assigned
        before (``None`` if none). Bumps the subject's config version atomically."""
        if tier is not None and not tier:
            raise InvalidRequest("tier must be a name, or None to unassign")
        op = "clear_tier" if tier is None else "set_tier"
        previous, _ = await self._config_write(subject, op, tier or "")
        return previous or None

    async def set_override(self, record: OverrideRecord) -> None:
        """Create or replace the override for ``record.metric``/``record.window`` (units,
        ``expires_at`` unix seconds, 0 = never). Bumps the subject's config version atomically."""
        validate_metric_name(record.metric)
        _check_units("override max_units", record.max_units)
        if record.expires_at < 0:
            raise InvalidRequest(f"override expires_at must be unix seconds or 0, got {record.expires_at}")
        body = json.dumps(
            {
                "max_units": str(record.max_units),
                "expires_at": record.expires_at,
                "reason": record.reason,
                "created_at": record.created_at,
                "created_by": record.created_by,
            }
        )
        await self._config_write(record.subject, "set_override", _override_field(record.metric, record.window), body)

    async def delete_override(self, subject: str, metric: str, window: Window) -> bool:
        """Remove an override; ``True`` if a live one was removed (then the version is bumped)."""
        validate_metric_name(metric)
        _, changed = await self._config_write(subject, "delete_override", _override_field(metric, window))
        return changed

    async def list_overrides(self, subject: str, *, now_ms: int | None = None) -> list[OverrideRecord]:
        """The subject's live overrides, by metric then window (``now_ms`` defaults to the clock)."""
        config = await self.subject_config(subject, self._now_ms() if now_ms is None else now_ms)
        return list(config.overrides)
