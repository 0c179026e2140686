"""Typed results of quota-client: small frozen dataclasses mirroring ``quota.v1``.

Every result keeps the protobuf it was made from in ``raw`` (``None`` for results the
client made up itself, e.g. an unverified decision under ``fail_mode="open"``), so a
caller who needs a field added to the contract later can still reach it.

Amounts are in the metric's own measure, as on the wire: tokens, images, US dollars for
``cost_usd``. Times are unix seconds; durations are seconds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from quota.v1 import quota_pb2


class Decision(enum.StrEnum):
    """The service's answer. ``UNSPECIFIED`` stands for a value this client does not know."""

    UNSPECIFIED = "UNSPECIFIED"
    ALLOW = "ALLOW"
    WARN = "WARN"
    DENY = "DENY"


class Reason(enum.StrEnum):
    """Why the service answered as it did (see ``quota.v1.Reason``)."""

    UNSPECIFIED = "UNSPECIFIED"
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
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    STORE_ERROR = "STORE_ERROR"  # DENY: damaged data on the service (a bug, not an outage)


class LimitKind(enum.StrEnum):
    """Where a limit comes from (see ``quota.v1.LimitKind``)."""

    UNSPECIFIED = "UNSPECIFIED"
    TIER = "TIER"
    OVERRIDE = "OVERRIDE"
    HARD_STOP = "HARD_STOP"
    GLOBAL = "GLOBAL"


@dataclass(frozen=True, slots=True)
class LimitStatus:
    """One limit in its current window.

    ``remaining = max - used - held`` (never below 0), ``ratio = (used + held) / max``.
    ``decision`` is this limit's own verdict (set in ``CheckAndReserve`` answers only).
    ``warn_at``/``block_at`` are fractions of ``max`` (0 / 1 for hard stops and global caps).
    """

    metric: str
    window: str
    used: float
    held: float
    max: float
    remaining: float
    ratio: float
    resets_at: int
    kind: LimitKind = LimitKind.UNSPECIFIED
    decision: Decision = Decision.UNSPECIFIED
    warn_at: float = 0.0
    block_at: float = 0.0


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The answer to ``CheckAndReserve``.

    * ``reservation_id`` is set when something was reserved (ALLOW / WARN, not ``dry_run``);
      empty for DENY and for unverified decisions.
    * ``limit`` is the limit that decided a WARN or DENY (``None`` otherwise).
    * ``retry_after`` is in seconds; 0 when not applicable.
    * ``expires_at`` (unix seconds): a reservation neither committed nor released by then
      is settled at its estimate by the service.
    * ``replayed`` is true when the service answered a repeated ``request_id`` with its
      first answer (a retry): it was counted once.
    * ``unverified`` is true when the service could not be reached and the client's
      ``fail_mode="open"`` let the call proceed: nothing was checked nor reserved.
    """

    decision: Decision
    reason: Reason
    message: str
    reservation_id: str
    request_id: str
    tier: str = ""
    limits: tuple[LimitStatus, ...] = ()
    limit: LimitStatus | None = None
    policy_version: str = ""
    retry_after: int = 0
    expires_at: int = 0
    replayed: bool = False
    unverified: bool = False
    raw: quota_pb2.CheckAndReserveResponse | None = field(default=None, repr=False, compare=False)

    @property
    def allowed(self) -> bool:
        """True when the caller may go ahead: ALLOW, WARN, or an unverified fail-open decision."""
        return self.unverified or self.decision in (Decision.ALLOW, Decision.WARN)


@dataclass(frozen=True, slots=True)
class QuotaWarning:
    """A WARN decision, handed to ``on_warning`` hooks and exposed as ``Reservation.warning``:
    the call goes ahead, but ``limit`` is past its warn threshold (e.g. the 80 % notice)."""

    message: str
    limit: LimitStatus | None
    result: CheckResult


@dataclass(frozen=True, slots=True)
class CommitResult:
    """The answer to ``Commit``. ``already_settled``: a repeated commit (or a commit after a
    release) that changed nothing. ``unverified``: the service could not be reached under
    ``fail_mode="open"`` (or the reservation itself was unverified): nothing was recorded."""

    limits: tuple[LimitStatus, ...] = ()
    already_settled: bool = False
    unverified: bool = False
    raw: quota_pb2.CommitResponse | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    """The answer to ``Release``; fields as in :class:`CommitResult`."""

    already_settled: bool = False
    unverified: bool = False
    raw: quota_pb2.ReleaseResponse | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class UsageReport:
    """The answer to ``GetUsage``: the subject's tier and every limit in its current window."""

    subject: str
    tier: str
    limits: tuple[LimitStatus, ...]
    policy_version: str = ""
    raw: quota_pb2.GetUsageResponse | None = field(default=None, repr=False, compare=False)

    def limit(self, metric: str, window: str, kind: LimitKind | None = None) -> LimitStatus | None:
        """The first limit on ``metric``/``window`` (of ``kind``, when given), else ``None``."""
        for status in self.limits:
            if status.metric == metric and status.window == window and kind in (None, status.kind):
                return status
        return None
