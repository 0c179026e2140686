"""The ``CounterStore`` interface, named in domain verbs, and the values it trades in.

The values it trades in (counters, charges, subject configs) are domain types of the core
(:mod:`quota_service.policy.domain`); the types below are the interface's own.

Units everywhere: whole integers (micro-dollars for ``cost_usd``); times in unix
milliseconds (``now_ms``) or seconds where named ``*_at``/``*_seconds``.

Concurrency guarantees every implementation must give:

* ``reserve`` checks every charge of one scope and then writes all of them or none, as
  one atomic step (one Lua script per Redis slot). The subject's charges go first; the
  company-wide (global) charges second, in their own slot; if the global step denies, the
  subject's part is released before ``reserve`` returns (compensation).
* A repeated ``request_id`` (within the reservation's lifetime plus the store's grace
  period) returns the first outcome, marked ``replayed``, with the values, the ``answer``
  text, the estimate and the rates recorded then, and counts nothing again: it is never re-judged, and never
  changes, settles or releases the reservation. After that it is decided afresh.
* ``commit`` and ``release`` of a settled reservation change nothing and say so.
* A reservation neither committed nor released by ``expires_at`` is settled at its
  estimate (held -> used) the next time any of the subject's (or the global) counters is
  touched, or by the reaper (``reap``) within about a second; a later ``commit`` corrects it
  to the actual usage, a later ``release`` refunds.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from quota_service.errors import InvalidRequest, shown
from quota_service.policy.compiled import LimitKind
from quota_service.policy.domain import GLOBAL_SCOPE, CounterCharge, CounterRef, CounterValue, SubjectConfig
from quota_service.policy.engine import CounterPlan, PlannedCharges
from quota_service.policy.units import MAX_UNITS, validate_metric_name
from quota_service.policy.windows import Window


@dataclass(frozen=True, slots=True)
class ReserveCommand:
    """Everything ``reserve`` needs.

    ``reservation_id``: the id to base a new reservation's on (made by the server, see
    :func:`quota_service.store.keys.new_reservation_id`); with a ``request_id`` the store
    names the reservation's record after (subject, request_id) and keeps only the id's
    random generation (:func:`quota_service.store.keys.for_request`), so the id in the
    result may differ from this one; a replay returns the first reservation's id.
    ``config_version``: the subject's config version the plan was built from, or ``None``
    to skip the check; when Redis holds another version, nothing is written and the result
    is ``stale_config``. ``estimate``: the request's usage per metric (units, counted or only
    priced); ``rates``: USD per unit (exact decimal strings) of each priced metric, at which a
    Commit is priced; both are kept with the reservation. ``meta``: descriptive strings kept
    with it (feature, provider, model, tier).
    """

    subject: str
    reservation_id: str
    request_id: str
    subject_charges: tuple[CounterCharge, ...]
    global_charges: tuple[CounterCharge, ...]
    now_ms: int
    ttl_seconds: int
    config_version: str | None = None
    estimate: Mapping[str, int] = field(default_factory=dict)
    rates: Mapping[str, str] = field(default_factory=dict)
    meta: Mapping[str, str] = field(default_factory=dict)
    dry_run: bool = False
    #: The policy version the plan was made under (copied into the request's usage records).
    policy_version: str = ""
    #: The estimate's cost in micro-dollars at ``rates`` (what an EXPIRED record charges).
    estimate_cost: int = 0
    #: The threshold lines of the subject's counters and of the company-wide ones, as
    #: :func:`threshold_lines` encodes them ("" for none): the store reports each line once
    #: per window when a request reaches it (a THRESHOLD_CROSSED event) and records whether
    #: the request reached a warn line (its decision, WARN, in its usage records).
    lines: tuple[str, str] = ("", "")
    #: Opaque text the store keeps with the request_id's recorded answer and hands back,
    #: unchanged, on every replay (the core encodes the plan's limits in it, so a replay is
    #: answered from the first decision, never re-judged under a later policy or config).
    #: The store keeps one copy per subject and distinct text (content-addressed), so it
    #: should hold what many requests share (the plan), not per-request values: those come
    #: back in ``ReserveResult.values``, ``recorded_estimate`` and ``recorded_rates``.
    answer: str = ""


#: A line's threshold letter and a limit kind's, in a threshold line's label.
_THRESHOLD_LETTER = {"warn": "w", "block": "b", "cap": "c"}
_KIND_LETTER = {LimitKind.TIER: "t", LimitKind.OVERRIDE: "o", LimitKind.HARD_STOP: "h", LimitKind.GLOBAL: "g"}
THRESHOLD_OF_LETTER: Final = {letter: name for name, letter in _THRESHOLD_LETTER.items()}
KIND_OF_LETTER: Final = {letter: kind for kind, letter in _KIND_LETTER.items()}


def threshold_lines(counters: Sequence[CounterPlan]) -> str:
    """The lines of every limit on ``counters`` (one scope's, in the order of its charges):
    ``<i>:<units>:<threshold><kind>:<cap>`` joined by spaces, ``i`` the counter's index from
    1, threshold ``w``/``b``/``c`` (warn line, block line, cap), kind the limit's
    (``t`` tier, ``o`` override, ``h`` hard stop, ``g`` global), cap the limit's cap in units.
    Limits without thresholds (hard stops, global caps) have only their cap line."""
    parts: list[str] = []
    for i, counter in enumerate(counters, start=1):
        for limit in counter.limits:
            kind = _KIND_LETTER[limit.kind]
            cap = limit.max_units
            if limit.thresholds is not None:
                warn = limit.warn_units
                if warn is not None:
                    parts.append(f"{i}:{warn}:w{kind}:{cap}")
                parts.append(f"{i}:{limit.block_units}:b{kind}:{cap}")
            parts.append(f"{i}:{cap}:c{kind}:{cap}")
    return " ".join(parts)


class ReserveStatus(enum.Enum):
    RESERVED = "reserved"  # every charge held
    DENIED = "denied"  # the subject's gate refused: nothing held
    DENIED_GLOBAL = "denied_global"  # the global gate refused: the subject's part was given back
    CHECKED = "checked"  # dry run: gates evaluated, nothing held
    STALE_CONFIG = "stale_config"  # config_version mismatch: nothing evaluated, nothing held


@dataclass(frozen=True, slots=True)
class ReserveResult:
    """``values`` maps every counter of the command to its value *before* this
    reservation. For a replay: the values recorded when it was first decided; current
    values for a counter the first decision did not involve, and for the company-wide
    counters of a reservation committed or released since (its company-wide part is
    forgotten at settlement). A dry run reports ``CHECKED`` whatever the gates say; the
    engine decides."""

    status: ReserveStatus
    reservation_id: str
    values: Mapping[CounterRef, CounterValue]
    expires_at: int = 0
    replayed: bool = False
    #: On a replay: the ``answer`` of the command that was first decided ("" otherwise).
    answer: str = ""
    #: On a replay: the ``estimate`` of the command that was first decided (units per
    #: metric, as its record keeps it, also once settled or denied); empty otherwise.
    recorded_estimate: Mapping[str, int] = field(default_factory=dict)
    #: On a replay: the ``rates`` of the command that was first decided (exact decimal
    #: strings); empty otherwise. With ``recorded_estimate`` they give every ask of the
    #: first decision again (the ``answer`` holds only what many requests share).
    recorded_rates: Mapping[str, str] = field(default_factory=dict)
    #: On STALE_CONFIG: the subject's config as the store read it in the same step (the
    #: caller plans again on it without reading it itself), or ``None`` if it did not.
    config: SubjectConfig | None = None


class ReservationState(enum.Enum):
    OPEN = "open"
    COMMITTED = "committed"
    RELEASED = "released"
    EXPIRED = "expired"  # settled at its estimate; a late commit/release still corrects it


@dataclass(frozen=True, slots=True)
class Reservation:
    """A reservation's record. Once committed or released only what repeated settlements
    and replays read is kept: ``asks`` is then empty (nothing is held) and
    ``created_at_ms`` 0; ``estimate``, ``rates``, ``meta`` and ``expires_at`` stay."""

    reservation_id: str
    subject: str
    state: ReservationState
    asks: Mapping[str, int]  # per counted metric, the amount held on its counters
    estimate: Mapping[str, int]  # per metric, the request's estimate (counted or only priced)
    rates: Mapping[str, str]  # USD per unit of each priced metric (exact decimal strings)
    meta: Mapping[str, str]
    created_at_ms: int
    expires_at: int


@dataclass(frozen=True, slots=True)
class SettledCounter:
    """What one settlement did to one counter of the reservation (one window).

    ``counter`` names the window the reservation was made in (``window_id``, and
    ``resets_at``: when it ended or ends), which after a rollover is no longer the current
    one. ``used_delta``/``held_delta``: units added to ``used``/``held`` (negative: taken
    off), e.g. a commit of an open reservation adds the actual to ``used`` and takes the
    ask off ``held``; a late commit after expiry adds ``actual - ask`` to ``used``.
    ``lost``: the counter no longer exists (past its retention, or reset): nothing was
    applied to it; the amounts say what would have been."""

    counter: CounterRef
    used_delta: int
    held_delta: int
    lost: bool = False


@dataclass(frozen=True, slots=True)
class SettleResult:
    """``already_settled``: the reservation was committed or released before; nothing changed.
    ``values``: the counters of the reservation after settling (for a repeated settlement:
    the subject's counters now; a company-wide part is forgotten once settled).
    ``windows``: what this settlement applied, per counter (subject and company-wide);
    empty when nothing was applied."""

    already_settled: bool
    values: Mapping[CounterRef, CounterValue]
    windows: tuple[SettledCounter, ...] = ()


@dataclass(frozen=True, slots=True)
class FailOpenGrant:
    """A request granted while the store was unreachable (``on_store_error: allow``, within
    the tier's ``fail_open_allowance``): what :meth:`CounterStore.write_back` charges once the
    store answers again, at the estimate (nobody can commit it: its caller got no
    reservation id). ``name`` and ``generation`` make its (never issued) reservation id, the
    id of its COMMITTED record; ``charges`` the units per counter (subject's and company-wide);
    ``head`` what its record says of the request (``protocol.head_of``)."""

    subject: str
    name: str
    generation: str
    charges: tuple[tuple[CounterRef, int], ...]
    estimate: Mapping[str, int]  # units per metric, cost_usd included
    head: str
    at_ms: int


class CounterStore(Protocol):
    """Counters, reservations and per-subject config. Every method may raise
    :class:`quota_service.errors.StoreUnavailable` (an outage: unreachable, timing out,
    failing over, or the request's deadline passed) or
    :class:`quota_service.errors.StoreDataError` (damaged data, a refused command, out of
    memory: a bug or a lasting condition, never answered by ``on_store_error``); none may
    hang past its deadline."""

    async def reserve(self, command: ReserveCommand) -> ReserveResult: ...

    async def get_reservation(self, reservation_id: str) -> Reservation | None: ...

    async def commit(self, reservation_id: str, actual: Mapping[str, int], now_ms: int) -> SettleResult:
        """Settle with ``actual`` units per metric (a metric left out counts 0).
        Raises :class:`quota_service.errors.NotFound` for an unknown reservation."""
        ...

    async def release(self, reservation_id: str, now_ms: int) -> SettleResult: ...

    async def withdraw(self, reservation_id: str, request_id: str, now_ms: int) -> bool:
        """Release a reservation whose caller was answered DENY and forget ``request_id``,
        unless a replay of the request handed the reservation out since (then ``False``)."""
        ...

    async def usage(self, counters: tuple[CounterRef, ...], now_ms: int) -> Mapping[CounterRef, CounterValue]:
        """Current values (after settling expired reservations of the scopes involved)."""
        ...

    async def subject_config(self, subject: str, now_ms: int) -> SubjectConfig: ...

    async def write_back(self, grant: FailOpenGrant) -> None:
        """Charge a fail-open grant to its counters (and record it), once however often it is
        called: a retry after a lost reply charges nothing more."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


# -- preconditions every store checks (the interface's, so every implementation refuses alike)

#: A brace or a whitespace character (``\s`` matches exactly what ``str.isspace`` accepts).
_UNFIT = re.compile(r"[{}\s]")


def check_subject(subject: str) -> None:
    """A subject fit for a key: not the company-wide scope, no braces (the hash tag),
    whitespace or control characters. :class:`InvalidRequest` otherwise."""
    if not subject or subject == GLOBAL_SCOPE:
        raise InvalidRequest(f"subject {shown(subject)} is not valid")
    if subject.isprintable() and _UNFIT.search(subject) is None:
        return  # the common case, in C: ``\s`` is exactly ``str.isspace`` (a unit test checks)
    if any(ch in "{}" or ch.isspace() or not ch.isprintable() for ch in subject):
        raise InvalidRequest(f"subject {shown(subject)} must not contain braces, whitespace or control characters")


def check_units(what: str, value: int) -> None:
    """A whole number of units in [0, 2**53)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_UNITS:
        raise InvalidRequest(f"{what} must be a whole number of units in [0, 2**53), got {value!r}")


def check_charges(scope: str, charges: Sequence[CounterCharge]) -> None:
    """The charges of one step: all of ``scope``, valid metric names and units, each
    counter charged once. Charges the engine planned (:class:`PlannedCharges`, whose
    names, units and counters it checked when it built them) are checked for their scope
    only."""
    if type(charges) is PlannedCharges:
        for charge in charges:
            _check_scope(scope, charge.counter)
        return
    seen: set[tuple[str, Window, str]] = set()
    for charge in charges:
        ref = charge.counter
        _check_scope(scope, ref)
        validate_metric_name(ref.metric)
        check_units(f"ask for {ref.metric}/{ref.window}", charge.ask)
        check_units(f"cap for {ref.metric}/{ref.window}", charge.cap)
        check_units(f"block for {ref.metric}/{ref.window}", charge.block)
        counter = (ref.metric, ref.window, ref.window_id)
        if counter in seen:
            raise InvalidRequest(
                f"counter {ref.metric}/{ref.window.value}/{ref.window_id} of {ref.scope!r} is charged twice; "
                "merge its limits into one charge"
            )
        seen.add(counter)


def _check_scope(scope: str, ref: CounterRef) -> None:
    if ref.scope != scope:
        raise InvalidRequest(f"charge on {ref.scope!r} counter {ref.metric}/{ref.window} in the {scope!r} step")
