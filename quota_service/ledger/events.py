"""The domain event: one usage record or notable moment, as the ledger stores it.

:class:`Event` mirrors ``quota.v1.Event`` (``proto/quota/v1/events.proto``) in domain units:

* amounts (``estimate``, ``actual``) are whole integer **units** per metric
  (:mod:`quota_service.policy.units`: 1 unit = 1 token / image, 1 micro-dollar for
  ``cost_usd``); ``cost_micros`` is what this record charged, in micro-dollars. A CORRECTED
  record carries the *difference* to the EXPIRED record it corrects, so its amounts and cost
  may be negative; every other kind's are ``>= 0``.
* ``at_ms`` is when it happened (unix milliseconds), which may be long before it reached
  the ledger (a record waits in its outbox while the ledger store is down).
* ``decision``, ``reason``, ``limit``, ``threshold``: ``None`` when the kind has none
  (the proto's ``*_UNSPECIFIED`` / an unset message).
* ``detail`` is a JSON text ("" for none), e.g. the stop of a STOP_CHANGED event.

Ids: stable, unique, derivable by whoever writes the record
---------------------------------------------------------------
The ledger de-duplicates on ``id`` (one row per id, inserts are ``ON CONFLICT DO NOTHING``)
and webhook receivers de-duplicate on it too, so **the id is fixed before the first write
attempt and every retry carries the same id**; it is never minted by the ledger.

================================  ======================================================
kind                              id
================================  ======================================================
COMMITTED, RELEASED, EXPIRED,     ``<prefix>_<reservation_id>`` (:func:`record_id`): at most
CORRECTED                         one record of each per reservation, so the id follows from
                                  the reservation alone and a replayed Lua step or relay
                                  write can only produce the same id. Prefixes:
                                  ``com``, ``rel``, ``exp``, ``cor``.
THRESHOLD_CROSSED                 ``thr_<sha1 hex>`` of the natural key (:func:`threshold_event_id`):
                                  scope, limit kind, metric, window, window id, threshold.
                                  One crossing per subject, limit, window and threshold is the
                                  rule, so the ledger's primary key enforces it too: a second
                                  emitter (another replica, a restart) collides and is dropped.
DENIED                            ``den_`` + the reservation id the request would have had (the
                                  store's denials: unique per command, replays are not recorded
                                  again), or with the ``rsv_`` left out and no generation, of
                                  (subject, request_id) (the core's denials: a retried
                                  request_id is recorded once); without a request_id, a
                                  time-ordered id as below.
STOP_CHANGED, ADMIN_CHANGE        ``<prefix>_<26-char time-ordered id>`` (:func:`new_event_id`):
SHADOW_DIVERGED                   48 bits of unix ms + 80 random bits in Crockford base32
                                  (the ULID layout), minted once by the writer and stored with
                                  the record in its outbox (the admin events derive theirs from
                                  the audit entry id). Prefixes ``stp``, ``adm``, ``shd``.
================================  ======================================================

Ids are printable ASCII without spaces (``[A-Za-z0-9._~=-]``; reservation ids are
base64url), at most :data:`MAX_EVENT_ID_CHARS` characters: usable as an HTTP header value
(``webhook-id``) and a URL component. The derived ids must be computed identically by the
Lua scripts that write outboxes: :func:`record_id` is a string concatenation and
:func:`threshold_event_id` is ``redis.sha1hex`` over the fields joined by ``\\x1f``.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
import secrets
from dataclasses import dataclass, field
from decimal import Decimal

from quota_service.policy.compiled import LimitKind
from quota_service.policy.domain import Decision, Reason
from quota_service.policy.engine import LimitReport
from quota_service.policy.windows import Window

__all__ = [
    "MAX_EVENT_ID_CHARS",
    "RECORD_KINDS",
    "Event",
    "EventKind",
    "LimitSnapshot",
    "Threshold",
    "is_event_id",
    "new_event_id",
    "record_id",
    "threshold_event_id",
]

#: A reservation id is at most 400 characters (``store/keys.py``); with a prefix this leaves room.
MAX_EVENT_ID_CHARS = 512
_ID = re.compile(r"^[A-Za-z0-9._~=-]{1,512}$")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_FIELD_SEPARATOR = "\x1f"


def is_event_id(text: str) -> bool:
    """Whether ``text`` may be an event id (:data:`MAX_EVENT_ID_CHARS` header-safe characters)."""
    return _ID.fullmatch(text) is not None


class EventKind(enum.IntEnum):
    """What an event records; the values are the ``quota.v1.EventKind`` numbers."""

    COMMITTED = 1  # settled with the actual usage
    RELEASED = 2  # the call did not happen
    EXPIRED = 3  # never settled: charged at the estimate when the TTL passed
    CORRECTED = 4  # a late Commit after EXPIRED: the difference, referencing it
    DENIED = 5  # nothing reserved: the ask, the reason, the deciding limit
    THRESHOLD_CROSSED = 6  # a limit crossed its warn line, block line or cap
    STOP_CHANGED = 7  # an emergency stop pulled or lifted
    ADMIN_CHANGE = 8  # tier, override, reset, reload: the audit trail
    SHADOW_DIVERGED = 9  # a shadow policy would have answered otherwise (sampled)


#: The usage records: every request ends in exactly one of COMMITTED, RELEASED, EXPIRED,
#: DENIED (plus a CORRECTED after a late Commit on an EXPIRED reservation).
RECORD_KINDS = frozenset(
    {EventKind.COMMITTED, EventKind.RELEASED, EventKind.EXPIRED, EventKind.CORRECTED, EventKind.DENIED}
)

_PREFIX = {
    EventKind.COMMITTED: "com",
    EventKind.RELEASED: "rel",
    EventKind.EXPIRED: "exp",
    EventKind.CORRECTED: "cor",
    EventKind.DENIED: "den",
    EventKind.THRESHOLD_CROSSED: "thr",
    EventKind.STOP_CHANGED: "stp",
    EventKind.ADMIN_CHANGE: "adm",
    EventKind.SHADOW_DIVERGED: "shd",
}
_RESERVATION_RECORDS = (EventKind.COMMITTED, EventKind.RELEASED, EventKind.EXPIRED, EventKind.CORRECTED)


class Threshold(enum.IntEnum):
    """Which line of a limit a THRESHOLD_CROSSED event reports; the ``quota.v1.Threshold`` numbers."""

    WARN = 1  # warn_at * max
    BLOCK = 2  # block_at * max
    CAP = 3  # max


def record_id(kind: EventKind, reservation_id: str) -> str:
    """The id of a reservation's COMMITTED / RELEASED / EXPIRED / CORRECTED record:
    ``<prefix>_<reservation_id>``, the same whoever computes it and however often."""
    if kind not in _RESERVATION_RECORDS:
        raise ValueError(f"{kind.name} records are not keyed by reservation")
    if not reservation_id:
        raise ValueError("a reservation record needs the reservation id")
    return f"{_PREFIX[kind]}_{reservation_id}"


def threshold_event_id(
    scope: str, limit_kind: LimitKind, metric: str, window: Window, window_id: str, threshold: Threshold
) -> str:
    """The id of the one THRESHOLD_CROSSED event for this subject (or the global scope),
    limit, concrete window (``window_id``, e.g. ``2026-11-24``) and threshold:
    ``thr_`` + SHA-1 hex of the fields joined by ``\\x1f`` (limit kind by its value, e.g.
    ``tier``; window by its value, e.g. ``day``; threshold by its name, e.g. ``WARN``)."""
    key = _FIELD_SEPARATOR.join((scope, limit_kind.value, metric, window.value, window_id, threshold.name))
    return f"{_PREFIX[EventKind.THRESHOLD_CROSSED]}_{hashlib.sha1(key.encode()).hexdigest()}"


def new_event_id(kind: EventKind, at_ms: int, *, randomness: bytes | None = None) -> str:
    """A fresh time-ordered id ``<prefix>_<26 chars>`` for an event with no natural key.

    The 26 characters are the ULID layout: 48 bits of ``at_ms`` then 80 random bits
    (``randomness``: 10 bytes, for tests), Crockford base32; ids of one kind sort by time
    to the millisecond. Mint it once, store it with the record, and retry with it."""
    if not 0 <= at_ms < 2**48:
        raise ValueError(f"at_ms out of range: {at_ms}")
    rand = secrets.token_bytes(10) if randomness is None else randomness
    if len(rand) != 10:
        raise ValueError("randomness must be 10 bytes")
    value = (at_ms << 80) | int.from_bytes(rand, "big")
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return f"{_PREFIX[kind]}_{''.join(reversed(chars))}"


@dataclass(frozen=True, slots=True)
class LimitSnapshot:
    """One limit's state as an event saw it (``quota.v1.LimitStatus`` in units).

    ``used``/``held``/``max_units`` are units (micro-dollars for ``cost_usd``); ``resets_at``
    unix seconds; ``warn_at``/``block_at`` the exact threshold fractions, ``None`` for hard
    stops and global caps (which deny at the cap and carry no thresholds)."""

    metric: str
    window: Window
    used: int
    held: int
    max_units: int
    resets_at: int
    kind: LimitKind
    decision: Decision | None = None
    warn_at: Decimal | None = None
    block_at: Decimal | None = None

    @classmethod
    def from_report(cls, report: LimitReport) -> LimitSnapshot:
        """The snapshot of an engine :class:`LimitReport` (what a response's ``limits`` show)."""
        limit = report.limit
        thresholds = limit.thresholds
        return cls(
            metric=limit.metric,
            window=limit.window,
            used=report.used,
            held=report.held,
            max_units=limit.max_units,
            resets_at=report.ref.resets_at,
            kind=limit.kind,
            decision=report.decision,
            warn_at=thresholds.warn_at if thresholds else None,
            block_at=thresholds.block_at if thresholds else None,
        )

    @property
    def remaining(self) -> int:
        return max(0, self.max_units - self.used - self.held)

    @property
    def ratio(self) -> float:
        if self.max_units == 0:
            return 1.0 if self.used + self.held > 0 else 0.0
        return (self.used + self.held) / self.max_units

    def to_json_obj(self) -> dict[str, object]:
        """A JSON-ready dict, exact (thresholds as decimal strings); the ledger's storage form."""
        return {
            "metric": self.metric,
            "window": self.window.value,
            "used": self.used,
            "held": self.held,
            "max": self.max_units,
            "resets_at": self.resets_at,
            "kind": self.kind.value,
            "decision": None if self.decision is None else self.decision.name,
            "warn_at": None if self.warn_at is None else str(self.warn_at),
            "block_at": None if self.block_at is None else str(self.block_at),
        }

    @classmethod
    def from_json_obj(cls, obj: dict[str, object]) -> LimitSnapshot:
        def integer(name: str) -> int:
            value = obj[name]
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"limit.{name} must be an integer, got {value!r}")
            return value

        def fraction(name: str) -> Decimal | None:
            value = obj.get(name)
            return None if value is None else Decimal(str(value))

        decision = obj.get("decision")
        return cls(
            metric=str(obj["metric"]),
            window=Window(str(obj["window"])),
            used=integer("used"),
            held=integer("held"),
            max_units=integer("max"),
            resets_at=integer("resets_at"),
            kind=LimitKind(str(obj["kind"])),
            decision=None if decision is None else Decision[str(decision)],
            warn_at=fraction("warn_at"),
            block_at=fraction("block_at"),
        )


def _check_amounts(name: str, amounts: dict[str, int], *, signed: bool) -> dict[str, int]:
    copied = dict(amounts)
    for metric, value in copied.items():
        if not isinstance(metric, str) or not metric:
            raise ValueError(f"{name}: metric names must be non-empty strings, got {metric!r}")
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name}[{metric!r}] must be whole units (int), got {value!r}")
        if value < 0 and not signed:
            raise ValueError(f"{name}[{metric!r}] must not be negative, got {value}")
    return copied


@dataclass(frozen=True, slots=True)
class Event:
    """One usage record or notable moment. See the module docstring for units and ids.

    Construction validates: an id of :data:`MAX_EVENT_ID_CHARS` header-safe characters, a
    non-negative ``at_ms``, whole-unit amounts (negative only in a CORRECTED record) and a
    ``detail`` that is empty or valid JSON. The amount dicts are copied, never shared."""

    id: str
    kind: EventKind
    at_ms: int
    subject: str = ""
    tier: str = ""
    feature: str = ""
    provider: str = ""
    model: str = ""
    request_id: str = ""
    reservation_id: str = ""
    estimate: dict[str, int] = field(default_factory=dict)
    actual: dict[str, int] = field(default_factory=dict)
    cost_micros: int = 0
    decision: Decision | None = None
    reason: Reason | None = None
    limit: LimitSnapshot | None = None
    threshold: Threshold | None = None
    policy_version: str = ""
    actor: str = ""
    detail: str = ""

    def __post_init__(self) -> None:
        if not is_event_id(self.id):
            raise ValueError(
                f"event id {self.id[:64]!r} is not valid: 1-{MAX_EVENT_ID_CHARS} characters of [A-Za-z0-9._~=-]"
            )
        if not isinstance(self.kind, EventKind):
            raise ValueError(f"kind must be an EventKind, got {self.kind!r}")
        if not isinstance(self.at_ms, int) or isinstance(self.at_ms, bool) or not 0 <= self.at_ms < 2**63:
            raise ValueError(f"at_ms must be unix milliseconds (int >= 0), got {self.at_ms!r}")
        signed = self.kind is EventKind.CORRECTED
        object.__setattr__(self, "estimate", _check_amounts("estimate", self.estimate, signed=signed))
        object.__setattr__(self, "actual", _check_amounts("actual", self.actual, signed=signed))
        if not isinstance(self.cost_micros, int) or isinstance(self.cost_micros, bool):
            raise ValueError(f"cost_micros must be an int, got {self.cost_micros!r}")
        if self.cost_micros < 0 and not signed:
            raise ValueError(f"cost_micros must not be negative in a {self.kind.name} record")
        if self.detail:
            try:
                json.loads(self.detail)
            except ValueError as exc:
                raise ValueError(f"detail must be JSON text: {exc}") from exc
