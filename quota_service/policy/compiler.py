"""Validated model -> immutable :class:`~quota_service.policy.compiled.CompiledPolicy`.

Pure: no I/O, no YAML. Resolves everything the engine would otherwise look up at request
time:

* a tier's ``limits`` become :class:`Limit` (``LimitKind.TIER``) carrying the tier's
  thresholds merged over the policy's defaults;
* a tier's hard stops are its own ``hard_stops`` if given, else the policy's
  ``hard_stops.per_subject`` (``LimitKind.HARD_STOP``, no thresholds);
* ``hard_stops.global`` becomes ``global_limits`` (``LimitKind.GLOBAL``, no thresholds);
* ``on_store_error`` and ``reservation_ttl_seconds`` inherit the policy's when a tier omits them;
* ``features: ["*"]`` sets ``all_features`` (other names listed beside ``"*"`` are kept);
* ``notifications.webhooks`` become :class:`~quota_service.policy.notifications.WebhookSpec`
  (kinds without the ``EVENT_KIND_`` prefix, repeats dropped); ``ledger_retention_days``
  absent is 0 (kept for ever);
* caps become whole units (:mod:`~quota_service.policy.units`: ``cost_usd`` USD -> micro-dollars).

Limits keep the order of the file (metric, then window as written). Every container in the
result is immutable: tuples, frozensets and :class:`~types.MappingProxyType`.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from types import MappingProxyType
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from quota_service.policy.compiled import (
    CompiledPolicy,
    CrossRule,
    Limit,
    LimitKind,
    PriceTable,
    Thresholds,
    Tier,
)
from quota_service.policy.model import (
    CrossRuleModel,
    NotificationsModel,
    PolicyModel,
    TierModel,
    TierThresholdsModel,
    describe,
    semantic_issues,
)
from quota_service.policy.notifications import Notifications, WebhookSpec
from quota_service.policy.units import exact_units
from quota_service.policy.windows import Window

__all__ = ["ALL_FEATURES", "compile_policy"]

ALL_FEATURES = "*"


def compile_policy(model: PolicyModel, *, files: tuple[str, ...], version: str) -> CompiledPolicy:
    """Compile a validated policy. ``files`` and ``version`` (a content hash) are recorded as
    given. Raises :class:`ValueError` if ``model`` fails :func:`semantic_issues` (the loader
    checks that first and reports it with file and line)."""
    problems = semantic_issues(model)
    if problems:
        raise ValueError("policy model is not valid: " + "; ".join(f"{loc}: {msg}" for loc, msg in problems))
    defaults = Thresholds(warn_at=model.thresholds.warn_at, block_at=model.thresholds.block_at)
    per_subject = _limits(model.hard_stops.per_subject, LimitKind.HARD_STOP, None)
    tiers = {
        name: _tier(name, tier, model=model, defaults=defaults, per_subject=per_subject)
        for name, tier in model.tiers.items()
    }
    prices = PriceTable(
        MappingProxyType({pattern: MappingProxyType(dict(rates)) for pattern, rates in model.prices.items()})
    )
    return CompiledPolicy(
        version=version,
        files=tuple(files),
        timezone=ZoneInfo(model.timezone),
        default_tier=model.default_tier,
        tiers=MappingProxyType(tiers),
        prices=prices,
        unpriced=model.unpriced,
        global_limits=_limits(model.hard_stops.global_, LimitKind.GLOBAL, None),
        reservation_ttl_seconds=model.reservation_ttl_seconds,
        on_store_error=model.on_store_error,
        thresholds=defaults,
        notifications=_notifications(model.notifications),
        ledger_retention_days=model.ledger_retention_days or 0,
        on_store_lost=model.on_store_lost,
    )


def _notifications(model: NotificationsModel) -> Notifications:
    """Webhooks in the file's order; a webhook without a name is named after its URL's host."""
    return Notifications(
        webhooks=tuple(
            WebhookSpec(
                name=hook.name or (urlsplit(hook.url).hostname or hook.url),
                url=hook.url,
                secret_env=hook.secret_env,
                kinds=tuple(dict.fromkeys(hook.kinds)),
                tiers=tuple(dict.fromkeys(hook.tiers)),
            )
            for hook in model.webhooks
        )
    )


def _tier(
    name: str,
    tier: TierModel,
    *,
    model: PolicyModel,
    defaults: Thresholds,
    per_subject: tuple[Limit, ...],
) -> Tier:
    thresholds = _merge_thresholds(tier.thresholds, defaults)
    hard_stops = per_subject if tier.hard_stops is None else _limits(tier.hard_stops, LimitKind.HARD_STOP, None)
    return Tier(
        name=name,
        display_name=tier.display_name or name,
        features=frozenset(f for f in tier.features if f != ALL_FEATURES),
        all_features=ALL_FEATURES in tier.features,
        limits=_limits(tier.limits, LimitKind.TIER, thresholds),
        hard_stops=hard_stops,
        thresholds=thresholds,
        on_store_error=model.on_store_error if tier.on_store_error is None else tier.on_store_error,
        reservation_ttl_seconds=(
            model.reservation_ttl_seconds if tier.reservation_ttl_seconds is None else tier.reservation_ttl_seconds
        ),
        commit_max_ratio=model.commit_max_ratio if tier.commit_max_ratio is None else tier.commit_max_ratio,
        on_cross=tuple(_cross_rule(rule) for rule in [*model.on_cross, *tier.on_cross]),
        fail_open_allowance=(
            model.fail_open_allowance if tier.fail_open_allowance is None else tier.fail_open_allowance
        ),
    )


def _cross_rule(rule: CrossRuleModel) -> CrossRule:
    name = rule.name or f"{rule.metric}-{rule.window.value}-{rule.threshold}"
    return CrossRule(name, rule.metric, rule.window, rule.threshold, rule.stop_subject_for)


def _merge_thresholds(own: TierThresholdsModel | None, defaults: Thresholds) -> Thresholds:
    if own is None:
        return defaults
    return Thresholds(
        warn_at=defaults.warn_at if own.warn_at is None else own.warn_at,
        block_at=defaults.block_at if own.block_at is None else own.block_at,
    )


def _limits(
    caps: Mapping[str, Mapping[Window, Decimal]], kind: LimitKind, thresholds: Thresholds | None
) -> tuple[Limit, ...]:
    return tuple(
        Limit(metric, window, _units(metric, amount), kind, thresholds)
        for metric, windows in caps.items()
        for window, amount in windows.items()
    )


def _units(metric: str, amount: Decimal) -> int:
    units = exact_units(metric, amount)
    if units is None:  # pragma: no cover - semantic_issues rejects it first
        raise ValueError(f"{metric} cap {describe(amount)} is not a whole number of units")
    return units
