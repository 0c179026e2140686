"""``RedisCounterStore``: the :class:`~quota_service.store.base.CounterStore` on Redis or Redis Cluster.

Every state change is one Lua script (``store/lua/*.lua``) touching the keys of one hash
tag, hence one cluster slot (see :mod:`quota_service.store.keys` for the keys and how long
each lives, :mod:`quota_service.store.protocol` for what crosses to Lua):

* ``reserve.lua`` answers a replay from the request's record, or checks every charge of
  one scope and holds all of them or none. It runs once for the subject and, when the plan
  has company-wide charges, once more for ``__global__`` (a second slot; those steps are
  group-committed, ``reserve_batch.lua``). If the global step denies, ``settle.lua``
  releases the subject's part and records the global denial in the same atomic step, so
  a replay of the request answers ``DENIED_GLOBAL``.
* On one Redis (not a cluster), both steps are one item of ``reserve_fused.lua`` instead:
  the reservations that arrive while a call is in flight go out together in the next
  one (group commit, up to :data:`FUSED_BATCH`; with nothing in flight one leaves at
  once), and each runs there exactly as the separate calls would, with a global denial
  compensated in the same atomic step. One round trip per request at low load, one per
  batch under load; a failure inside one item (damaged data) is that request's alone.
* ``settle.lua`` commits, releases, withdraws or compensates one record of one scope.
* ``usage.lua`` reads counters after settling the scope's expired reservations;
  ``record.lua`` reads one record for :meth:`RedisCounterStore.get_reservation`.
* ``config_get.lua`` / ``config_write.lua`` read and write a subject's tier and overrides;
  every write bumps the subject's config version in the same step.

Failures: :func:`bounded_call` is the one place where redis-py's (and the OS's, and the
deadline's) exceptions are translated; every call of the client library goes through it.
An outage (connection refused or lost, timeout, the request's deadline passed, Redis
loading or busy with a script, a cluster failing over or reconfiguring, a read-only
replica after a failover) becomes :class:`~quota_service.errors.StoreUnavailable`;
anything Redis refuses otherwise (WRONGTYPE, a script error, out of memory, ...) and any
reply that does not parse becomes :class:`~quota_service.errors.StoreDataError`, naming
the key, logged once at ERROR. Any other exception raised from inside the client library
(``AttributeError``, ``TypeError``, ``IndexError`` from redis-py's cluster client during a
failover) is an outage as well: :class:`~quota_service.errors.StoreUnavailable`, counted
(:mod:`quota_service.store.guard`).

Deadlines: every Redis round trip is bounded by ``timeout_seconds`` cut to what is left of
the request's deadline (:func:`quota_service.deadline.budget`); once that is gone, no I/O
is attempted. A write that timed out may still be applied once Redis answers again: its
outcome is unknown, and retrying ``reserve`` with the same ``request_id`` (or
``commit``/``release``) is safe, since each counts once.

Units: counter amounts are whole integer units (micro-dollars for ``cost_usd``), at most
:data:`~quota_service.policy.units.MAX_UNITS`; times are unix milliseconds (``now_ms``)
or unix seconds (``*_at``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import importlib.resources
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn, TypeVar

import hiredis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AskError,
    ClusterError,
    DataError,
    InvalidResponse,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from quota_service import deadline
from quota_service.errors import (
    InvalidRequest,
    NotFound,
    OutboxFull,
    QuotaServiceError,
    StoreDataError,
    StoreUnavailable,
)
from quota_service.metrics import REPLICA_WAIT_SHORT
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
from quota_service.store import keys, protocol
from quota_service.store.base import (
    FailOpenGrant,
    Reservation,
    ReservationState,
    ReserveCommand,
    ReserveResult,
    ReserveStatus,
    SettledCounter,
    SettleResult,
    check_charges,
    check_subject,
    check_units,
)
from quota_service.store.batching import GroupCommit
from quota_service.store.cluster import FailoverRedisCluster
from quota_service.store.guard import client_fault
from quota_service.store.protocol import NO, YES, Outcome, Settle, State, Status, Step
from quota_service.store.sentinel import sentinel_master
from quota_service.store.urls import Deployment, parse_redis_url

__all__ = ["EvictionProblem", "RedisCounterStore", "bounded_call"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: How long a counter key outlives its window (seconds): late commits still land on it.
COUNTER_RETENTION_SECONDS: Final = 86_400
#: How long (seconds) a request's answer and a settled reservation are kept after the
#: reservation's expiry: replays and repeated or late settlements within it are honoured.
GRACE_SECONDS: Final = 60
#: Open reservations settled at their estimate per script call (bounds a script's run time).
SWEEP_LIMIT: Final = 100

_SCRIPT_NAMES: Final = (
    "reserve",
    "reserve_batch",
    "reserve_fused",
    "settle",
    "usage",
    "reap",
    "outbox_done",
    "charge",
    "record",
    "config_get",
    "config_write",
)
#: Scripts that use the constants and functions of ``lib.lua`` (prepended to their text) ...
_NEEDS_LIB: Final = frozenset(
    {"reserve", "reserve_batch", "reserve_fused", "settle", "usage", "reap", "charge", "record"}
)
#: ... of ``reserve_core.lua`` (prepended after it) ...
_NEEDS_RESERVE_CORE: Final = frozenset({"reserve", "reserve_batch", "reserve_fused"})
#: ... and of ``settle_core.lua`` (after that).
_NEEDS_SETTLE_CORE: Final = frozenset({"settle", "reserve_fused"})
#: Most global steps one batched script call carries.
GLOBAL_BATCH: Final = 64
#: Most whole reservations one fused script call carries (single Redis): a call of 64 runs
#: for about as long as 64 calls of reserve.lua would, a few milliseconds.
FUSED_BATCH: Final = 64
#: Entries an outbox may hold before new reservations are refused (``OutboxFull``): about
#: 300 bytes each, so ~150 MB on one Redis, hours of traffic with the ledger down at a
#: few hundred requests per second. Settlements always append (what is open is bounded too).
OUTBOX_CAP: Final = 500_000
#: The scripts that write money (counters, reservations): followed by WAIT with --redis-wait-replicas.
MONEY_SCRIPTS: Final = frozenset({"reserve", "reserve_batch", "reserve_fused", "settle", "charge"})
#: Scopes one reap.lua call settles at most.
REAP_SCOPES: Final = 200


def _ignore_tag(_tag: str) -> None:
    return None


#: What a store error looks like coming out of redis-py (or the OS).
STORE_ERRORS: Final = (RedisError, RedisClusterException, OSError)
#: redis-py errors that mean "Redis is not answering correctly right now": an outage.
_OUTAGES: Final = (
    RedisConnectionError,  # refused, reset, BusyLoadingError (LOADING), authentication, pool exhausted
    RedisTimeoutError,
    ClusterError,  # CLUSTERDOWN, MASTERDOWN, redirections exhausted
    RedisClusterException,  # slot not covered, no node reachable
    ReadOnlyError,  # a replica after a failover
    TryAgainError,  # a slot migrating
    AskError,  # MOVED / ASK not followed
    InvalidResponse,  # garbage on the wire
    OSError,
)
#: Error codes of a refusal that is an outage, also when a script reports it (Redis 6.2
#: wraps a command's error inside a script as ``... @user_script: N: -CODE ...``).
_OUTAGE_CODES: Final = frozenset(
    {"BUSY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "READONLY", "NOREPLICAS", "MOVED", "ASK"}
)
_ERROR_CODE: Final = re.compile(r"(?:^|: -)([A-Z]+)\b")
#: How the scripts report damaged data: ``QUOTADATA <key> <what>`` (see lib.lua data_error).
_SCRIPT_DATA_ERROR: Final = re.compile(r"QUOTADATA (\S+) (.*?)(?: script: [0-9a-f]{40}.*)?$", re.S)
#: What a reply that does not parse raises while it is read.
_PARSE_ERRORS: Final = (ValueError, KeyError, TypeError, IndexError)


def _is_outage(exc: BaseException) -> bool:
    if isinstance(exc, _OUTAGES):
        return True
    if isinstance(exc, ResponseError):
        return any(code in _OUTAGE_CODES for code in _ERROR_CODE.findall(str(exc)))
    return not isinstance(exc, RedisError) or type(exc) is RedisError


def _data_error(what: str, key: str, exc: BaseException, *, log_it: bool = True) -> StoreDataError:
    """The StoreDataError for ``exc``, naming the key (the script's own, when it named one);
    logged once, at ERROR (unless the caller expects the refusal and handles it)."""
    found = _SCRIPT_DATA_ERROR.search(str(exc))
    if found:
        key, detail = found.group(1), found.group(2)
    else:
        detail = f"{type(exc).__name__}: {exc}"
    error = StoreDataError(
        f"redis {what}: damaged data or a refused command at {key or '(unknown key)'}: {detail}", key=key
    )
    if log_it:
        log.error("%s", error)
    return error


async def bounded_call(
    what: str,
    seconds: float,
    call: Callable[[], Awaitable[T]],
    *,
    key: str = "",
    request_deadline: bool = True,
    refusal_expected: bool = False,
) -> T:
    """One Redis round trip, bounded by ``seconds`` cut to the request's deadline (unless
    ``request_deadline`` is false: a call shared by several requests, e.g. a group commit).
    The one place where redis-py's (and the OS's, and the deadline's) failures are
    translated: an outage becomes :class:`StoreUnavailable`, anything else Redis refuses
    :class:`StoreDataError` naming ``key`` (or the key a script named), logged at ERROR
    unless ``refusal_expected`` (a probe that handles a refused command itself); any other
    exception from inside the client library is an outage too
    (:func:`~quota_service.store.guard.client_fault`). With the
    deadline already gone, raises ``StoreUnavailable("request deadline passed")`` without
    any I/O."""
    budget = deadline.budget(seconds) if request_deadline else seconds
    if budget <= 0:
        raise StoreUnavailable("request deadline passed")
    try:
        async with asyncio.timeout(budget):
            return await call()
    except TimeoutError as exc:  # before OSError: the builtin TimeoutError is one
        raise StoreUnavailable(f"redis {what}: no answer within {budget:g}s") from exc
    except STORE_ERRORS as exc:
        if _is_outage(exc):
            raise StoreUnavailable(f"redis {what} failed: {type(exc).__name__}: {exc}") from exc
        raise _data_error(what, key, exc, log_it=not refusal_expected) from exc
    except QuotaServiceError:
        raise  # already ours (a group commit's shed, say)
    except Exception as exc:
        # Not Redis' answer: the client library failed inside (its cluster client during a
        # failover raised AttributeError, TypeError, IndexError). An outage to the caller.
        raise client_fault(what, exc) from exc


def parsed(what: str, key: str, parse: Callable[[R], T], reply: R) -> T:
    """``parse(reply)``; a reply that does not parse is :class:`StoreDataError` naming ``key``."""
    try:
        return parse(reply)
    except _PARSE_ERRORS as exc:
        raise _data_error(what, key, exc) from exc


@functools.lru_cache(maxsize=4096)
def _named_plan(
    estimated: tuple[str, ...], rates: tuple[tuple[str, str], ...], meta: tuple[tuple[str, str], ...], answer: str
) -> tuple[str, str]:
    """A plan text (:func:`protocol.plan_text`) and its digest: the same for every request of
    one plan shape (policy version, tier, feature, model, prices), so made once."""
    text = protocol.plan_text(estimated, dict(rates), dict(meta), answer)
    return text, keys.digest(text)


#: Layouts repeat for every request of a plan shape within a window.
_digest = functools.lru_cache(maxsize=16_384)(keys.digest)


_PACKED: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def packing_in_c(connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    """``connection_class`` packing its commands with hiredis' C ``pack_command``.

    redis-py's asyncio connections pack every command in Python, one ``encode`` per
    argument: for a reserve script's 30 to 2,000 arguments that was a fifth of the
    service's CPU per request (``python -m bench.profile --store redis``). hiredis, which
    already parses the replies, packs the same RESP in C (redis-py's own sync client uses
    it so). Same bytes on the wire; a value hiredis cannot pack is the ``DataError``
    redis-py raises for it."""

    def pack_command(self: AbstractConnection, *args: Any) -> list[bytes]:
        first = args[0]
        if isinstance(first, str):  # "SCRIPT LOAD" and the like: the words go separately
            args = (*first.encode().split(), *args[1:])
        elif b" " in first:
            args = (*first.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            raise DataError(str(exc)) from exc

    if connection_class not in _PACKED:
        _PACKED[connection_class] = type(
            f"CPacked{connection_class.__name__}", (connection_class,), {"pack_command": pack_command}
        )
    return _PACKED[connection_class]


@functools.cache
def script_source(name: str) -> str:
    """The text of ``store/lua/<name>.lua`` as sent to Redis (``lib.lua`` prepended when needed).

    Read once per process from the installed package data."""
    folder = importlib.resources.files("quota_service.store").joinpath("lua")
    text = folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    if name in _NEEDS_SETTLE_CORE:
        text = folder.joinpath("settle_core.lua").read_text(encoding="utf-8") + "\n" + text
    if name in _NEEDS_RESERVE_CORE:
        text = folder.joinpath("reserve_core.lua").read_text(encoding="utf-8") + "\n" + text
    if name in _NEEDS_LIB:
        text = folder.joinpath("lib.lua").read_text(encoding="utf-8") + "\n" + text
    return text


@dataclass(frozen=True, slots=True)
class EvictionProblem:
    """Why Redis may lose keys to eviction (``refuse``: ``serve`` should not start unless
    told to accept it), or why that could not be checked (``refuse`` false: a warning)."""

    message: str
    refuse: bool


@dataclass(frozen=True, slots=True)
class _Scope:
    """One scope's part of a reserve command, prepared once: its counters, their keys, and
    what reserve.lua needs of each."""

    scope: str
    refs: tuple[CounterRef, ...]
    counter_keys: tuple[str, ...]
    charge_args: tuple[str | int, ...]  # ask, cap, block, counter key expiry (unix s), per counter
    layout: str  # protocol.layout(refs)

    @classmethod
    def of(cls, scope: str, charges: Sequence[CounterCharge], retention_seconds: int) -> _Scope:
        check_charges(scope, charges)
        refs = tuple(c.counter for c in charges)
        args: list[str | int] = []
        counter_keys: list[str] = []
        entries: list[str] = []
        prefix = f"{keys.COUNTER}:{{{scope}}}:"
        for c in charges:
            ref = c.counter
            # keys.counter_name(ref), inlined (once per counter per request); str() of the
            # StrEnum is its value without the enum's descriptor
            name = f"{ref.metric}:{ref.window!s}:{ref.window_id}"
            counter_keys.append(prefix + name)
            entries.append(f"{name}@{ref.resets_at}")
            args += [c.ask, c.cap, c.block, ref.resets_at + retention_seconds]
        return cls(scope, refs, tuple(counter_keys), tuple(args), " ".join(entries))

    def values(self, flat: Sequence[Any]) -> dict[CounterRef, CounterValue]:
        """Pairs ``used, held`` strings from a script reply with the counters."""
        if len(flat) != 2 * len(self.refs):
            raise ValueError(f"{len(flat)} values for {len(self.refs)} counters")
        return {ref: CounterValue(int(flat[2 * i]), int(flat[2 * i + 1])) for i, ref in enumerate(self.refs)}


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A reserve command with everything derived from it once: both scopes' counters, the
    reservation's name, the shared texts its record names."""

    command: ReserveCommand
    name: keys.ReservationName
    own: _Scope
    company: _Scope
    expires_ms: int
    plan: str
    plan_digest: str
    layout: str
    layout_digest: str
    estimate: str
    head: str  # reserve.lua ARGV[15]


@dataclass(frozen=True, slots=True)
class _StepReply:
    """What ``reserve.lua`` answered for one scope (see its header)."""

    scope: str
    status: Status
    generation: str
    expires_ms: int
    replayed: bool
    values: dict[CounterRef, CounterValue]  # the step's counters now (before the step)
    recorded: str
    plan: str
    layout: str
    state: State | None
    has_global: bool
    estimate: str  # replays: the record's estimate (amounts, or a tombstone's units)
    config: Sequence[Any] | None = None  # STALE_CONFIG: the config now, as config_get.lua returns it

    @classmethod
    def parse(cls, scope: _Scope, reply: Sequence[Any]) -> _StepReply:
        status, generation, expires_ms, replayed, flat, recorded, plan, layout, state, has_global, estimate = reply[:11]
        if len(reply) not in (11, 12):
            raise ValueError(f"{len(reply)} fields in a reserve reply")
        return cls(
            scope=scope.scope,
            status=Status(status),
            generation=str(generation),
            expires_ms=int(expires_ms or 0),
            replayed=replayed == YES,
            values=scope.values(flat),
            recorded=str(recorded),
            plan=str(plan),
            layout=str(layout),
            state=State(state) if state else None,
            has_global=has_global == YES,
            estimate=str(estimate),
            config=reply[11] if len(reply) == 12 else None,
        )

    def recorded_values(self) -> dict[str, CounterValue]:
        """The values recorded at the first decision, by counter key (own and company-wide)."""
        if not self.recorded:
            return {}
        own_refs, company_refs = protocol.parse_layout_text(self.scope, GLOBAL_SCOPE, self.layout)
        own, company = protocol.split_values(self.recorded)
        found = {keys.counter_key(r): v for r, v in zip(own_refs, own, strict=True)}
        if company:
            found.update({keys.counter_key(r): v for r, v in zip(company_refs, company, strict=True)})
        return found

    def recorded_by_ref(self) -> dict[CounterRef, CounterValue]:
        """The recorded values of this step's own counters (those it recorded)."""
        recorded = self.recorded_values()
        return {ref: recorded[keys.counter_key(ref)] for ref in self.values if keys.counter_key(ref) in recorded}

    def answer(self) -> str:
        return protocol.Plan.parse(self.plan).answer if self.plan else ""

    def recorded_estimate(self) -> dict[str, int]:
        """A replay's recorded estimate by metric: an open or expired record keeps amounts,
        a tombstone the units of its plan text's estimated metrics, in their order."""
        if self.state in (State.OPEN, State.EXPIRED):
            return protocol.parse_amounts(self.estimate)
        return (protocol.Plan.parse(self.plan) if self.plan else protocol.EMPTY_PLAN).estimate(self.estimate)

    def recorded_rates(self) -> dict[str, str]:
        """A replay's recorded rates (its plan text's)."""
        return protocol.Plan.parse(self.plan).rates if self.plan else {}


@dataclass(frozen=True, slots=True)
class _FusedItem:
    """One whole reservation for reserve_fused.lua: the KEYS and ARGV of its subject step
    and of its company-wide step (``None``: no company-wide charges)."""

    own: tuple[list[str], list[str | int]]
    company: tuple[list[str], list[str | int]] | None


def _parse_fused(
    prepared: _Prepared, record_key: str, reply: Sequence[Any]
) -> tuple[_StepReply, _StepReply | None, bool]:
    """One item of reserve_fused.lua's reply (see its header). An item's own failure (a
    damaged key, a script error) is this request's alone: StoreDataError naming the key
    (or StoreUnavailable, were it an outage code)."""
    if reply[0] == "err":
        exc = ResponseError(str(reply[1]))
        if _is_outage(exc):
            raise StoreUnavailable(f"redis reserve failed: {exc}")
        raise _data_error("reserve", record_key, exc)
    if reply[0] != "ok":
        raise ValueError(f"unknown item status {reply[0]!r}")
    _, own_reply, company_reply, compensation = reply
    own = _StepReply.parse(prepared.own, own_reply)
    company = _StepReply.parse(prepared.company, company_reply) if company_reply else None
    if compensation:
        _SettleReply.parse(prepared.command.subject, compensation)  # checked: it must parse
    return own, company, bool(compensation)


@dataclass(frozen=True, slots=True)
class _SettleReply:
    """What ``settle.lua`` answered for one scope (see its header)."""

    outcome: Outcome
    state: State | None
    has_global: bool
    values: dict[CounterRef, CounterValue]
    windows: tuple[SettledCounter, ...]

    @classmethod
    def parse(cls, scope: str, reply: Sequence[Any]) -> _SettleReply:
        outcome, state, has_global, layout, flat = reply
        refs = protocol.parse_layout(scope, str(layout))
        if len(flat) != 5 * len(refs):
            raise ValueError(f"{len(flat)} fields for {len(refs)} counters")
        values: dict[CounterRef, CounterValue] = {}
        windows: list[SettledCounter] = []
        for i, ref in enumerate(refs):
            used, held, used_delta, held_delta, exists = flat[5 * i : 5 * i + 5]
            values[ref] = CounterValue(int(used), int(held))
            windows.append(SettledCounter(ref, int(used_delta), int(held_delta), lost=exists != YES))
        settled = Outcome(outcome) is Outcome.SETTLED
        return cls(
            outcome=Outcome(outcome),
            state=State(state) if state else None,
            has_global=has_global == YES,
            values=values,
            windows=tuple(windows) if settled else (),
        )


def _check_amounts(what: str, amounts: Mapping[str, int]) -> None:
    for metric, units in amounts.items():
        validate_metric_name(metric)
        check_units(f"{what} {metric}", units)


def _seconds_ceil(ms: int) -> int:
    return -(-ms // 1000)


def _override_field(metric: str, window: Window) -> str:
    return f"{metric}:{window.value}"


def _config_from(subject: str, now_s: int, reply: Sequence[Any]) -> SubjectConfig:
    """A config as config_get.lua (or a STALE_CONFIG answer) returns it: the live overrides
    (``expires_at`` 0 or later than ``now_s``), sorted."""
    tier, has_tier, version, flat = reply
    overrides = [_override_from(subject, flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
    live = [o for o in overrides if o.expires_at == 0 or o.expires_at > now_s]
    live.sort(key=lambda o: (o.metric, WINDOW_ORDER.index(o.window)))
    return SubjectConfig(tier=tier if has_tier == YES else None, overrides=tuple(live), version=str(version))


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


def _state_of(state: State) -> ReservationState:
    if state in (State.DENIED, State.DENIED_GLOBAL):
        return ReservationState.RELEASED
    return ReservationState(state.value)


class RedisCounterStore:
    """Counters, reservations and subject config in Redis (standalone or Cluster).

    Concurrency: each step is one Lua script, so any number of service replicas may call
    any method concurrently; what one script checks, it writes with no other command in
    between. Across the two slots of a reservation (subject, then global) there is no
    atomicity, only compensation: a global denial releases the subject's part.

    ``client`` is a ``redis.asyncio.Redis`` or ``RedisCluster`` created with
    ``decode_responses=True`` (:meth:`from_url` builds one). ``timeout_seconds`` bounds every
    round trip. ``grace_seconds`` (default :data:`GRACE_SECONDS`, 60): how long a request's
    answer and a settled reservation are kept after the reservation's expiry; replays
    within it get the first answer, repeated commits and releases ``already_settled``, a
    late commit of an expired one corrects it. After it, a repeated request_id is decided
    afresh, and a commit or release of the reservation is ``NotFound`` (an expired one
    stays charged at its estimate). ``retention_seconds``: how long a counter outlives its
    window. ``clock`` returns unix seconds; it is used only by the admin methods that take
    no ``now_ms``.
    """

    def __init__(
        self,
        *,
        client: Redis | RedisCluster,
        timeout_seconds: float = 0.25,
        grace_seconds: int = GRACE_SECONDS,
        retention_seconds: int = COUNTER_RETENTION_SECONDS,
        sweep_limit: int = SWEEP_LIMIT,
        clock: Callable[[], float] = time.time,
        outbox_cap: int = OUTBOX_CAP,
        outbox: bool = True,
        wait_replicas: int = 0,
        wait_ms: int = 100,
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
        if outbox_cap < 0:
            raise ValueError("outbox_cap must not be negative")
        self._outbox_cap = outbox_cap
        self._outbox = outbox
        if wait_replicas < 0 or wait_ms < 0:
            raise ValueError("wait_replicas and wait_ms must not be negative")
        if wait_replicas and isinstance(client, RedisCluster):
            raise ValueError(
                "--redis-wait-replicas needs one Redis (a primary with replicas): on Redis Cluster WAIT "
                "would have to run on each slot's primary, which is not supported"
            )
        #: After every money write (reserve, settle, charge), WAIT for this many replicas to
        #: acknowledge it (at most wait_ms); 0: no WAIT.
        self._wait_replicas = wait_replicas
        self._wait_ms = wait_ms
        self._wait_logged = float("-inf")
        self._cluster = isinstance(client, RedisCluster)
        #: Called with the slot tag of every outbox a call may have appended to (the usage
        #: relay's wake-up: it drains that outbox at once rather than at its next poll).
        self.on_outbox: Callable[[str], None] = _ignore_tag
        self._scripts: dict[str, AsyncScript] = {
            name: client.register_script(script_source(name)) for name in _SCRIPT_NAMES
        }
        self._global_batches: GroupCommit[tuple[list[str], list[str | int]], Any] = GroupCommit(
            self._run_global_batch, max_batch=GLOBAL_BATCH
        )
        # On one Redis, a whole reservation (both steps) is one item of a group-committed
        # reserve_fused.lua call; a cluster's slots live on several nodes: two steps there.
        self._fused_batches: GroupCommit[_FusedItem, Any] | None = (
            None if isinstance(client, RedisCluster) else GroupCommit(self._run_fused_batch, max_batch=FUSED_BATCH)
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout_seconds: float = 0.25,
        grace_seconds: int = GRACE_SECONDS,
        max_connections: int = 256,
        clock: Callable[[], float] = time.time,
        outbox: bool = True,
        wait_replicas: int = 0,
        wait_ms: int = 100,
    ) -> RedisCounterStore:
        """A store for ``url`` (:mod:`quota_service.store.urls` lists the forms); nothing is
        connected until the first call.

        ``redis://``, ``rediss://`` and ``unix://`` use one Redis; ``redis+cluster://h1:p1,h2:p2,...``
        and ``rediss+cluster://`` use Redis Cluster, discovered from any of those seed nodes
        and riding out a master's failover (:class:`~quota_service.store.cluster.FailoverRedisCluster`);
        ``redis+sentinel://s1:p1,s2:p2/name[/db]`` uses the master the Sentinels call ``name``
        (:mod:`quota_service.store.sentinel`).
        ``max_connections`` caps the connection pool (per node on a cluster); on a single
        Redis, a burst beyond it waits for a free connection within the deadline.
        """
        target = parse_redis_url(url)
        socket_options: dict[str, Any] = {
            "decode_responses": True,
            "socket_timeout": timeout_seconds,
            "socket_connect_timeout": timeout_seconds,
            # One immediate retry: a pooled connection may be dead after a Redis restart.
            "retry": Retry(NoBackoff(), 1),
        }
        client: Redis | RedisCluster
        if target.deployment is Deployment.CLUSTER:
            client = FailoverRedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in target.seeds],
                username=target.username,
                password=target.password,
                ssl=target.tls,
                # A master's slots uncovered for a moment fail alone, not the whole topology.
                require_full_coverage=False,
                max_connections=max_connections,
                **socket_options,
            )
        elif target.deployment is Deployment.SINGLE:
            pool = BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=timeout_seconds, **socket_options
            )
            pool.connection_class = packing_in_c(pool.connection_class)
            client = Redis.from_pool(pool)  # the client owns the pool: aclose() closes it
        else:
            client = sentinel_master(
                target.seeds,
                target.service,
                timeout_seconds=timeout_seconds,
                connection_options={
                    **socket_options,
                    "username": target.username,
                    "password": target.password,
                    "db": target.db,
                    "ssl": target.tls,
                    "max_connections": max_connections,
                },
            )
            sentinel_pool = client.connection_pool
            sentinel_pool.connection_class = packing_in_c(sentinel_pool.connection_class)
        return cls(
            client=client,
            timeout_seconds=timeout_seconds,
            grace_seconds=grace_seconds,
            clock=clock,
            outbox=outbox,
            wait_replicas=wait_replicas,
            wait_ms=wait_ms,
        )

    @property
    def client(self) -> Redis | RedisCluster:
        """The ``redis.asyncio`` client (read-only): the admin store shares its connections."""
        return self._client

    @property
    def timeout_seconds(self) -> float:
        """The deadline of one Redis round trip, in seconds."""
        return self._timeout

    @property
    def grace_seconds(self) -> int:
        return self._grace_ms // 1000

    # -- plumbing -------------------------------------------------------------------------

    async def _call(
        self, what: str, call: Callable[[], Awaitable[T]], *, key: str = "", refusal_expected: bool = False
    ) -> T:
        return await bounded_call(what, self._timeout, call, key=key, refusal_expected=refusal_expected)

    async def _script(
        self,
        name: str,
        script_keys: Sequence[str],
        args: Sequence[str | int],
        parse: Callable[[Any], T],
        *,
        request_deadline: bool = True,
    ) -> T:
        """One script call; the reply read by ``parse``. Errors name the script and its first key."""
        script = self._scripts[name]
        first = script_keys[0] if script_keys else ""
        if self._wait_replicas and name in MONEY_SCRIPTS:
            call: Callable[[], Awaitable[Any]] = functools.partial(self._script_and_wait, script, script_keys, args)
        else:
            call = functools.partial(script, keys=list(script_keys), args=list(args))
        reply = await bounded_call(name, self._timeout, call, key=first, request_deadline=request_deadline)
        return parsed(name, first, parse, reply)

    async def _script_and_wait(self, script: AsyncScript, script_keys: Sequence[str], args: Sequence[str | int]) -> Any:
        """The script and a WAIT on the same connection (a pipeline): the reply comes once
        ``wait_replicas`` replicas have the write, or after ``wait_ms`` with fewer (counted
        and logged: the write stands on the primary, only its copy is late)."""
        async with self._client.pipeline(transaction=False) as pipe:
            await script(keys=list(script_keys), args=list(args), client=pipe)  # type: ignore[arg-type]
            pipe.execute_command("WAIT", self._wait_replicas, self._wait_ms)
            reply, acked = await pipe.execute()
        if int(acked) < self._wait_replicas:
            REPLICA_WAIT_SHORT.inc()
            now = time.monotonic()
            if now - self._wait_logged > 10.0:
                self._wait_logged = now
                log.warning(
                    "a money write reached %s of %d replicas within %d ms (--redis-wait-replicas)",
                    acked,
                    self._wait_replicas,
                    self._wait_ms,
                )
        return reply

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- the outbox and the due index ---------------------------------------------------

    @property
    def keeps_boards(self) -> bool:
        """Whether the scripts keep the top spenders' boards (they do where they keep an outbox)."""
        return self._outbox

    @property
    def outbox_cap(self) -> int:
        """A new reservation is refused while its slot's outbox holds this many entries."""
        return self._outbox_cap

    def slot_tag(self, scope: str) -> str:
        """The tag of the outbox and due index ``scope``'s records go to (keys module)."""
        return keys.slot_tag(scope) if self._cluster else keys.SINGLE_TAG

    def slot_tags(self) -> tuple[str, ...]:
        """Every outbox's and due index's tag: one on a single Redis, one per slot on a cluster."""
        return keys.all_slot_tags() if self._cluster else (keys.SINGLE_TAG,)

    def _slot_keys(self, scope: str, other: str) -> tuple[str, str]:
        """The outbox and the due index of ``scope``'s slot. Without an outbox (no ledger):
        ``other``, any other key of the slot, in its place (the scripts then append nothing)."""
        tag = self.slot_tag(scope)
        self.on_outbox(tag)
        return keys.outbox_key(tag) if self._outbox else other, keys.due_key(tag)

    def _outbox_full(self) -> NoReturn:
        raise OutboxFull(
            f"the usage outbox holds {self._outbox_cap:,} records waiting for the ledger (is the ledger store "
            "down?): new reservations are refused until the relay has stored them"
        )

    async def write_back(self, grant: FailOpenGrant) -> None:
        """charge.lua in the subject's scope (with its usage record) and then in the
        company-wide one (counters only), each once."""
        by_scope: dict[str, list[tuple[CounterRef, int]]] = {}
        for ref, units in grant.charges:
            by_scope.setdefault(ref.scope, []).append((ref, units))
        keep_ms = grant.at_ms + 2 * self._grace_ms + 86_400_000  # a retry a day later still charges nothing
        for scope in (grant.subject, GLOBAL_SCOPE):
            charges = by_scope.get(scope, [])
            if scope != grant.subject and not charges:
                continue
            marker = keys.grant_key(scope, grant.name)
            outbox = self._slot_keys(scope, marker)[0] if scope == grant.subject else marker
            script_keys = [marker, outbox, *(keys.counter_key(ref) for ref, _ in charges)]
            args: list[str | int] = [
                keys.tag(scope),
                keep_ms,
                grant.name,
                grant.generation,
                grant.head,
                protocol.amounts_text(grant.estimate),
                grant.at_ms,
            ]
            for ref, units in charges:
                args += [units, ref.resets_at + self._retention_seconds]
            await self._script("charge", script_keys, args, int, request_deadline=False)

    async def outbox_done(self, tag: str, group: str, ids: Sequence[str]) -> int:
        """Acknowledge and delete outbox entries the relay has stored (outbox_done.lua); how
        many entries the outbox holds afterwards."""
        return await self._script("outbox_done", [keys.outbox_key(tag)], [group, *ids], int, request_deadline=False)

    async def reap(self, tag: str, now_ms: int, *, max_scopes: int = REAP_SCOPES) -> tuple[int, int]:
        """Settle at their estimate the reservations of ``tag``'s slot whose TTL has passed
        (reap.lua): how many scopes were swept, and how many are still due."""

        def parse(reply: Sequence[Any]) -> tuple[int, int]:
            swept, still_due = reply
            return int(swept), int(still_due)

        return await self._script(
            "reap",
            [keys.due_key(tag), keys.outbox_key(tag)],
            [now_ms, self._grace_ms, self._sweep_limit, max_scopes],
            parse,
            request_deadline=False,
        )

    # -- reserve ----------------------------------------------------------------------------

    def _prepare(self, command: ReserveCommand) -> _Prepared:
        """Validates ``command`` and derives everything the steps need, once."""
        check_subject(command.subject)
        if command.ttl_seconds <= 0:
            raise InvalidRequest(f"ttl_seconds must be positive, got {command.ttl_seconds}")
        own = _Scope.of(command.subject, command.subject_charges, self._retention_seconds)
        company = _Scope.of(GLOBAL_SCOPE, command.global_charges, self._retention_seconds)
        _check_amounts("estimate", command.estimate)
        name = keys.for_request(command.reservation_id, command.request_id)
        if name.subject != command.subject:
            # commit finds a reservation through the subject its id names
            raise InvalidRequest(f"reservation id {command.reservation_id!r} was not made for this subject")
        plan, plan_digest = _named_plan(
            tuple(command.estimate), tuple(command.rates.items()), tuple(command.meta.items()), command.answer
        )
        layout = f"{plan_digest}\n{own.layout}\n{company.layout}"  # protocol.layout_text
        return _Prepared(
            command=command,
            name=name,
            own=own,
            company=company,
            expires_ms=command.now_ms + command.ttl_seconds * 1000,
            plan=plan,
            plan_digest=plan_digest,
            layout=layout,
            layout_digest=_digest(layout),
            estimate=protocol.amounts_text(command.estimate),
            head=protocol.head_text(command),
        )

    def _step_call(
        self, step: Step, prepared: _Prepared, scope: _Scope, *, name: str, generation: str, expires_ms: int
    ) -> tuple[list[str], list[str | int]]:
        """KEYS and ARGV of one reserve.lua call (see its header)."""
        command = prepared.command
        record = keys.record_key(scope.scope, name)
        subject_step = step is Step.SUBJECT
        checks_config = step in (Step.SUBJECT, Step.DRY_RUN) and scope is prepared.own
        # A subject record answers its request_id; a company-wide one always records its values.
        request = bool(command.request_id) if subject_step else step is not Step.DRY_RUN
        script_keys = [
            record,
            keys.open_set_key(scope.scope),
            keys.config_key(scope.scope),
            # Only the subject step touches the shared texts; other steps name any key of the slot.
            keys.plan_key(scope.scope, prepared.plan_digest) if subject_step else record,
            keys.layout_key(scope.scope, prepared.layout_digest) if subject_step else record,
            # read for a STALE_CONFIG answer, by the steps that check the config version
            keys.overrides_key(scope.scope) if checks_config else record,
            *self._slot_keys(scope.scope, record),
            *scope.counter_keys,
        ]
        args: list[str | int] = [
            step.value,
            keys.tag(scope.scope),
            command.now_ms,
            name,
            generation,
            expires_ms,
            self._grace_ms,
            self._sweep_limit,
            YES if request else NO,
            YES if (subject_step and prepared.company.refs) else NO,
            (command.config_version or "") if checks_config else "",
            prepared.plan if subject_step else "",
            prepared.layout if subject_step else protocol.layout_text("", scope.refs, ()),
            prepared.estimate if subject_step else "",
            prepared.head if subject_step else "",
            command.lines[0 if scope is prepared.own else 1] if step is not Step.DRY_RUN else "",
            self._outbox_cap,
            *scope.charge_args,
        ]
        return script_keys, args

    async def _step(
        self, step: Step, prepared: _Prepared, scope: _Scope, *, name: str, generation: str, expires_ms: int
    ) -> _StepReply:
        """One reserve.lua call on its own."""
        script_keys, args = self._step_call(
            step, prepared, scope, name=name, generation=generation, expires_ms=expires_ms
        )
        return await self._script("reserve", script_keys, args, functools.partial(_StepReply.parse, scope))

    async def _global_step(self, step: Step, prepared: _Prepared, nonce: str, expires_ms: int) -> _StepReply:
        """One company-wide step, group-committed with the others in flight (reserve_batch.lua).
        Waits no longer than this request's budget; the batch itself runs on its own timeout."""
        scope = prepared.company
        call = self._step_call(step, prepared, scope, name=nonce, generation="", expires_ms=expires_ms)
        budget = deadline.budget(self._timeout)
        if budget <= 0:
            raise StoreUnavailable("request deadline passed")
        try:
            async with asyncio.timeout(budget):
                reply = await self._global_batches.submit(call)
        except TimeoutError as exc:
            raise StoreUnavailable(f"redis reserve (global): no answer within {budget:g}s") from exc
        return parsed("reserve", call[0][0], functools.partial(_StepReply.parse, scope), reply)

    async def _run_global_batch(self, batch: Sequence[tuple[list[str], list[str | int]]]) -> Sequence[Any]:
        def as_list(reply: Any) -> list[Any]:
            return list(reply)

        if len(batch) == 1:
            script_keys, args = batch[0]
            return [await self._script("reserve", script_keys, args, lambda r: r, request_deadline=False)]
        all_keys: list[str] = []
        counts: list[str | int] = [len(batch)]
        all_args: list[str | int] = []
        for script_keys, args in batch:
            all_keys += script_keys
            all_args += args
            counts += [len(script_keys), len(args)]
        return await self._script("reserve_batch", all_keys, counts + all_args, as_list, request_deadline=False)

    async def _fused_step(self, prepared: _Prepared) -> tuple[_StepReply, _StepReply | None, bool]:
        """Both steps of a new reservation in one item of a group-committed
        reserve_fused.lua call: the subject's reply, the company-wide one (``None`` when it
        did not run: no company-wide charges, the subject step did not reserve, or it was a
        replay), and whether a global denial was compensated in the same step."""
        assert self._fused_batches is not None
        name = prepared.name
        own = self._step_call(
            Step.SUBJECT,
            prepared,
            prepared.own,
            name=name.name,
            generation=name.generation,
            expires_ms=prepared.expires_ms,
        )
        company = (
            self._step_call(
                Step.GLOBAL, prepared, prepared.company, name=name.nonce, generation="", expires_ms=prepared.expires_ms
            )
            if prepared.company.refs
            else None
        )
        record_key = own[0][0]
        if deadline.budget(self._timeout) <= 0:
            raise StoreUnavailable("request deadline passed")
        # submit() waits no longer than the request's deadline; the batch call itself is
        # bounded by the store's timeout.
        reply = await self._fused_batches.submit(_FusedItem(own, company))
        return parsed("reserve", record_key, functools.partial(_parse_fused, prepared, record_key), reply)

    async def _run_fused_batch(self, batch: Sequence[_FusedItem]) -> Sequence[Any]:
        all_keys: list[str] = []
        counts: list[str | int] = [len(batch)]
        all_args: list[str | int] = []
        for item in batch:
            own_keys, own_args = item.own
            company_keys, company_args = item.company or ((), ())
            all_keys += own_keys
            all_keys += company_keys
            all_args += own_args
            all_args += company_args
            counts += [len(own_keys), len(own_args), len(company_keys), len(company_args)]
        return await self._script("reserve_fused", all_keys, counts + all_args, list, request_deadline=False)

    async def reserve(self, command: ReserveCommand) -> ReserveResult:
        """Check and hold every charge of ``command``: the subject's in one atomic step, then
        the global ones in another (released again from the subject if the global step denies).

        ``reservation_id`` of the result is ``""`` unless the status is ``RESERVED``;
        ``expires_at`` (unix seconds, rounded up) likewise. A dry run neither reads nor
        records the ``request_id``'s answer. A replay returns the first answer (status, id,
        expiry, values, ``answer``, estimate and rates as recorded), never re-judged: its company-wide step
        only completes a reservation whose first company-wide step never happened (the
        service died in between), and a global denial then gives the subject's part back
        only while that part is still open. If the global step fails with
        ``StoreUnavailable`` after the subject step reserved, the subject's part stays open:
        it is settled at its estimate when it expires, or corrected by a later ``commit``.
        """
        prepared = self._prepare(command)
        if command.dry_run:
            return await self._dry_run(prepared)
        fused: _StepReply | None = None
        compensated = False
        if self._fused_batches is not None:
            first, fused, compensated = await self._fused_step(prepared)
        else:
            first = await self._step(
                Step.SUBJECT,
                prepared,
                prepared.own,
                name=prepared.name.name,
                generation=prepared.name.generation,
                expires_ms=prepared.expires_ms,
            )
        if first.status is Status.STALE_CONFIG:
            return self._stale(prepared, first)
        if first.status is Status.BACKLOG:
            self._outbox_full()
        if first.status is Status.DUPLICATE:
            raise InvalidRequest(f"reservation id {command.reservation_id!r} is already in use")
        if not first.replayed:  # the common case, read straight off the replies
            if first.status is Status.DENIED:
                return ReserveResult(ReserveStatus.DENIED, "", first.values)
            if first.status is Status.RESERVED and (fused is not None or not prepared.company.refs):
                expires_at = _seconds_ceil(first.expires_ms)
                if fused is None:
                    return ReserveResult(ReserveStatus.RESERVED, prepared.name.reservation_id, first.values, expires_at)
                both = {**first.values, **fused.values}
                if fused.status is Status.RESERVED:
                    return ReserveResult(ReserveStatus.RESERVED, prepared.name.reservation_id, both, expires_at)
                if fused.status is Status.DENIED and compensated:
                    return ReserveResult(ReserveStatus.DENIED_GLOBAL, "", both)
                # anything else: the general path below names what is wrong
        values: dict[CounterRef, CounterValue] = dict(first.values)
        record_key = keys.record_key(command.subject, prepared.name.name)
        recorded = parsed("reserve", record_key, _StepReply.recorded_values, first)
        answer = parsed("reserve", record_key, _StepReply.answer, first) if first.replayed else ""
        estimate = parsed("reserve", record_key, _StepReply.recorded_estimate, first) if first.replayed else {}
        rates = parsed("reserve", record_key, _StepReply.recorded_rates, first) if first.replayed else {}
        recorded_kw: dict[str, Any] = {"answer": answer, "recorded_estimate": estimate, "recorded_rates": rates}
        values.update({ref: recorded[keys.counter_key(ref)] for ref in values if keys.counter_key(ref) in recorded})
        name = dataclasses.replace(prepared.name, generation=first.generation)

        if first.status is Status.DENIED:
            return ReserveResult(ReserveStatus.DENIED, "", values, replayed=first.replayed, **recorded_kw)
        if first.status is Status.DENIED_GLOBAL:  # only a replay answers it
            values.update(await self._recorded_or_current(prepared.company.refs, recorded, command.now_ms))
            return ReserveResult(ReserveStatus.DENIED_GLOBAL, "", values, replayed=True, **recorded_kw)
        if first.status is not Status.RESERVED:
            raise StoreDataError(f"reserve.lua answered an unexpected status {first.status!r}", key=record_key)

        reserved = ReserveResult(
            ReserveStatus.RESERVED,
            name.reservation_id,
            values,
            _seconds_ceil(first.expires_ms),
            first.replayed,
            **recorded_kw,
        )
        if not prepared.company.refs:
            return reserved
        if first.replayed:
            return await self._replay_global(prepared, first, name, reserved)

        company = fused or await self._global_step(Step.GLOBAL, prepared, name.nonce, first.expires_ms)
        values = {**values, **company.values}
        if company.status is Status.RESERVED:
            return dataclasses.replace(reserved, values=values)
        if company.status is not Status.DENIED:
            raise StoreDataError(
                f"reserve.lua (global) answered an unexpected status {company.status!r}",
                key=keys.record_key(GLOBAL_SCOPE, name.nonce),
            )
        if not compensated:
            await self._compensate(name, company, command.now_ms)
        return ReserveResult(ReserveStatus.DENIED_GLOBAL, "", values)

    async def _replay_global(
        self, prepared: _Prepared, first: _StepReply, name: keys.ReservationName, reserved: ReserveResult
    ) -> ReserveResult:
        """The company-wide part of a replayed reservation: its recorded values; or, if its
        first company-wide step never happened and the subject's part is still unsettled,
        that step now (a denial gives the subject's part back, a hold made after the subject's
        part was settled meanwhile is given back at once). A reservation first made without a
        company-wide part never gets one (the company-wide counters are reported as they are)."""
        values = dict(reserved.values)
        now_ms = prepared.command.now_ms
        if first.has_global and first.state is State.OPEN:
            company = await self._global_step(Step.GLOBAL, prepared, name.nonce, first.expires_ms)
            values.update(company.values)
            if company.replayed:
                values.update(company.recorded_by_ref())
            elif company.status is Status.RESERVED:
                confirmed = await self._settle_step(
                    prepared.command.subject, name.name, name.generation, Settle.CONFIRM, now_ms
                )
                if confirmed.outcome is not Outcome.OPEN:
                    await self._settle_step(GLOBAL_SCOPE, name.nonce, "", Settle.RELEASE, now_ms, keep=False)
            elif company.status is Status.DENIED:
                compensated = await self._compensate(name, company, now_ms)
                if compensated.outcome is Outcome.SETTLED:
                    return dataclasses.replace(
                        reserved, status=ReserveStatus.DENIED_GLOBAL, reservation_id="", values=values, expires_at=0
                    )
        else:
            company = await self._global_step(Step.GLOBAL_REPLAY, prepared, name.nonce, first.expires_ms)
            values.update(company.values)
            if company.replayed:
                values.update(company.recorded_by_ref())
        return dataclasses.replace(reserved, values=values)

    async def _compensate(self, name: keys.ReservationName, company: _StepReply, now_ms: int) -> _SettleReply:
        """Gives the subject's part back after a global denial; the record answers
        ``DENIED_GLOBAL`` to replays, with the values both steps saw."""
        global_values = protocol.values_text(list(company.values.values()))
        return await self._settle_step(
            name.subject, name.name, name.generation, Settle.COMPENSATE, now_ms, global_values=global_values
        )

    def _stale(self, prepared: _Prepared, reply: _StepReply) -> ReserveResult:
        """STALE_CONFIG, with the config the script read in the same step (when it did)."""
        subject = prepared.command.subject
        config = (
            parsed(
                "reserve",
                keys.config_key(subject),
                functools.partial(_config_from, subject, prepared.command.now_ms // 1000),
                reply.config,
            )
            if reply.config is not None
            else None
        )
        return ReserveResult(ReserveStatus.STALE_CONFIG, "", reply.values, config=config)

    async def _recorded_or_current(
        self, refs: Sequence[CounterRef], recorded: Mapping[str, CounterValue], now_ms: int
    ) -> dict[CounterRef, CounterValue]:
        found = {ref: recorded[keys.counter_key(ref)] for ref in refs if keys.counter_key(ref) in recorded}
        missing = tuple(ref for ref in refs if ref not in found)
        if missing:
            found.update(await self.usage(missing, now_ms))
        return found

    async def _dry_run(self, prepared: _Prepared) -> ReserveResult:
        """Evaluate the gates of both scopes; nothing is held or recorded."""
        checked = await self._step(
            Step.DRY_RUN, prepared, prepared.own, name="", generation="", expires_ms=prepared.expires_ms
        )
        values = dict(checked.values)
        if checked.status is Status.STALE_CONFIG:  # its plan rests on a stale config
            return self._stale(prepared, checked)
        if prepared.company.refs:
            company = await self._step(
                Step.DRY_RUN, prepared, prepared.company, name="", generation="", expires_ms=prepared.expires_ms
            )
            values.update(company.values)
        return ReserveResult(ReserveStatus.CHECKED, "", values)

    # -- settle ---------------------------------------------------------------------------

    async def _settle_step(
        self,
        scope: str,
        name: str,
        generation: str,
        mode: Settle,
        now_ms: int,
        *,
        actual: Mapping[str, int] | None = None,
        keep: bool = True,
        global_values: str = "",
    ) -> _SettleReply:
        record = keys.record_key(scope, name)
        script_keys = [record, keys.open_set_key(scope), self._slot_keys(scope, record)[0]]
        args: list[str | int] = [
            mode.value,
            keys.tag(scope),
            now_ms,
            name,
            generation,
            self._grace_ms,
            YES if keep else NO,
            global_values,
        ]
        for metric, units in sorted((actual or {}).items()):
            args += [metric, units]
        return await self._script("settle", script_keys, args, functools.partial(_SettleReply.parse, scope))

    async def _settle(self, reservation_id: str, mode: Settle, actual: Mapping[str, int], now_ms: int) -> SettleResult:
        name = keys.parse(reservation_id)
        part = await self._settle_step(name.subject, name.name, name.generation, mode, now_ms, actual=actual)
        if part.outcome is Outcome.MISSING:
            raise NotFound(f"reservation {reservation_id!r} not found (unknown, or settled and forgotten)")
        values = dict(part.values)
        windows = list(part.windows)
        if part.has_global:
            # Settled independently of the subject's part (and idempotently), so a retry after
            # a failure in between still settles the global part.
            company = await self._settle_step(GLOBAL_SCOPE, name.nonce, "", mode, now_ms, actual=actual, keep=False)
            values.update(company.values)
            windows += company.windows
        return SettleResult(
            already_settled=part.outcome is Outcome.ALREADY_SETTLED, values=values, windows=tuple(windows)
        )

    async def withdraw(self, reservation_id: str, request_id: str, now_ms: int) -> bool:
        """Give back a reservation whose caller was answered DENY (the store failed midway)
        and forget its ``request_id``, so a repeat of the request is decided afresh.
        ``reservation_id`` is the one the reserve command carried (the store derives the
        reservation's from it and ``request_id`` as ``reserve`` did). Returns ``False`` (and
        changes nothing) when a replay of the request has handed the reservation out since,
        when it belongs to another command (a replay's), or is unknown or already settled."""
        name = keys.for_request(reservation_id, request_id)
        part = await self._settle_step(name.subject, name.name, name.generation, Settle.WITHDRAW, now_ms)
        if part.outcome is not Outcome.SETTLED:
            return False
        if part.has_global:
            await self._settle_step(GLOBAL_SCOPE, name.nonce, "", Settle.RELEASE, now_ms, keep=False)
        return True

    async def commit(self, reservation_id: str, actual: Mapping[str, int], now_ms: int) -> SettleResult:
        """Settle with ``actual`` units per metric (a metric left out counts 0; a metric the
        reservation holds no counter for, e.g. tokens on a tier capped only in dollars, is
        ignored by the counters). Every counter of the reservation on that metric (each
        window, subject and global) gets the same actual amount.

        Open: ``used += actual``, ``held -= ask``; expired (already charged its estimate):
        ``used += actual - ask``. ``used`` may pass the cap: an overshoot is recorded, never
        lost. A counter past its retention is reported ``lost`` in ``windows``. Committed or
        released before: nothing changes, ``already_settled``. Raises :class:`NotFound` for an
        unknown (or forgotten, after the grace period) reservation."""
        _check_amounts("actual", actual)
        return await self._settle(reservation_id, Settle.COMMIT, actual, now_ms)

    async def release(self, reservation_id: str, now_ms: int) -> SettleResult:
        """The call did not happen: give the estimate back (from ``held`` when open, from
        ``used`` when it had expired). Settled before: nothing changes, ``already_settled``.
        Raises :class:`NotFound` for an unknown reservation."""
        return await self._settle(reservation_id, Settle.RELEASE, {}, now_ms)

    # -- reads ----------------------------------------------------------------------------

    async def _read_record(self, scope: str, name: str) -> tuple[str, Any, protocol.Plan]:
        def parse(reply: Sequence[Any]) -> tuple[str, Any, protocol.Plan]:
            form, content, plan = reply
            return str(form), content, protocol.Plan.parse(plan) if plan else protocol.EMPTY_PLAN

        return await self._script("record", [keys.record_key(scope, name)], [keys.tag(scope)], parse)

    async def get_reservation(self, reservation_id: str) -> Reservation | None:
        """The reservation's record, or ``None`` when unknown (or another generation's).
        ``asks`` covers the subject's and the global part; ``state`` is as stored (an open
        reservation past its expiry is reported ``OPEN`` until something settles it).
        Raises :class:`InvalidRequest` for an id that is not one of ours."""
        name = keys.parse(reservation_id)
        record_key = keys.record_key(name.subject, name.name)
        form, content, plan = await self._read_record(name.subject, name.name)
        if form == "none":
            return None
        if form == "string":
            tomb = parsed("record", record_key, protocol.TombstoneRecord.parse, str(content))
            if tomb.generation != name.generation or tomb.state is State.DENIED:
                return None
            return Reservation(
                reservation_id=reservation_id,
                subject=name.subject,
                state=_state_of(tomb.state),
                asks={},
                estimate=parsed("record", record_key, plan.estimate, tomb.estimate),
                rates=plan.rates,
                meta=plan.meta,
                created_at_ms=0,
                expires_at=tomb.expires_at,
            )
        fields = {str(content[i]): str(content[i + 1]) for i in range(0, len(content), 2)}
        record = parsed("record", record_key, protocol.OpenRecord.parse, fields)
        if record.generation != name.generation:
            return None
        refs = parsed("record", record_key, functools.partial(protocol.parse_layout, name.subject), record.layout)
        asks: dict[str, int] = {}
        for ref, ask in zip(refs, record.asks, strict=True):
            asks[ref.metric] = max(asks.get(ref.metric, 0), ask)
        if record.has_global:
            company_form, company, _ = await self._read_record(GLOBAL_SCOPE, name.nonce)
            if company_form == "hash":
                company_key = keys.record_key(GLOBAL_SCOPE, name.nonce)
                company_fields = {str(company[i]): str(company[i + 1]) for i in range(0, len(company), 2)}
                part = parsed("record", company_key, protocol.OpenRecord.parse, company_fields)
                company_refs = parsed(
                    "record", company_key, functools.partial(protocol.parse_layout, GLOBAL_SCOPE), part.layout
                )
                for ref, ask in zip(company_refs, part.asks, strict=True):
                    asks[ref.metric] = max(asks.get(ref.metric, 0), ask)
        return Reservation(
            reservation_id=reservation_id,
            subject=name.subject,
            state=_state_of(record.state),
            asks=asks,
            estimate=record.estimate,
            rates=plan.rates,
            meta=plan.meta,
            created_at_ms=record.created_ms,
            expires_at=_seconds_ceil(record.expires_ms),
        )

    async def usage(self, counters: tuple[CounterRef, ...], now_ms: int) -> Mapping[CounterRef, CounterValue]:
        """Current values (absent counters read ``0``), after settling up to ``sweep_limit``
        expired reservations of every scope involved: one atomic step per scope."""
        by_scope: dict[str, list[CounterRef]] = {}
        for ref in dict.fromkeys(counters):
            by_scope.setdefault(ref.scope, []).append(ref)
        values: dict[CounterRef, CounterValue] = {}
        for scope, refs in by_scope.items():
            prepared = _Scope(scope, tuple(refs), tuple(keys.counter_key(ref) for ref in refs), (), "")
            open_set = keys.open_set_key(scope)
            script_keys = [open_set, self._slot_keys(scope, open_set)[0], *prepared.counter_keys]
            args: list[str | int] = [keys.tag(scope), now_ms, self._grace_ms, self._sweep_limit]
            values.update(await self._script("usage", script_keys, args, prepared.values))
        return values

    async def subject_config(self, subject: str, now_ms: int) -> SubjectConfig:
        """Tier, live overrides (``expires_at`` 0 or later than ``now_ms``) and version, read
        atomically. Expired overrides are deleted on the way (no version change)."""
        check_subject(subject)
        parse = functools.partial(_config_from, subject, now_ms // 1000)
        return await self._script(
            "config_get", [keys.config_key(subject), keys.overrides_key(subject)], [now_ms // 1000], parse
        )

    async def ping(self) -> None:
        client = self._client
        await self._call("ping", lambda: client.ping())

    async def close(self) -> None:
        """Close every connection; the store is not usable afterwards."""
        client = self._client
        await self._call("close", lambda: client.aclose())

    async def check_eviction_policy(self) -> EvictionProblem | None:
        """``None`` when Redis never evicts keys (``maxmemory-policy`` is ``noeviction``, on
        every master of a cluster); otherwise the problem. Eviction would silently drop
        counters (handing spent money back), reservations and stops, so ``serve`` refuses
        to start on it (``refuse``) unless told to accept it. The policy is read with
        ``CONFIG GET`` and, where that is disabled (managed Redis), from ``INFO memory``;
        when neither answers, the problem is a warning (``refuse`` false)."""
        client = self._client
        nodes: list[Any] = [None]
        if isinstance(client, RedisCluster):
            await self._call("cluster discovery", lambda: client.initialize())
            nodes = list(client.get_primaries())
        for node in nodes:
            where = f"{node.host}:{node.port}" if node is not None else "Redis"
            policy, why = await self._eviction_policy(node)
            if policy is None:
                return EvictionProblem(
                    f"could not read maxmemory-policy of {where} ({why}); make sure it is 'noeviction': "
                    "a Redis that evicts keys silently loses counters, reservations and emergency stops",
                    refuse=False,
                )
            if policy != "noeviction":
                return EvictionProblem(
                    f"Redis may evict keys: maxmemory-policy is {policy!r} on {where}; quota-service needs "
                    "'noeviction' (an evicted counter hands spent money back, an evicted reservation or "
                    "stop is silently lost). Set `maxmemory-policy noeviction` (on every master), or start "
                    "with --allow-eviction to accept the risk",
                    refuse=True,
                )
        return None

    async def _eviction_policy(self, node: Any) -> tuple[str | None, str]:
        """The node's maxmemory-policy (CONFIG GET, else INFO memory), or ``None`` and why not."""
        client: Any = self._client
        target: dict[str, Any] = {} if node is None else {"target_nodes": node}
        try:
            config = await self._call(
                "config get", lambda: client.config_get("maxmemory-policy", **target), refusal_expected=True
            )
            if isinstance(config, Mapping) and config.get("maxmemory-policy"):
                return str(config["maxmemory-policy"]), ""
            why = "CONFIG GET answered nothing"
        except (StoreDataError, StoreUnavailable) as exc:
            why = f"CONFIG GET: {exc}"
        try:
            info = await self._call("info", lambda: client.info("memory", **target), refusal_expected=True)
            if isinstance(info, Mapping) and info.get("maxmemory_policy"):
                return str(info["maxmemory_policy"]), ""
            return None, f"{why}; INFO memory has no maxmemory_policy"
        except (StoreDataError, StoreUnavailable) as exc:
            return None, f"{why}; INFO memory: {exc}"

    # -- admin writes ---------------------------------------------------------------------

    async def _config_write(self, subject: str, op: str, name: str = "", value: str = "") -> tuple[str, bool]:
        check_subject(subject)

        def parse(reply: Sequence[Any]) -> tuple[str, bool]:
            previous, changed, _version = reply
            return str(previous), changed == YES

        return await self._script(
            "config_write",
            [keys.config_key(subject), keys.overrides_key(subject)],
            [op, name, value, self._now_ms() // 1000],
            parse,
        )

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
        check_units("override max_units", record.max_units)
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
