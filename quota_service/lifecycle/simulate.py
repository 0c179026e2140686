"""Simulate: replay recorded requests through the pure engine under two policies.

Pure: no I/O, no SQL, no YAML, no grpc, no redis. The ledger reader
(:mod:`quota_service.lifecycle.ledger_reader`) hands over :class:`RecordedRow` values in
the ledger's time order (``at_ms``); :class:`Simulation` turns them into a timeline and
replays it in two in-memory *worlds*, one per policy (the live one and the candidate),
each with its own counters. What each world does with a request:

* it decides the request with the engine's rule (:func:`quota_service.policy.engine.judge`
  over the limits of :func:`~quota_service.policy.engine.plan_shape`: the compiled,
  cached per-tier counters of the subject's tier and overrides in the windows current at
  the request's time, in the policy's timezone), after the early denials in the engine's
  order (unknown tier, feature not in the tier, unpriced model);
* a DENY consumes nothing;
* a grant *holds* its ask (estimate, and its cost at the world's prices) from the request's
  time (``detail.reserved_at_ms``) until the record's time (``at_ms``), then settles as the
  record did: COMMITTED charges its ``actual`` (cost at the world's prices, as the service
  prices a Commit at the reservation's rates), EXPIRED charges the estimate, RELEASED
  nothing; a later CORRECTED adds its difference;
* a request the service denied but the world grants consumes its ask (the estimate) at
  once: nothing recorded says what it would have used.

Denials that no policy decides (``EMERGENCY_STOP``, ``STORE_UNAVAILABLE``, ``STORE_ERROR``)
stay denials in both worlds. A request recorded before ``since_ms`` or at/after
``until_ms`` is not replayed (its records are skipped).

Admin changes (ADMIN_CHANGE records) apply at their time in both worlds: ``SetTier``,
``SetOverride``, ``DeleteOverride`` and ``ResetUsage`` (zeroes ``used`` of the subject's
counters, of the metric / window it named). A subject with no ``SetTier`` seen is in the
tier its records name when that is not the live policy's default tier (its assignment was
made before the records read), else unassigned (each policy's default tier).

The live policy is the one given for the whole period: a ``ReloadPolicies`` in the period
is not replayed (the recorded answers made before it then differ from the live replay:
``live_mismatches`` counts them). Emergency stops are not replayed either: the denials they
caused are recorded, and stay denials.

Order: a request's record arrives at ``at_ms``, but the request happened earlier (at most
about one reservation TTL, :data:`DEFAULT_HORIZON_MS`); the simulation keeps the events of
the last horizon in a heap and replays an event only once the rows read have moved a
horizon past it, so the replay is in request-time order without loading the ledger.

Answers compared: per request, the live world's decision against the candidate's
(``ALLOW->DENY`` and so on), summed per tier (the tier the live world served) and per subject;
per subject the first time the candidate denies it (and the live world), the spend recorded
(cost of its COMMITTED + EXPIRED + CORRECTED records) and the spend in each world.
Amounts are units (micro-dollars for ``cost_usd``); times unix milliseconds.
"""

from __future__ import annotations

import enum
import heapq
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any, NamedTuple

from quota_service.policy.compiled import CompiledPolicy, Limit, Tier, UnpricedMode
from quota_service.policy.domain import GLOBAL_SCOPE, Decision, OverrideRecord, Reason, SubjectConfig
from quota_service.policy.engine import judge, plan_shape
from quota_service.policy.units import COST_METRIC, exact_units, to_units_ceil
from quota_service.policy.windows import Window

__all__ = [
    "DEFAULT_HORIZON_MS",
    "POLICY_FREE_REASONS",
    "Pricing",
    "RecordKind",
    "RecordedRow",
    "Simulation",
    "SimulationReport",
    "SubjectReport",
    "TierReport",
    "simulate",
]

#: How long before its record's ``at_ms`` a request may have been made: the longest TTL a
#: request may ask for (a day, ``MAX_TTL_SECONDS``) plus an hour for the expiry sweep.
DEFAULT_HORIZON_MS = (86_400 + 3_600) * 1000
#: Denials recorded for a reason no policy decides: they stay denials in both worlds.
POLICY_FREE_REASONS = frozenset({Reason.EMERGENCY_STOP.value, Reason.STORE_UNAVAILABLE.value, Reason.STORE_ERROR.value})
#: Counters whose window ended are dropped after this many replayed events.
_PRUNE_EVERY = 100_000


class RecordKind(enum.IntEnum):
    """The ledger kinds a simulation reads (the ``quota.v1.EventKind`` numbers)."""

    COMMITTED = 1
    RELEASED = 2
    EXPIRED = 3
    CORRECTED = 4
    DENIED = 5
    ADMIN_CHANGE = 8


_NO_AMOUNTS: Mapping[str, int] = MappingProxyType({})


class RecordedRow(NamedTuple):
    """One ledger row as the simulation needs it (a tuple: a million are made per run).
    ``estimate``/``actual``: units per metric (``cost_usd`` included when priced: ignored
    here, each world prices for itself);
    ``reserved_at_ms``: when the request was made (0: unknown, ``at_ms`` is used);
    ``decision``: the recorded ``Decision`` number (0 none); ``reason``: the recorded
    ``Reason`` name (``""`` none). ``action``/``before``/``after``: an ADMIN_CHANGE's detail."""

    kind: RecordKind
    at_ms: int
    id: str
    subject: str = ""
    tier: str = ""
    feature: str = ""
    provider: str = ""
    model: str = ""
    reservation_id: str = ""
    estimate: Mapping[str, int] = _NO_AMOUNTS
    actual: Mapping[str, int] = _NO_AMOUNTS
    cost_micros: int = 0
    decision: int = 0
    reason: str = ""
    reserved_at_ms: int = 0
    action: str = ""
    before: Any = None
    after: Any = None


_CHANGE_NAMES = {Decision.ALLOW: "ALLOW", Decision.WARN: "WARN", Decision.DENY: "DENY"}


def change_name(live: Decision, candidate: Decision) -> str:
    """``"ALLOW->DENY"``: how an answer changes."""
    return f"{_CHANGE_NAMES[live]}->{_CHANGE_NAMES[candidate]}"


@dataclass
class SubjectReport:
    """One subject's replay. ``first_denied_ms``: the candidate's first DENY (0: none);
    ``live_first_denied_ms`` the live world's. Spend in micro-dollars."""

    subject: str
    tier: str
    requests: int = 0
    changes: dict[str, int] = field(default_factory=dict)
    first_denied_ms: int = 0
    first_denied_reason: str = ""
    live_first_denied_ms: int = 0
    recorded_cost_micros: int = 0
    live_cost_micros: int = 0
    candidate_cost_micros: int = 0

    @property
    def changed(self) -> int:
        return sum(self.changes.values())

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "tier": self.tier,
            "requests": self.requests,
            "changed": self.changed,
            "changes": dict(sorted(self.changes.items())),
            "first_denied_ms": self.first_denied_ms,
            "first_denied_reason": self.first_denied_reason,
            "live_first_denied_ms": self.live_first_denied_ms,
            "recorded_cost_micros": self.recorded_cost_micros,
            "live_cost_micros": self.live_cost_micros,
            "candidate_cost_micros": self.candidate_cost_micros,
            "delta_cost_micros": self.candidate_cost_micros - self.recorded_cost_micros,
        }


@dataclass
class TierReport:
    """Sums over the requests the live world served in one tier."""

    tier: str
    requests: int = 0
    subjects: set[str] = field(default_factory=set)
    changes: dict[str, int] = field(default_factory=dict)
    recorded_cost_micros: int = 0
    live_cost_micros: int = 0
    candidate_cost_micros: int = 0

    @property
    def changed(self) -> int:
        return sum(self.changes.values())

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "requests": self.requests,
            "subjects": len(self.subjects),
            "changed": self.changed,
            "changes": dict(sorted(self.changes.items())),
            "recorded_cost_micros": self.recorded_cost_micros,
            "live_cost_micros": self.live_cost_micros,
            "candidate_cost_micros": self.candidate_cost_micros,
            "delta_cost_micros": self.candidate_cost_micros - self.recorded_cost_micros,
        }


@dataclass
class SimulationReport:
    """The whole replay. ``live_mismatches``: requests where the live world's answer is not
    the recorded one (the replay's own fidelity: counters the ledger does not see, such as
    open reservations at ``since``, or a policy changed meanwhile)."""

    live_version: str
    candidate_version: str
    since_ms: int
    until_ms: int
    rows: int = 0
    requests: int = 0
    admin_changes: int = 0
    skipped: int = 0
    live_mismatches: int = 0
    tiers: dict[str, TierReport] = field(default_factory=dict)
    subjects: dict[str, SubjectReport] = field(default_factory=dict)

    @property
    def changed(self) -> int:
        return sum(t.changed for t in self.tiers.values())

    @property
    def recorded_cost_micros(self) -> int:
        return sum(t.recorded_cost_micros for t in self.tiers.values())

    @property
    def live_cost_micros(self) -> int:
        return sum(t.live_cost_micros for t in self.tiers.values())

    @property
    def candidate_cost_micros(self) -> int:
        return sum(t.candidate_cost_micros for t in self.tiers.values())

    def changed_subjects(self) -> list[SubjectReport]:
        """Subjects with an answer that changes, the earliest first denial first."""
        found = [s for s in self.subjects.values() if s.changed]
        return sorted(found, key=lambda s: (s.first_denied_ms == 0, s.first_denied_ms, s.subject))

    def to_json_obj(self) -> dict[str, Any]:
        changes: dict[str, int] = {}
        for tier in self.tiers.values():
            for name, n in tier.changes.items():
                changes[name] = changes.get(name, 0) + n
        return {
            "live_policy_version": self.live_version,
            "candidate_policy_version": self.candidate_version,
            "since_ms": self.since_ms,
            "until_ms": self.until_ms,
            "rows": self.rows,
            "requests": self.requests,
            "admin_changes": self.admin_changes,
            "skipped": self.skipped,
            "live_mismatches": self.live_mismatches,
            "changed": self.changed,
            "changes": dict(sorted(changes.items())),
            "recorded_cost_micros": self.recorded_cost_micros,
            "live_cost_micros": self.live_cost_micros,
            "candidate_cost_micros": self.candidate_cost_micros,
            "delta_cost_micros": self.candidate_cost_micros - self.recorded_cost_micros,
            "tiers": [t.to_json_obj() for _, t in sorted(self.tiers.items())],
            "subjects": [s.to_json_obj() for s in self.changed_subjects()],
        }


# -- the admin state --------------------------------------------------------------------------


@dataclass
class _Admin:
    """What admins set for one subject, as of the replay's time."""

    tier: str | None = None
    tier_seen: bool = False
    overrides: dict[tuple[str, Window], OverrideRecord] = field(default_factory=dict)
    version: int = 0
    config: SubjectConfig | None = None

    def subject_config(self, record_tier: str, live_default: str) -> SubjectConfig:
        # Never assigned in the records read: the tier its records name, unless the default.
        inferred = record_tier if record_tier and record_tier != live_default else None
        tier = self.tier if self.tier_seen else inferred
        config = self.config
        if config is None or config.tier != tier:
            config = SubjectConfig(tier, tuple(self.overrides[k] for k in sorted(self.overrides)), str(self.version))
            self.config = config
        return config


def _override_units(metric: str, amount: object) -> int | None:
    if isinstance(amount, bool) or not isinstance(amount, int | float):
        return None
    exact = Decimal(repr(float(amount)))
    units = exact_units(metric, exact)
    return units if units is not None else to_units_ceil(metric, exact)


def _window(text: str) -> Window | None:
    try:
        return Window(text)
    except ValueError:
        return None


# -- one world --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pricing:
    """A request's rates as integers: ``cost(usage)`` is
    :func:`~quota_service.policy.compiled.micros_at` of the same rates, exactly (each rate
    in micro-dollars per unit is ``rate / scale``, so the sum is an exact integer fraction,
    rounded up as ``micros_at`` rounds), without a Decimal per record."""

    rates: tuple[tuple[str, int], ...]
    scale: int

    @classmethod
    def of(cls, rates: Mapping[str, Decimal]) -> Pricing:
        scaled = {metric: rate * 1_000_000 for metric, rate in rates.items()}
        places = 0
        for value in scaled.values():
            exponent = value.as_tuple().exponent
            if isinstance(exponent, int) and exponent < 0:
                places = max(places, -exponent)
        scale = 10**places
        return cls(tuple((m, int(v * scale)) for m, v in sorted(scaled.items())), scale)

    def cost(self, usage: Mapping[str, int]) -> int:
        total = 0
        for metric, rate in self.rates:
            amount = usage.get(metric)
            if amount:
                total += amount * rate
        return -(-total // self.scale)


_NO_PRICES = Pricing((), 1)


#: A counter's state in a world: ``[used, held, resets_at]`` (units, units, unix seconds).
_Value = list[int]


@dataclass(slots=True)
class _Grant:
    """What a granted request holds in one world until its record settles it: each
    counter's state (the list itself: settling needs no lookup), ask and metric."""

    counters: tuple[tuple[_Value, int, str], ...]
    estimate: dict[str, int]  # asks by metric, cost included
    pricing: Pricing


@dataclass(frozen=True, slots=True)
class _Counter:
    """One counter of a shape, as a decision reads it: its key within the scope
    (``metric:window:window_id``, interned), the lowest block line, cap and warn line over
    its limits (the store's gate, CounterPlan.charge), its limits (for a denial's reason)."""

    key: str
    metric: str
    block: int
    cap: int
    warn: int | None
    resets_at: int
    limits: tuple[Limit, ...]


def _compiled(counters: tuple[Any, ...]) -> tuple[_Counter, ...]:
    return tuple(
        _Counter(
            sys.intern(f"{c.metric}:{c.window.value}:{c.window_id}"),
            c.metric,
            c.block,
            c.cap,
            min((limit.warn_units for limit in c.limits if limit.warn_units is not None), default=None),
            c.resets_at,
            c.limits,
        )
        for c in counters
    )


class _World:
    """One policy's counters: ``scopes[subject or GLOBAL_SCOPE][counter key] = [used, held, resets_at]``."""

    __slots__ = ("current", "gates", "policy", "scopes")

    def __init__(self, policy: CompiledPolicy) -> None:
        self.policy = policy
        self.scopes: dict[str, dict[str, _Value]] = {GLOBAL_SCOPE: {}}
        #: (tier, feature, provider, model, metrics) -> an early denial's reason (or None)
        #: and the request's prices: what does not depend on the amounts, found once.
        self.gates: dict[
            tuple[str, str, str, str, tuple[str, ...]], tuple[Reason | None, Pricing, frozenset[str], frozenset[str]]
        ] = {}
        #: (tier, overrides, metrics) -> (valid from, valid until, the subject's counters, the company's)
        self.current: dict[
            tuple[str, tuple[OverrideRecord, ...], frozenset[str]],
            tuple[float, float, tuple[_Counter, ...], tuple[_Counter, ...]],
        ] = {}

    def _gate(
        self, tier: Tier, row: RecordedRow, usage: Mapping[str, int]
    ) -> tuple[Reason | None, Pricing, frozenset[str], frozenset[str]]:
        """The early denial (or None), the prices, the metrics asked and with ``cost_usd``."""
        key = (tier.name, row.feature, row.provider, row.model, tuple(usage))
        found = self.gates.get(key)
        if found is not None:
            return found
        # The engine's order of the early denials (engine.plan): feature, then price.
        reason: Reason | None = None
        _, unpriced, rates = self.policy.prices.cost_micros(row.provider, row.model, usage)
        if not tier.allows_feature(row.feature):
            reason = Reason.FEATURE_NOT_ALLOWED
        elif unpriced and self.policy.unpriced is UnpricedMode.DENY:
            reason = Reason.UNPRICED_MODEL
        metrics = frozenset(usage)
        found = (reason, Pricing.of(rates) if rates else _NO_PRICES, metrics, metrics | {COST_METRIC})
        if len(self.gates) > 4096:
            self.gates.clear()
        self.gates[key] = found
        return found

    def _counters(
        self, tier: Tier, config: SubjectConfig, metrics: frozenset[str], at_s: float
    ) -> tuple[tuple[_Counter, ...], tuple[_Counter, ...]]:
        """The compiled counters of (tier, overrides, metrics) while their windows are
        current: :func:`~quota_service.policy.engine.plan_shape` once per window, not per
        record (its cache is keyed the same way, but making its key and instant costs more
        than the rest of a decision)."""
        key = (tier.name, config.overrides, metrics)
        current = self.current.get(key)
        if current is not None and current[0] <= at_s < current[1]:
            return current[2], current[3]
        shape = plan_shape(self.policy, tier, config, metrics, datetime.fromtimestamp(at_s, UTC))
        own, company = _compiled(shape.own), _compiled(shape.company)
        if not any(o.expires_at for o in config.overrides):  # an expiry changes the shape within a window
            if len(self.current) > 4096:
                self.current.clear()
            self.current[key] = (shape.valid_from, shape.valid_until, own, company)
        return own, company

    def decide(
        self, row: RecordedRow, usage: Mapping[str, int], config: SubjectConfig, at_s: float
    ) -> tuple[Decision, Reason, str, _Grant | None]:
        """The decision at unix second ``at_s``, its reason, the tier served and what a
        grant would hold."""
        tier = self.policy.tier_for(config.tier)
        if tier is None:
            return Decision.DENY, Reason.UNKNOWN_TIER, config.tier or "", None
        early, pricing, metrics, with_cost = self._gate(tier, row, usage)
        if early is not None:
            return Decision.DENY, early, tier.name, None
        asks = dict(usage)
        if pricing.rates:
            cost = pricing.cost(usage)
            if cost:
                asks[COST_METRIC] = cost
                metrics = with_cost
        own_counters, company_counters = self._counters(tier, config, metrics, at_s)
        own = self.scopes.get(row.subject)
        if own is None:
            own = self.scopes[row.subject] = {}
        worst = Decision.ALLOW
        found: list[tuple[dict[str, _Value], _Counter, _Value | None, int]] = []
        deny: tuple[_Counter, _Value | None, int] | None = None
        for values, counters in ((own, own_counters), (self.scopes[GLOBAL_SCOPE], company_counters)):
            for c in counters:
                ask = asks[c.metric]
                value = values.get(c.key)
                uh = 0 if value is None else value[0] + value[1]
                # The rule over this counter's limits at once (engine.judge's lines, lowest first).
                if uh >= c.block or uh + ask > c.cap:
                    if deny is None:
                        deny = (c, value, ask)
                    worst = Decision.DENY
                elif c.warn is not None and uh + ask >= c.warn and worst is Decision.ALLOW:
                    worst = Decision.WARN
                found.append((values, c, value, ask))
        if deny is not None:
            c, value, ask = deny
            used, held = (0, 0) if value is None else (value[0], value[1])
            reason = next(
                (
                    why
                    for limit in c.limits
                    for decision, why in (judge(limit, used, held, ask),)
                    if decision is Decision.DENY
                ),
                Reason.LIMIT_EXCEEDED,
            )
            return Decision.DENY, reason, tier.name, None
        holds: list[tuple[_Value, int, str]] = []
        for values, c, value, ask in found:
            if value is None:
                value = values[c.key] = [0, 0, c.resets_at]
            holds.append((value, ask, c.metric))
        reason = Reason.WARN_THRESHOLD if worst is Decision.WARN else Reason.WITHIN_LIMITS
        return worst, reason, tier.name, _Grant(tuple(holds), asks, pricing)

    def hold(self, grant: _Grant) -> None:
        for value, ask, _ in grant.counters:
            value[1] += ask

    def charge_now(self, grant: _Grant) -> int:
        """Charge the ask at once (a request denied in reality); its cost."""
        for value, ask, _ in grant.counters:
            value[0] += ask
        return grant.estimate.get(COST_METRIC, 0)

    def settle(self, grant: _Grant, actual: Mapping[str, int] | None) -> int:
        """Release the hold and charge ``actual`` (units per metric; its ``cost_usd`` is
        ignored: the cost is priced at the grant's rates; ``None``: nothing, a release);
        the cost charged."""
        if actual is None:
            for value, ask, _ in grant.counters:
                value[1] -= ask
            return 0
        cost = grant.pricing.cost(actual) if grant.pricing.rates else 0
        for value, ask, metric in grant.counters:
            value[1] -= ask
            value[0] += cost if metric == COST_METRIC else actual.get(metric, 0)
        return cost

    def correct(self, grant: _Grant, delta: Mapping[str, int]) -> int:
        """Apply a CORRECTED record's difference to an EXPIRED grant; the cost difference."""
        estimate = {m: v for m, v in grant.estimate.items() if m != COST_METRIC}
        settled = {m: estimate[m] + delta.get(m, 0) for m in estimate}
        cost = grant.pricing.cost(settled) - grant.estimate.get(COST_METRIC, 0) if grant.pricing.rates else 0
        for value, _, metric in grant.counters:
            value[0] += cost if metric == COST_METRIC else delta.get(metric, 0)
        return cost

    def reset(self, subject: str, metric: str, window: str) -> None:
        for key, value in self.scopes.get(subject, {}).items():
            counter_metric, counter_window, _ = key.split(":", 2)
            if (not metric or counter_metric == metric) and (not window or counter_window == window):
                value[0] = 0

    def prune(self, now_s: int) -> None:
        """Drop the counters whose window ended and that hold nothing: no decision reads
        them again (a late settlement still lands on the grant's own list)."""
        for scope in list(self.scopes):
            values = self.scopes[scope]
            for key in [k for k, v in values.items() if v[2] <= now_s and v[1] <= 0]:
                del values[key]
            if not values and scope != GLOBAL_SCOPE:
                del self.scopes[scope]


# -- the timeline ------------------------------------------------------------------------------

# What a timeline entry does. At one instant admin changes go first, then requests and
# settlements in the order their rows were read (a request before its own settlement).
_ADMIN, _REQUEST, _SETTLE = 0, 1, 2


@dataclass(slots=True)
class _Pending:
    """A replayed request whose record has not settled yet, per world."""

    row: RecordedRow
    live: _Grant | None
    candidate: _Grant | None
    subject: SubjectReport
    tier: TierReport


class Simulation:
    """Feed rows in ``at_ms`` order (:meth:`feed`), then :meth:`finish` for the report.
    ``since_ms``/``until_ms``: requests made in ``[since_ms, until_ms)`` are replayed
    (``until_ms`` 0: no end). ``horizon_ms``: see the module docstring."""

    def __init__(
        self,
        live: CompiledPolicy,
        candidate: CompiledPolicy,
        *,
        since_ms: int = 0,
        until_ms: int = 0,
        horizon_ms: int = DEFAULT_HORIZON_MS,
    ) -> None:
        self._live = _World(live)
        self._candidate = _World(candidate)
        self._live_default = live.default_tier
        self._since_ms = since_ms
        self._until_ms = until_ms
        self._horizon_ms = horizon_ms
        self._heap: list[tuple[int, int, int, int, RecordedRow]] = []
        self._seq = 0
        self._admin: dict[str, _Admin] = {}
        self._pending: dict[str, _Pending] = {}  # reservation id -> a request not settled yet
        self._expired: dict[str, _Pending] = {}  # reservation id -> an EXPIRED grant (CORRECTED may follow)
        self._replayed = 0
        self.report = SimulationReport(live.version, candidate.version, since_ms, until_ms)

    # -- input ---------------------------------------------------------------------------

    def feed(self, row: RecordedRow) -> None:
        """One row, in ``at_ms`` order (ties in any order)."""
        self.report.rows += 1
        kind = row.kind
        if kind is RecordKind.ADMIN_CHANGE:
            self._push(row.at_ms, _ADMIN, row)
        elif kind is RecordKind.CORRECTED:
            self._push(row.at_ms, _SETTLE, row)
        else:
            requested = row.at_ms if kind is RecordKind.DENIED else (row.reserved_at_ms or row.at_ms)
            outside = requested < self._since_ms or (self._until_ms and requested >= self._until_ms)
            if outside or not any(v > 0 for m, v in row.estimate.items() if m != COST_METRIC):
                self.report.skipped += 1
            else:
                self._push(min(requested, row.at_ms), _REQUEST, row)
                if kind is not RecordKind.DENIED:
                    self._push(row.at_ms, _SETTLE, row)
        watermark = row.at_ms - self._horizon_ms
        heap = self._heap
        while heap and heap[0][0] < watermark:
            self._replay(heapq.heappop(heap))

    def _push(self, at_ms: int, action: int, row: RecordedRow) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at_ms, 0 if action == _ADMIN else 1, self._seq, action, row))

    def finish(self) -> SimulationReport:
        heap = self._heap
        while heap:
            self._replay(heapq.heappop(heap))
        return self.report

    # -- replay --------------------------------------------------------------------------

    def _replay(self, item: tuple[int, int, int, int, RecordedRow]) -> None:
        at_ms, _, _, action, row = item
        self._replayed += 1
        if self._replayed % _PRUNE_EVERY == 0:
            now_s = at_ms // 1000
            self._live.prune(now_s)
            self._candidate.prune(now_s)
        if action == _ADMIN:
            self._admin_change(row)
        elif action == _REQUEST:
            self._request(at_ms, row)
        elif row.kind is RecordKind.CORRECTED:
            self._correct(row)
        else:
            self._settle(row)

    def _admin_change(self, row: RecordedRow) -> None:
        subject = row.subject
        if not subject:
            return
        self.report.admin_changes += 1
        state = self._admin.setdefault(subject, _Admin())
        action, before, after = row.action, row.before, row.after
        if action == "SetTier" and isinstance(after, dict):
            state.tier = str(after.get("tier") or "") or None
            state.tier_seen = True
        elif action == "SetOverride" and isinstance(after, dict):
            metric, window = str(after.get("metric", "")), str(after.get("window", ""))
            units = _override_units(metric, after.get("max"))
            parsed = _window(window)
            if units is None or parsed is None:
                return
            expires_at = after.get("expires_at") or 0
            record = OverrideRecord(
                subject, metric, parsed, units, int(expires_at) if isinstance(expires_at, int) else 0
            )
            state.overrides[(metric, parsed)] = record
        elif action == "DeleteOverride" and isinstance(before, dict):
            parsed = _window(str(before.get("window", "")))
            if parsed is not None:
                state.overrides.pop((str(before.get("metric", "")), parsed), None)
        elif action == "ResetUsage":
            metric = str(after.get("metric") or "") if isinstance(after, dict) else ""
            window = str(after.get("window") or "") if isinstance(after, dict) else ""
            self._live.reset(subject, metric, window)
            self._candidate.reset(subject, metric, window)
            return
        else:
            return
        state.version += 1
        state.config = None

    def _config(self, row: RecordedRow) -> SubjectConfig:
        state = self._admin.get(row.subject)
        if state is None:
            state = self._admin[row.subject] = _Admin()
        return state.subject_config(row.tier, self._live_default)

    def _subject(self, subject: str, tier: str) -> SubjectReport:
        found = self.report.subjects.get(subject)
        if found is None:
            found = self.report.subjects[subject] = SubjectReport(subject, tier)
        return found

    def _tier(self, tier: str) -> TierReport:
        found = self.report.tiers.get(tier)
        if found is None:
            found = self.report.tiers[tier] = TierReport(tier)
        return found

    def _request(self, at_ms: int, row: RecordedRow) -> None:
        report = self.report
        report.requests += 1
        usage = row.estimate  # the ledger records no zero amounts (parse_usage drops them)
        if COST_METRIC in usage:
            usage = {m: v for m, v in usage.items() if m != COST_METRIC}
        config = self._config(row)
        at_s = at_ms / 1000
        denied = row.kind is RecordKind.DENIED
        if denied and row.reason in POLICY_FREE_REASONS:
            live_d, live_r, live_tier, live_grant = Decision.DENY, Reason(row.reason), row.tier, None
            cand_d, cand_r, cand_grant = live_d, live_r, None
        else:
            live_d, live_r, live_tier, live_grant = self._live.decide(row, usage, config, at_s)
            cand_d, cand_r, _, cand_grant = self._candidate.decide(row, usage, config, at_s)
        recorded = Decision.DENY if denied else Decision(row.decision) if row.decision else None
        if recorded is not None and recorded is not live_d:
            report.live_mismatches += 1
        tier = self._tier(live_tier or row.tier)
        subject = self._subject(row.subject, tier.tier)
        subject.tier = tier.tier
        tier.requests += 1
        tier.subjects.add(row.subject)
        subject.requests += 1
        if live_d is not cand_d:
            name = change_name(live_d, cand_d)
            tier.changes[name] = tier.changes.get(name, 0) + 1
            subject.changes[name] = subject.changes.get(name, 0) + 1
        if cand_d is Decision.DENY and not subject.first_denied_ms:
            subject.first_denied_ms = at_ms
            subject.first_denied_reason = cand_r.value
        if live_d is Decision.DENY and not subject.live_first_denied_ms:
            subject.live_first_denied_ms = at_ms
        if denied:
            # Nothing recorded says what it would have used: a grant consumes its ask.
            if live_grant is not None:
                cost = self._live.charge_now(live_grant)
                tier.live_cost_micros += cost
                subject.live_cost_micros += cost
            if cand_grant is not None:
                cost = self._candidate.charge_now(cand_grant)
                tier.candidate_cost_micros += cost
                subject.candidate_cost_micros += cost
            return
        if live_grant is not None:
            self._live.hold(live_grant)
        if cand_grant is not None:
            self._candidate.hold(cand_grant)
        self._pending[row.id] = _Pending(row, live_grant, cand_grant, subject, tier)

    def _settle(self, row: RecordedRow) -> None:
        pending = self._pending.pop(row.id, None)
        if pending is None:
            return
        actual: Mapping[str, int] | None
        if row.kind is RecordKind.COMMITTED:
            actual = row.actual
        elif row.kind is RecordKind.EXPIRED:
            actual = row.estimate
        else:
            actual = None
        subject, tier = pending.subject, pending.tier
        subject.recorded_cost_micros += row.cost_micros
        tier.recorded_cost_micros += row.cost_micros
        if pending.live is not None:
            cost = self._live.settle(pending.live, actual)
            subject.live_cost_micros += cost
            tier.live_cost_micros += cost
        if pending.candidate is not None:
            cost = self._candidate.settle(pending.candidate, actual)
            subject.candidate_cost_micros += cost
            tier.candidate_cost_micros += cost
        if row.kind is RecordKind.EXPIRED and row.reservation_id:
            self._expired[row.reservation_id] = pending

    def _correct(self, row: RecordedRow) -> None:
        pending = self._expired.pop(row.reservation_id, None)
        if pending is None:
            return
        subject, tier = pending.subject, pending.tier
        subject.recorded_cost_micros += row.cost_micros
        tier.recorded_cost_micros += row.cost_micros
        delta = {m: v for m, v in row.actual.items() if m != COST_METRIC}
        if pending.live is not None:
            cost = self._live.correct(pending.live, delta)
            subject.live_cost_micros += cost
            tier.live_cost_micros += cost
        if pending.candidate is not None:
            cost = self._candidate.correct(pending.candidate, delta)
            subject.candidate_cost_micros += cost
            tier.candidate_cost_micros += cost


def simulate(
    rows: Iterable[RecordedRow],
    live: CompiledPolicy,
    candidate: CompiledPolicy,
    *,
    since_ms: int = 0,
    until_ms: int = 0,
    horizon_ms: int = DEFAULT_HORIZON_MS,
) -> SimulationReport:
    """Replay ``rows`` (in ``at_ms`` order) under both policies: see the module docstring."""
    simulation = Simulation(live, candidate, since_ms=since_ms, until_ms=until_ms, horizon_ms=horizon_ms)
    for row in rows:
        simulation.feed(row)
    return simulation.finish()
