"""What crosses the Python/Lua boundary of :class:`~quota_service.store.redis_store.RedisCounterStore`:
the named constants (mirrored, name for name, in the tables at the top of ``lua/lib.lua``;
``tests/unit/store/test_protocol.py`` checks both sides agree) and the compact encodings of
what Redis keeps (see :mod:`quota_service.store.keys` for the keys themselves).

Encodings (no JSON inside JSON; every amount a decimal integer string, units):

* counter entry ``<metric>:<window>:<window_id>@<resets_at>``: a counter of the record's
  scope; its key is ``q:{S}:`` plus the part before ``@``.
* layout: counter entries joined by one space.
* values: ``used,held`` of each counter of a layout, in its order, joined by ``,``; a
  record's recorded values may add ``;`` and the company-wide counters' (a global denial).
* amounts (an open record's ``estimate``): ``<metric>=<units>`` joined by one space.
* rates: ``<metric>=<USD per unit, exact decimal>`` joined by one space.
* plan text (key ``a:{S}:<digest>``): line 1 the estimated metrics (joined by one space),
  line 2 the rates, line 3 the meta as one JSON object, then the ``answer`` text verbatim
  (it may hold newlines).
* layout text (key ``l:{S}:<digest>``): line 1 the plan text's digest, line 2 the record's
  own layout, line 3 the company-wide layout (empty when none).
* open or expired record (hash ``r:{S}:<name>``): the fields of :class:`Field`.
* tombstone (string ``r:{S}:<name>``, committed, released or denied), about 60 bytes:
  ``<kind>|<generation>|<expires_at>|<layout digest>|<estimate>|<values>``: the kind one
  of :class:`Tombstone`, upper case when the reservation has a company-wide part;
  ``expires_at`` unix seconds; ``estimate`` the units of the plan's estimated metrics, in
  their order, joined by ``,``.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from quota_service.policy.domain import CounterRef, CounterValue
from quota_service.policy.windows import Window
from quota_service.store import keys


class ReserveCommandLike(Protocol):
    """What :func:`head_text` reads of a ``ReserveCommand`` (``store.base`` imports this module)."""

    @property
    def meta(self) -> Mapping[str, str]: ...
    @property
    def policy_version(self) -> str: ...
    @property
    def request_id(self) -> str: ...
    @property
    def estimate_cost(self) -> int: ...


YES: Final = "1"
NO: Final = "0"


class Status(enum.StrEnum):
    """A reserve step's answer (``reserve.lua``)."""

    RESERVED = "reserved"
    DENIED = "denied"
    DENIED_GLOBAL = "denied_global"
    CHECKED = "checked"
    STALE_CONFIG = "stale_config"
    DUPLICATE = "duplicate"  # a new reservation's record name is taken (never with a request_id)
    MISSING = "missing"  # a global replay step found no record and made none
    BACKLOG = "backlog"  # the outbox is full (the ledger has been unreachable): nothing held


class State(enum.StrEnum):
    """A record's state (the ``state`` field, or a tombstone's kind spelled out)."""

    OPEN = "open"
    EXPIRED = "expired"
    COMMITTED = "committed"
    RELEASED = "released"
    DENIED = "denied"
    DENIED_GLOBAL = "denied_global"


class Tombstone(enum.StrEnum):
    """The first field of a tombstone: one character for the state it records (upper case
    when the reservation has a company-wide part)."""

    COMMITTED = "c"
    RELEASED = "r"
    DENIED = "d"
    DENIED_GLOBAL = "g"


TOMBSTONE_STATE: Final = {
    Tombstone.COMMITTED: State.COMMITTED,
    Tombstone.RELEASED: State.RELEASED,
    Tombstone.DENIED: State.DENIED,
    Tombstone.DENIED_GLOBAL: State.DENIED_GLOBAL,
}


class Step(enum.StrEnum):
    """What one ``reserve.lua`` call is (its ARGV[1])."""

    SUBJECT = "subject"  # the subject's step: replay, or config check + gate + hold
    DRY_RUN = "dry_run"  # gate only; no replay lookup, nothing held or recorded
    GLOBAL = "global"  # the company-wide step: replay by reservation, or gate + hold
    GLOBAL_REPLAY = "global_replay"  # a replay's company-wide step: the record's values if it exists; never holds


class Settle(enum.StrEnum):
    """What one ``settle.lua`` call does (its ARGV[1])."""

    COMMIT = "commit"
    RELEASE = "release"
    EXPIRE = "expire"  # only inside the scripts: the sweep settling at the estimate
    WITHDRAW = "withdraw"  # release and forget: the caller was answered DENY after a store failure
    COMPENSATE = "compensate"  # release after a global denial; the record answers denied_global
    CONFIRM = "confirm"  # is the record still open? (after a replay made a company-wide part)


class Outcome(enum.StrEnum):
    """What ``settle.lua`` answers."""

    SETTLED = "settled"
    ALREADY_SETTLED = "already_settled"
    MISSING = "missing"  # no record, or another generation's
    KEPT = "kept"  # withdraw: a replay handed the reservation out since; nothing changed
    OPEN = "open"  # confirm: the record is still open


class Field(enum.StrEnum):
    """The fields of an open or expired record (hash ``r:{S}:<name>``)."""

    STATE = "state"  # open | expired
    GENERATION = "gen"  # the reservation id's generation (16 chars)
    CREATED_MS = "created_ms"  # unix ms
    EXPIRES_MS = "expires_ms"  # unix ms
    LAYOUT = "layout"  # the record's counters (a layout)
    GLOBAL_LAYOUT = "glayout"  # subject records: the company-wide counters of the request
    ASKS = "asks"  # units held on each counter of the layout, joined by ","
    ESTIMATE = "estimate"  # amounts: the request's estimate per metric
    VALUES = "values"  # values before the reservation (only when it answers a request_id)
    PLAN = "plan"  # digest of the plan text (subject records)
    LAYOUT_DIGEST = "ldigest"  # digest of the layout text its tombstone will name
    GLOBAL = "global"  # "1" when a company-wide part exists (or may)
    REPLAYED = "replayed"  # "1" once a replay handed the reservation out
    REQUEST = "request"  # "1" when the record is a request_id's recorded answer
    HEAD = "head"  # the request's head (tier, feature, ...), copied into its usage records
    DECISION = "decision"  # "w" WARN, "a" ALLOW: the reservation's decision (its usage records)


class Entry(enum.StrEnum):
    """The kind of an outbox entry (field ``k``; lua/lib.lua's ENTRY table)."""

    COMMITTED = "com"
    RELEASED = "rel"
    EXPIRED = "exp"
    CORRECTED = "cor"
    DENIED = "den"
    THRESHOLD = "thr"


#: Key kinds, as lua/lib.lua's KEY table names them.
KEY_KINDS: Final = {
    "COUNTER": keys.COUNTER,
    "RECORD": keys.RECORD,
    "OPEN": keys.OPEN,
    "PLAN": keys.PLAN,
    "LAYOUT": keys.LAYOUT,
    "OUTBOX": keys.OUTBOX,
    "DUE": keys.DUE,
    "GRANT": keys.GRANT,
    "BOARD": keys.BOARD,
}


# -- encodings ----------------------------------------------------------------------------


def entry(ref: CounterRef) -> str:
    return f"{keys.counter_name(ref)}@{ref.resets_at}"


def layout(refs: Sequence[CounterRef]) -> str:
    return " ".join(entry(ref) for ref in refs)


def parse_layout(scope: str, text: str) -> list[CounterRef]:
    """The counters of a layout (``ValueError`` when it is not one)."""
    refs = []
    for item in text.split():
        name, at, resets_at = item.rpartition("@")
        metric, window, window_id = name.split(":", 2)
        if not at or not metric or not window_id:
            raise ValueError(f"not a counter entry: {item!r}")
        refs.append(CounterRef(scope, metric, Window(window), window_id, int(resets_at)))
    return refs


def values_text(values: Sequence[CounterValue]) -> str:
    return ",".join(f"{v.used},{v.held}" for v in values)


def parse_values(text: str) -> list[CounterValue]:
    if not text:
        return []
    numbers = [int(n) for n in text.split(",")]
    if len(numbers) % 2:
        raise ValueError(f"values of an odd length: {text!r}")
    return [CounterValue(numbers[i], numbers[i + 1]) for i in range(0, len(numbers), 2)]


def amounts_text(amounts: Mapping[str, int]) -> str:
    return " ".join(f"{metric}={units}" for metric, units in sorted(amounts.items()))


def parse_amounts(text: str) -> dict[str, int]:
    pairs = (item.partition("=") for item in text.split())
    return {metric: int(units) for metric, _, units in pairs}


#: Separates the fields of a record's head.
HEAD_SEPARATOR: Final = "\x1f"
HEAD_FIELDS: Final = ("tier", "feature", "provider", "model", "policy_version", "request_id", "cost")


def head_text(command: ReserveCommandLike) -> str:
    """A request's head (reserve.lua ARGV[15]): what its usage records say about it besides
    the amounts, :data:`HEAD_FIELDS` joined by :data:`HEAD_SEPARATOR` (no field holds it:
    names are validated at the edge and have no control characters)."""
    meta = command.meta
    return head_of(
        meta.get("tier", ""),
        meta.get("feature", ""),
        meta.get("provider", ""),
        meta.get("model", ""),
        command.policy_version,
        command.request_id,
        command.estimate_cost,
    )


def head_of(tier: str, feature: str, provider: str, model: str, policy_version: str, request_id: str, cost: int) -> str:
    """A head from its fields (:data:`HEAD_FIELDS`, in that order)."""
    return HEAD_SEPARATOR.join((tier, feature, provider, model, policy_version, request_id, str(cost)))


def parse_head(text: str) -> dict[str, str]:
    """The fields of a head (missing ones ""), by the names of :data:`HEAD_FIELDS`."""
    parts = text.split(HEAD_SEPARATOR) if text else []
    parts += [""] * (len(HEAD_FIELDS) - len(parts))
    return dict(zip(HEAD_FIELDS, parts[: len(HEAD_FIELDS)], strict=True))


def rates_text(rates: Mapping[str, str]) -> str:
    return " ".join(f"{metric}={rate}" for metric, rate in sorted(rates.items()))


def parse_rates(text: str) -> dict[str, str]:
    pairs = (item.partition("=") for item in text.split())
    return {metric: rate for metric, sep, rate in pairs if sep}


def plan_text(estimated: Sequence[str], rates: Mapping[str, str], meta: Mapping[str, str], answer: str) -> str:
    meta_json = json.dumps(dict(meta), sort_keys=True, separators=(",", ":"))
    return f"{' '.join(sorted(estimated))}\n{rates_text(rates)}\n{meta_json}\n{answer}"


@dataclass(frozen=True, slots=True)
class Plan:
    """The shared part of a record (``a:{S}:<digest>``)."""

    estimated: tuple[str, ...]
    rates: dict[str, str]
    meta: dict[str, str]
    answer: str

    @classmethod
    def parse(cls, text: str) -> Plan:
        """``ValueError`` (or ``TypeError``) when ``text`` is not a plan text."""
        estimated, rates, meta, answer = text.split("\n", 3)
        decoded = json.loads(meta)
        if not isinstance(decoded, dict):
            raise TypeError(f"meta is not an object: {meta!r}")
        return cls(tuple(estimated.split()), parse_rates(rates), {str(k): str(v) for k, v in decoded.items()}, answer)

    def estimate(self, units: str) -> dict[str, int]:
        """A tombstone's estimate (units in the order of ``estimated``) by metric."""
        amounts = [int(u) for u in units.split(",")] if units else []
        return dict(zip(self.estimated, amounts, strict=True))


EMPTY_PLAN: Final = Plan((), {}, {}, "")


def layout_text(plan_digest: str, own: Sequence[CounterRef], company: Sequence[CounterRef]) -> str:
    return f"{plan_digest}\n{layout(own)}\n{layout(company)}"


def parse_layout_text(scope: str, company_scope: str, text: str) -> tuple[list[CounterRef], list[CounterRef]]:
    """A replay's layout (own, then company-wide; the layout text without its first line)."""
    own, _, company = text.partition("\n")
    return parse_layout(scope, own), parse_layout(company_scope, company)


def split_values(text: str) -> tuple[list[CounterValue], list[CounterValue]]:
    """Recorded values: the record's own counters', then the company-wide ones' (if recorded)."""
    own, _, company = text.partition(";")
    return parse_values(own), parse_values(company)


@dataclass(frozen=True, slots=True)
class TombstoneRecord:
    """A committed, released or denied record (string ``r:{S}:<name>``)."""

    state: State
    has_global: bool
    generation: str
    expires_at: int
    layout: str
    estimate: str  # units of the plan's estimated metrics, in their order (see Plan.estimate)
    values: str

    @classmethod
    def parse(cls, text: str) -> TombstoneRecord:
        """``ValueError`` (or ``KeyError``) when ``text`` is not a tombstone."""
        kind, generation, expires_at, layout_digest, estimate, values = text.split("|")
        return cls(
            state=TOMBSTONE_STATE[Tombstone(kind.lower())],
            has_global=kind != kind.lower(),
            generation=generation,
            expires_at=int(expires_at or 0),
            layout=layout_digest,
            estimate=estimate,
            values=values,
        )


@dataclass(frozen=True, slots=True)
class OpenRecord:
    """An open or expired record (hash ``r:{S}:<name>``)."""

    state: State
    generation: str
    created_ms: int
    expires_ms: int
    layout: str
    global_layout: str
    asks: list[int]
    estimate: dict[str, int]
    values: str
    plan: str
    has_global: bool

    @classmethod
    def parse(cls, fields: Mapping[str, str]) -> OpenRecord:
        """``ValueError`` or ``KeyError`` when ``fields`` are not an open or expired record."""
        state = State(fields[Field.STATE])
        if state not in (State.OPEN, State.EXPIRED):
            raise ValueError(f"a record hash in state {state!r}")
        asks = fields.get(Field.ASKS, "")
        return cls(
            state=state,
            generation=fields[Field.GENERATION],
            created_ms=int(fields.get(Field.CREATED_MS, 0)),
            expires_ms=int(fields[Field.EXPIRES_MS]),
            layout=fields.get(Field.LAYOUT, ""),
            global_layout=fields.get(Field.GLOBAL_LAYOUT, ""),
            asks=[int(a) for a in asks.split(",")] if asks else [],
            estimate=parse_amounts(fields.get(Field.ESTIMATE, "")),
            values=fields.get(Field.VALUES, ""),
            plan=fields.get(Field.PLAN, ""),
            has_global=fields.get(Field.GLOBAL) == YES,
        )
