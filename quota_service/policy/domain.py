"""The domain values the engine, the stores and the servers trade in.

They belong to the core (``policy/``): the store implements an interface over these
values and imports them from here, never the reverse.

Units everywhere: whole integers (micro-dollars for ``cost_usd``); times in unix
milliseconds where named ``*_ms``, unix seconds where named ``*_at`` or ``*_seconds``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from quota_service.policy.windows import Window

#: The scope of company-wide counters. Never a subject (validation refuses it).
GLOBAL_SCOPE = "__global__"


class Decision(enum.IntEnum):
    """Ordered: a request's decision is the ``max`` over its limits."""

    ALLOW = 1
    WARN = 2
    DENY = 3


class Reason(enum.Enum):
    """Why an answer is what it is; the values are the ``quota.v1.Reason`` names."""

    WITHIN_LIMITS = "WITHIN_LIMITS"
    WARN_THRESHOLD = "WARN_THRESHOLD"
    BLOCK_THRESHOLD = "BLOCK_THRESHOLD"
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
    HARD_STOP = "HARD_STOP"
    GLOBAL_LIMIT = "GLOBAL_LIMIT"
    EMERGENCY_STOP = "EMERGENCY_STOP"
    FEATURE_NOT_ALLOWED = "FEATURE_NOT_ALLOWED"
    UNPRICED_MODEL = "UNPRICED_MODEL"
    UNKNOWN_TIER = "UNKNOWN_TIER"
    #: Redis unreachable or timing out (an outage): the tier's ``on_store_error`` answers.
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    #: Damaged data in the store, or a script error (a bug, not an outage): always DENY.
    STORE_ERROR = "STORE_ERROR"


@dataclass(frozen=True, slots=True)
class CounterRef:
    """One counter: a metric in one concrete window, for a subject or for the whole company.

    ``scope`` is the subject id, or :data:`GLOBAL_SCOPE` for company-wide counters.
    ``resets_at`` (unix seconds) is when the window ends. How long the counter is kept
    after that is the store's business (late commits still land on it meanwhile).
    """

    scope: str
    metric: str
    window: Window
    window_id: str
    resets_at: int


@dataclass(frozen=True, slots=True)
class CounterCharge:
    """What a reservation asks of one counter, with the gate the store must apply atomically.

    The store denies the whole step when, for any charge with ``ask > 0``, with
    ``uh = used + held``: ``uh >= block`` or ``uh + ask > cap``. ``cap``/``block`` are the
    minimum of ``max_units``/``block_units`` over every limit on this counter.
    """

    counter: CounterRef
    ask: int
    cap: int
    block: int


@dataclass(frozen=True, slots=True)
class CounterValue:
    """A counter's committed usage and open reservations, in units."""

    used: int = 0
    held: int = 0


@dataclass(frozen=True, slots=True)
class OverrideRecord:
    """A per-subject cap for one metric and window; replaces the tier's cap there."""

    subject: str
    metric: str
    window: Window
    max_units: int
    expires_at: int  # unix seconds; 0 = never
    reason: str = ""
    created_at: int = 0
    created_by: str = ""


@dataclass(frozen=True, slots=True)
class SubjectConfig:
    """What admins set for one subject. ``version`` changes with every admin write
    (``"0"`` for a subject nobody touched); ``tier`` is ``None`` when unassigned."""

    tier: str | None
    overrides: tuple[OverrideRecord, ...]
    version: str


__all__ = [
    "GLOBAL_SCOPE",
    "CounterCharge",
    "CounterRef",
    "CounterValue",
    "Decision",
    "OverrideRecord",
    "Reason",
    "SubjectConfig",
]
