"""The compiled policy: immutable, validated, in exact units, ready for the engine.

Built by :func:`quota_service.policy.compiler.compile_policy` from a validated model;
never mutated afterwards. Hot reload builds a new one beside the running one and swaps
a single reference, so a request sees one policy from start to end.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from types import MappingProxyType
from zoneinfo import ZoneInfo

from quota_service.policy.notifications import Notifications
from quota_service.policy.units import COST_METRIC
from quota_service.policy.windows import Window


class LimitKind(enum.Enum):
    """Where a cap comes from; the order is the order of precedence in messages."""

    TIER = "tier"
    OVERRIDE = "override"
    HARD_STOP = "hard_stop"
    GLOBAL = "global"


class StoreErrorMode(enum.StrEnum):
    DENY = "deny"
    ALLOW = "allow"


class StoreLostMode(enum.StrEnum):
    """``on_store_lost``: what a replica does when Redis came back without its data."""

    FAIL_CLOSED = "fail_closed"  # deny until an operator runs quota-service restore
    RESTORE = "restore"  # one replica rebuilds the store from the ledger at once


class UnpricedMode(enum.StrEnum):
    DENY = "deny"
    FREE = "free"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Fractions of a cap, exact: ``0 < warn_at <= block_at <= 1``."""

    warn_at: Decimal = Decimal("0.80")
    block_at: Decimal = Decimal("0.95")


def _ceil(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_CEILING))


@dataclass(frozen=True, slots=True)
class Limit:
    """One cap on one metric in one window, in units (micro-dollars for ``cost_usd``).

    The decision rule in integers (``uh`` = used + held, both whole units):

    * DENY  if ``uh >= block_units`` or ``uh + ask > max_units``
    * WARN  if ``uh + ask >= warn_units``  (never for hard stops and global caps)

    ``block_units = ceil(block_at * max)`` and ``warn_units = ceil(warn_at * max)``: for an
    integer left side, ``x >= r`` is exactly ``x >= ceil(r)``, so no float is compared.
    Hard stops and global caps carry no thresholds: ``block_units = max_units`` (which only
    denies what ``uh + ask > max_units`` denies anyway) and ``warn_units = None``.
    """

    metric: str
    window: Window
    max_units: int
    kind: LimitKind
    thresholds: Thresholds | None
    warn_units: int | None = field(init=False)
    block_units: int = field(init=False)

    def __post_init__(self) -> None:
        if self.thresholds is None:
            warn, block = None, self.max_units
        else:
            warn = _ceil(self.thresholds.warn_at * self.max_units)
            block = _ceil(self.thresholds.block_at * self.max_units)
        object.__setattr__(self, "warn_units", warn)
        object.__setattr__(self, "block_units", block)

    @property
    def counter(self) -> tuple[str, Window]:
        """The counter this limit is checked against: (metric, window)."""
        return (self.metric, self.window)

    def with_max(self, max_units: int, kind: LimitKind) -> Limit:
        return Limit(self.metric, self.window, max_units, kind, self.thresholds)


#: Price lookups a :class:`PriceTable` remembers (provider x model x metrics used).
PRICE_LOOKUPS = 4096


@dataclass(frozen=True, slots=True)
class PriceTable:
    """USD per unit of a metric, by ``"provider/model"``, ``"provider/*"`` or ``"*"``.

    Resolution is per metric, most specific first: ``openai/gpt-4o-mini`` beats
    ``openai/*`` beats ``*``. A metric priced nowhere in the table (``requests``, say)
    costs nothing; a metric priced somewhere but not for this provider/model is
    *unpriced* for it, and the policy's ``unpriced`` mode decides.
    """

    entries: Mapping[str, Mapping[str, Decimal]] = field(default_factory=lambda: MappingProxyType({}))
    #: Every metric priced somewhere in the table (derived once: the table is immutable).
    priced_metrics: frozenset[str] = field(init=False)
    #: (provider, model, metrics used) -> the unpriced metrics and the rates (see
    #: :meth:`cost_micros`), remembered: the table is immutable. Bounded by
    #: ``PRICE_LOOKUPS``; cleared when full.
    _lookups: dict[tuple[str, str, frozenset[str]], tuple[tuple[str, ...], dict[str, Decimal]]] = field(
        init=False, default_factory=dict, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "priced_metrics", frozenset(m for rates in self.entries.values() for m in rates))

    def rate(self, provider: str, model: str, metric: str) -> Decimal | None:
        """USD per unit of ``metric`` for this provider/model, or ``None`` when unpriced."""
        for pattern in (f"{provider}/{model}", f"{provider}/*", "*"):
            rates = self.entries.get(pattern)
            if rates is not None and metric in rates:
                return rates[metric]
        return None

    def cost_micros(
        self, provider: str, model: str, usage: Mapping[str, int]
    ) -> tuple[int, list[str], dict[str, Decimal]]:
        """The cost of ``usage`` in micro-dollars (rounded up), the metrics left unpriced, and
        the rate of each priced metric used (what a later commit is priced at)."""
        key = (provider, model, frozenset(usage))
        found = self._lookups.get(key)
        if found is None:
            found = self._lookup(provider, model, usage)
            if len(self._lookups) >= PRICE_LOOKUPS:
                self._lookups.clear()
            self._lookups[key] = found
        unpriced, rates = found
        return micros_at(rates, usage), list(unpriced), dict(rates)

    def _lookup(
        self, provider: str, model: str, usage: Mapping[str, int]
    ) -> tuple[tuple[str, ...], dict[str, Decimal]]:
        unpriced: list[str] = []
        rates: dict[str, Decimal] = {}
        priced = self.priced_metrics
        for metric in sorted(usage):
            if metric == COST_METRIC or metric not in priced:
                continue
            rate = self.rate(provider, model, metric)
            if rate is None:
                unpriced.append(metric)
            else:
                rates[metric] = rate
        return tuple(unpriced), rates


def micros_at(rates: Mapping[str, Decimal], usage: Mapping[str, int]) -> int:
    """USD micro-dollars of ``usage`` at ``rates`` (USD per unit), rounded up; a metric
    without a rate costs nothing. The one place a cost is computed."""
    total = sum((rates[metric] * amount for metric, amount in usage.items() if metric in rates), Decimal(0))
    return _ceil(total * 1_000_000)


@dataclass(frozen=True, slots=True)
class CrossRule:
    """``on_cross``: when a subject's limit on ``metric`` / ``window`` reaches ``threshold``
    (warn, block or cap), stop the subject for ``stop_seconds``."""

    name: str
    metric: str
    window: Window
    threshold: str
    stop_seconds: int

    def matches(self, metric: str, window: Window, threshold: str) -> bool:
        return self.metric == metric and self.window is window and self.threshold == threshold


@dataclass(frozen=True, slots=True)
class Tier:
    """A tier, fully resolved: its limits, its hard stops (its own, else the policy's
    ``hard_stops.per_subject``), its thresholds and failure mode."""

    name: str
    display_name: str
    features: frozenset[str]
    all_features: bool
    limits: tuple[Limit, ...]
    hard_stops: tuple[Limit, ...]
    thresholds: Thresholds
    on_store_error: StoreErrorMode
    reservation_ttl_seconds: int
    #: A Commit may report at most this many times the reservation's estimate of a metric
    #: (and at least this many units of it, whatever the estimate); more is refused for review.
    commit_max_ratio: int = 10
    #: The policy's and then the tier's own ``on_cross`` rules.
    on_cross: tuple[CrossRule, ...] = ()
    #: ``on_store_error: allow``: what one replica may grant per subject and limit during an
    #: outage, as a fraction of the cap (the grants are written back when the store returns).
    fail_open_allowance: Decimal = Decimal("0.05")

    def commit_bound(self, estimate: int) -> int:
        """The most units of a metric a Commit may report against ``estimate`` units."""
        return self.commit_max_ratio * max(estimate, 1)

    def allows_feature(self, feature: str) -> bool:
        return self.all_features or feature in self.features


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """Everything the engine needs, immutable. ``version`` is a content hash of the source files."""

    version: str
    files: tuple[str, ...]
    timezone: ZoneInfo
    default_tier: str
    tiers: Mapping[str, Tier]
    prices: PriceTable
    unpriced: UnpricedMode
    global_limits: tuple[Limit, ...]
    reservation_ttl_seconds: int
    on_store_error: StoreErrorMode
    thresholds: Thresholds
    notifications: Notifications = field(default_factory=Notifications)
    ledger_retention_days: int = 0  # 0: events are kept for ever
    on_store_lost: StoreLostMode = StoreLostMode.FAIL_CLOSED

    def tier_for(self, assigned: str | None) -> Tier | None:
        """The tier of a subject: its assigned tier, the default when none is assigned
        or the assigned one no longer exists (the caller logs that), ``None`` if neither exists."""
        if assigned and assigned in self.tiers:
            return self.tiers[assigned]
        return self.tiers.get(self.default_tier)
