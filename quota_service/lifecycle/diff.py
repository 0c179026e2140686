"""What changes between two compiled policies: ``quota-service diff-policy OLD NEW``,
``quotactl reload --dry-run`` and the last change a reload swapped in (``GetPolicyStatus``).

Pure: two :class:`~quota_service.policy.compiled.CompiledPolicy` in, a :class:`PolicyDiff`
out; no I/O, no YAML (the loader made the policies). Both policies are *flattened* into
``(tier, category, key) -> value`` entries, where ``tier`` is ``""`` for what is
policy-wide, and every entry whose value differs (or that exists on one side only) is a
:class:`Change`. Values are compared as the engine sees them (units, exact decimals), so
``0.8`` and ``0.80`` are the same threshold and a comment or a reordering is no change.

Categories (:class:`Category`), per tier: ``cap`` (a tier limit, ``tokens/day``),
``hard_stop`` (the tier's own hard stops, or ``hard_stops.per_subject`` it inherits),
``threshold`` (the tier's effective ``warn_at`` / ``block_at``), ``feature`` (one entry per
feature the tier includes; ``*`` for every feature), ``tier`` (its display name: a tier
added or removed shows here), ``setting`` (``on_store_error``, ``reservation_ttl_seconds``,
``commit_max_ratio``, ``fail_open_allowance``) and ``on_cross`` (one entry per rule).
Policy-wide: ``global_limit`` (company-wide caps), ``price`` (``pattern metric``, USD per
unit), ``threshold`` (the defaults), ``setting`` (``default_tier``, ``timezone``,
``unpriced``, ``on_store_error``, ``reservation_ttl_seconds``, ``on_store_lost``,
``ledger_retention_days``) and ``webhook`` (one entry per webhook name).

Amounts in :attr:`Change.before` / :attr:`Change.after` are exact decimal strings in the
metric's own measure (USD for ``cost_usd``, USD per unit for prices); ``None`` means the
entry does not exist on that side (added, or removed). :meth:`PolicyDiff.text` is for
people; :meth:`PolicyDiff.to_json_obj` for scripts.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from quota_service.policy.compiled import CompiledPolicy, CrossRule, Limit, Tier
from quota_service.policy.domain import CounterRef, CounterValue, Decision, Reason, SubjectConfig
from quota_service.policy.engine import CounterPlan, LimitReport, report_usage, usage_counters
from quota_service.policy.messages import format_amount, limit_label
from quota_service.policy.units import scale

__all__ = ["Category", "Change", "PolicyDiff", "Standing", "diff_policies", "standing", "standing_counters"]

#: The section of policy-wide entries (``Change.tier``).
POLICY_WIDE = ""
#: Most changes a one-line summary names; the rest are counted.
SUMMARY_CHANGES = 8


class Category(enum.StrEnum):
    CAP = "cap"
    HARD_STOP = "hard_stop"
    GLOBAL_LIMIT = "global_limit"
    THRESHOLD = "threshold"
    PRICE = "price"
    FEATURE = "feature"
    TIER = "tier"
    SETTING = "setting"
    ON_CROSS = "on_cross"
    WEBHOOK = "webhook"


#: Where a category's entries are amounts of a metric (their key starts ``metric/``).
_AMOUNTS = frozenset({Category.CAP, Category.HARD_STOP, Category.GLOBAL_LIMIT})
#: The order of categories within a section (most consequential first).
_ORDER = (
    Category.TIER,
    Category.CAP,
    Category.HARD_STOP,
    Category.GLOBAL_LIMIT,
    Category.THRESHOLD,
    Category.FEATURE,
    Category.PRICE,
    Category.SETTING,
    Category.ON_CROSS,
    Category.WEBHOOK,
)

Value = int | Decimal | str
Entries = dict[tuple[str, Category, str], Value]
Put = Callable[[str, Category, str, Value], None]


@dataclass(frozen=True, slots=True)
class Change:
    """One entry that differs. ``tier``: ``""`` for a policy-wide entry. ``before`` /
    ``after``: exact text of the value, ``None`` where the entry does not exist."""

    tier: str
    category: Category
    key: str
    before: str | None
    after: str | None
    #: The same values for people (``$10.00``, ``1,000 tokens``, ``80%``); "-" when absent.
    shown_before: str = "-"
    shown_after: str = "-"

    @property
    def kind(self) -> str:
        """``added``, ``removed`` or ``changed``."""
        if self.before is None:
            return "added"
        if self.after is None:
            return "removed"
        return "changed"

    def line(self) -> str:
        """``cap tokens/day: 1,000 tokens -> 500 tokens`` (what people read)."""
        if self.category is Category.FEATURE:
            return f"feature {self.key}: {'added' if self.after is not None else 'removed'}"
        return f"{self.category.value} {self.key}: {self.shown_before} -> {self.shown_after}"

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "category": self.category.value,
            "key": self.key,
            "change": self.kind,
            "before": self.before,
            "after": self.after,
        }


@dataclass(frozen=True, slots=True)
class PolicyDiff:
    """Every change from ``old_version`` to ``new_version``, policy-wide first, then by tier
    (sorted by name), each section in :data:`_ORDER` then by key."""

    old_version: str
    new_version: str
    changes: tuple[Change, ...]
    #: Tiers only in the new policy, and only in the old one.
    tiers_added: tuple[str, ...] = ()
    tiers_removed: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def sections(self) -> list[tuple[str, list[Change]]]:
        """``[(tier, changes)]``: ``""`` (policy-wide) first, then tiers by name."""
        grouped: dict[str, list[Change]] = {}
        for change in self.changes:
            grouped.setdefault(change.tier, []).append(change)
        return sorted(grouped.items(), key=lambda item: (item[0] != POLICY_WIDE, item[0]))

    def heading(self, tier: str) -> str:
        if tier == POLICY_WIDE:
            return "policy-wide"
        if tier in self.tiers_added:
            return f"tier {tier} (added)"
        if tier in self.tiers_removed:
            return f"tier {tier} (removed)"
        return f"tier {tier}"

    def text(self) -> str:
        """For people: a header line, then each section with one indented line per change."""
        if not self.changes:
            return f"no change: policy {self.old_version} and {self.new_version} decide the same"
        count = len(self.changes)
        lines = [f"policy {self.old_version} -> {self.new_version}: {count} change{'s' if count != 1 else ''}"]
        for tier, changes in self.sections():
            lines.append(f"{self.heading(tier)}:")
            lines.extend(f"  {change.line()}" for change in changes)
        return "\n".join(lines)

    def summary(self, limit: int = SUMMARY_CHANGES) -> str:
        """One line: ``free_alpha: cap tokens/day: 1,000 tokens -> 500 tokens; ... (+3 more)``."""
        if not self.changes:
            return "no change"
        parts = [f"{change.tier or 'policy'}: {change.line()}" for change in self.changes[:limit]]
        rest = len(self.changes) - limit
        return "; ".join(parts) + (f" (+{rest} more)" if rest > 0 else "")

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "old_version": self.old_version,
            "new_version": self.new_version,
            "tiers_added": list(self.tiers_added),
            "tiers_removed": list(self.tiers_removed),
            "changes": [change.to_json_obj() for change in self.changes],
        }


def diff_policies(old: CompiledPolicy, new: CompiledPolicy) -> PolicyDiff:
    """Every semantic difference from ``old`` to ``new`` (see the module docstring)."""
    before, after = _entries(old), _entries(new)
    changes = [
        _change(key, before.get(key), after.get(key))
        for key in set(before) | set(after)
        if before.get(key) != after.get(key)
    ]
    rank = {category: i for i, category in enumerate(_ORDER)}
    changes.sort(key=lambda c: (c.tier != POLICY_WIDE, c.tier, rank[c.category], c.key))
    return PolicyDiff(
        old_version=old.version,
        new_version=new.version,
        changes=tuple(changes),
        tiers_added=tuple(sorted(set(new.tiers) - set(old.tiers))),
        tiers_removed=tuple(sorted(set(old.tiers) - set(new.tiers))),
    )


# -- flattening -------------------------------------------------------------------------------


def _entries(policy: CompiledPolicy) -> Entries:
    entries: Entries = {}

    def put(tier: str, category: Category, key: str, value: Value) -> None:
        entries[(tier, category, key)] = value

    wide = POLICY_WIDE
    put(wide, Category.SETTING, "default_tier", policy.default_tier)
    put(wide, Category.SETTING, "timezone", policy.timezone.key)
    put(wide, Category.SETTING, "unpriced", policy.unpriced.value)
    put(wide, Category.SETTING, "on_store_error", policy.on_store_error.value)
    put(wide, Category.SETTING, "reservation_ttl_seconds", policy.reservation_ttl_seconds)
    put(wide, Category.SETTING, "on_store_lost", policy.on_store_lost.value)
    put(wide, Category.SETTING, "ledger_retention_days", policy.ledger_retention_days)
    put(wide, Category.THRESHOLD, "warn_at", policy.thresholds.warn_at)
    put(wide, Category.THRESHOLD, "block_at", policy.thresholds.block_at)
    _put_limits(put, wide, Category.GLOBAL_LIMIT, policy.global_limits)
    for pattern, rates in policy.prices.entries.items():
        for metric, rate in rates.items():
            put(wide, Category.PRICE, f"{pattern} {metric}", rate)
    for hook in policy.notifications.webhooks:
        kinds = ",".join(hook.kinds) or "every kind"
        tiers = ",".join(hook.tiers) or "every tier"
        put(wide, Category.WEBHOOK, hook.name, f"{hook.url} secret_env={hook.secret_env} kinds={kinds} tiers={tiers}")
    for name, tier in policy.tiers.items():
        _put_tier(put, name, tier)
    return entries


def _put_tier(put: Put, name: str, tier: Tier) -> None:
    put(name, Category.TIER, "display_name", tier.display_name)
    _put_limits(put, name, Category.CAP, tier.limits)
    _put_limits(put, name, Category.HARD_STOP, tier.hard_stops)
    put(name, Category.THRESHOLD, "warn_at", tier.thresholds.warn_at)
    put(name, Category.THRESHOLD, "block_at", tier.thresholds.block_at)
    for feature in sorted(tier.features) + (["*"] if tier.all_features else []):
        put(name, Category.FEATURE, feature, "included")
    put(name, Category.SETTING, "on_store_error", tier.on_store_error.value)
    put(name, Category.SETTING, "reservation_ttl_seconds", tier.reservation_ttl_seconds)
    put(name, Category.SETTING, "commit_max_ratio", tier.commit_max_ratio)
    put(name, Category.SETTING, "fail_open_allowance", tier.fail_open_allowance)
    for rule in tier.on_cross:
        put(name, Category.ON_CROSS, rule.name, _rule_text(rule))


def _put_limits(put: Put, tier: str, category: Category, limits: Iterable[Limit]) -> None:
    for limit in limits:
        put(tier, category, f"{limit.metric}/{limit.window.value}", limit.max_units)


def _rule_text(rule: CrossRule) -> str:
    return f"{rule.metric}/{rule.window.value} at {rule.threshold}: stop the subject for {rule.stop_seconds} s"


# -- rendering ---------------------------------------------------------------------------------


def _decimal_text(value: Decimal) -> str:
    """Exact, without trailing zeros or exponent: ``0.8``, ``1000``, ``0.0000006``."""
    return f"{value.normalize():f}"


def _exact(category: Category, key: str, value: Value) -> str:
    if category in _AMOUNTS and isinstance(value, int):
        metric = key.split("/", 1)[0]
        return _decimal_text(Decimal(value) / scale(metric))
    if isinstance(value, Decimal):
        return _decimal_text(value)
    return str(value)


def _shown(category: Category, key: str, value: Value | None) -> str:
    if value is None:
        return "-"
    if category in _AMOUNTS and isinstance(value, int):
        return format_amount(key.split("/", 1)[0], value)
    if category is Category.THRESHOLD and isinstance(value, Decimal):
        return f"{_decimal_text(value * 100)}%"
    if category is Category.PRICE and isinstance(value, Decimal):
        return f"${_decimal_text(value)}"
    return _exact(category, key, value)


def _change(key: tuple[str, Category, str], before: Value | None, after: Value | None) -> Change:
    tier, category, name = key
    return Change(
        tier=tier,
        category=category,
        key=name,
        before=None if before is None else _exact(category, name, before),
        after=None if after is None else _exact(category, name, after),
        shown_before=_shown(category, name, before),
        shown_after=_shown(category, name, after),
    )


# -- who would be WARN or DENY now ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Standing:
    """A subject's answer under a policy right now with nothing asked (the next request's
    lower bound): the worst decision over its per-subject limits, why, and the deciding limit
    (the one nearest, or furthest past, its cap). ``deciding`` is ``None`` for ALLOW and for
    a tier that does not exist (DENY ``UNKNOWN_TIER``)."""

    subject: str
    tier: str
    decision: Decision
    reason: Reason
    message: str
    deciding: LimitReport | None = None


def standing_counters(
    policy: CompiledPolicy, subject: str, config: SubjectConfig, now: datetime
) -> tuple[CounterPlan, ...]:
    """The subject's counters under ``policy`` (what :func:`standing` needs the values of)."""
    tier = policy.tier_for(config.tier)
    return () if tier is None else usage_counters(policy, tier, config, subject, now)


def standing(
    policy: CompiledPolicy,
    subject: str,
    config: SubjectConfig,
    values: Mapping[CounterRef, CounterValue],
    now: datetime,
) -> Standing:
    """The decision rule of every per-subject limit (tier caps, overrides, hard stops) with
    ``ask = 0`` on the counter ``values`` (a missing counter counts as zero): DENY when a
    limit is at its block line or past its cap, WARN at its warn line. Company-wide caps
    are not a subject's standing and are left out."""
    tier = policy.tier_for(config.tier)
    if tier is None:
        return Standing(subject, "", Decision.DENY, Reason.UNKNOWN_TIER, f"tier {config.tier!r} does not exist")
    reports = report_usage(usage_counters(policy, tier, config, subject, now), values)
    worst = max((r.decision for r in reports), default=Decision.ALLOW)
    if worst is Decision.ALLOW:
        return Standing(subject, tier.name, Decision.ALLOW, Reason.WITHIN_LIMITS, "within limits")
    deciding = max((r for r in reports if r.decision is worst), key=lambda r: r.ratio)
    limit = deciding.limit
    message = (
        f"{limit_label(limit)}: {format_amount(limit.metric, deciding.used + deciding.held)} used or held "
        f"of {format_amount(limit.metric, limit.max_units)} ({deciding.ratio:.0%})"
    )
    return Standing(subject, tier.name, worst, deciding.reason, message, deciding)
