"""Model -> CompiledPolicy: the shipped seed plan's exact numbers, inheritance, prices, immutability."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from quota_service.policy.compiled import CompiledPolicy, Limit, LimitKind, StoreErrorMode, Thresholds, UnpricedMode
from quota_service.policy.compiler import compile_policy
from quota_service.policy.loader import load_policy
from quota_service.policy.model import PolicyModel
from quota_service.policy.windows import Window

pytestmark = pytest.mark.unit

ALPHA = Path(__file__).resolve().parents[3] / "policies" / "alpha.yaml"
DEFAULT = Thresholds(Decimal("0.80"), Decimal("0.95"))


def _rows(limits: tuple[Limit, ...]) -> list[tuple[str, Window, int, int | None, int]]:
    return [(lim.metric, lim.window, lim.max_units, lim.warn_units, lim.block_units) for lim in limits]


def _compile(document: dict[str, Any]) -> CompiledPolicy:
    return compile_policy(PolicyModel.model_validate(document), files=("inline.yaml",), version="v")


def _minimal(**extra: Any) -> dict[str, Any]:
    tier = {"features": ["blog_writer"], "limits": {"tokens": {"day": 1000}}}
    return {"version": 1, "default_tier": "free", "tiers": {"free": tier}, **extra}


# --- the seed plan -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alpha() -> CompiledPolicy:
    return load_policy(ALPHA)


def test_free_alpha_limits_in_units(alpha: CompiledPolicy) -> None:
    free = alpha.tiers["free_alpha"]
    assert free.display_name == "Free Alpha"
    assert _rows(free.limits) == [
        ("tokens", Window.DAY, 1000, 800, 950),
        ("images", Window.DAY, 5, 4, 5),
        ("cost_usd", Window.MONTH, 10_000_000, 8_000_000, 9_500_000),
    ]
    assert all(lim.kind is LimitKind.TIER and lim.thresholds == DEFAULT for lim in free.limits)


def test_basic_alpha_limits_in_units(alpha: CompiledPolicy) -> None:
    basic = alpha.tiers["basic_alpha"]
    assert basic.display_name == "Basic Alpha"
    assert _rows(basic.limits) == [
        ("tokens", Window.DAY, 10_000, 8_000, 9_500),
        ("images", Window.DAY, 50, 40, 48),
        ("cost_usd", Window.MONTH, 100_000_000, 80_000_000, 95_000_000),
    ]


def test_pro_alpha_limits_in_units(alpha: CompiledPolicy) -> None:
    pro = alpha.tiers["pro_alpha"]
    assert pro.display_name == "Pro Alpha"
    assert _rows(pro.limits) == [
        ("tokens", Window.DAY, 50_000, 40_000, 47_500),
        ("images", Window.DAY, 200, 160, 190),
        ("cost_usd", Window.MONTH, 500_000_000, 400_000_000, 475_000_000),
    ]


def test_hard_stops_free_inherits_per_subject_others_replace_it(alpha: CompiledPolicy) -> None:
    assert _rows(alpha.tiers["free_alpha"].hard_stops) == [
        ("tokens", Window.DAY, 1000, None, 1000),
        ("cost_usd", Window.DAY, 5_000_000, None, 5_000_000),
    ]
    assert _rows(alpha.tiers["basic_alpha"].hard_stops) == [
        ("tokens", Window.DAY, 12_000, None, 12_000),
        ("cost_usd", Window.DAY, 10_000_000, None, 10_000_000),
    ]
    assert _rows(alpha.tiers["pro_alpha"].hard_stops) == [
        ("tokens", Window.DAY, 60_000, None, 60_000),
        ("cost_usd", Window.DAY, 25_000_000, None, 25_000_000),
    ]
    for tier in alpha.tiers.values():
        assert all(lim.kind is LimitKind.HARD_STOP and lim.thresholds is None for lim in tier.hard_stops)


def test_global_cap(alpha: CompiledPolicy) -> None:
    assert _rows(alpha.global_limits) == [("cost_usd", Window.DAY, 200_000_000, None, 200_000_000)]
    assert alpha.global_limits[0].kind is LimitKind.GLOBAL


def test_features(alpha: CompiledPolicy) -> None:
    free, basic, pro = (alpha.tiers[n] for n in ("free_alpha", "basic_alpha", "pro_alpha"))
    assert free.features == frozenset({"blog_writer", "basic_seo"}) and not free.all_features
    assert basic.features == frozenset({"blog_writer", "seo_analysis", "content_planning"})
    assert not basic.allows_feature("basic_seo")
    assert pro.all_features and pro.features == frozenset()
    assert pro.allows_feature("anything_new")


def test_settings_and_inheritance(alpha: CompiledPolicy) -> None:
    assert alpha.thresholds == DEFAULT
    assert alpha.unpriced is UnpricedMode.DENY
    assert alpha.on_store_error is StoreErrorMode.DENY
    assert {n: t.on_store_error for n, t in alpha.tiers.items()} == {
        "free_alpha": StoreErrorMode.DENY,
        "basic_alpha": StoreErrorMode.DENY,
        "pro_alpha": StoreErrorMode.ALLOW,
    }
    assert {t.reservation_ttl_seconds for t in alpha.tiers.values()} == {300}
    assert all(t.thresholds == DEFAULT for t in alpha.tiers.values())
    assert alpha.tier_for(None) is alpha.tiers["free_alpha"]


# --- prices ------------------------------------------------------------------------------------


def test_price_resolution_is_most_specific_per_metric(alpha: CompiledPolicy) -> None:
    prices = alpha.prices
    assert prices.rate("openai", "gpt-4o-mini", "tokens") == Decimal("0.0000006")
    assert prices.rate("openai", "gpt-4o", "tokens") == Decimal("0.00001")
    assert prices.rate("anthropic", "claude-sonnet-4", "tokens") == Decimal("0.000015")
    assert prices.rate("stability", "sd3", "images") == Decimal("0.04")
    # neither the model nor its provider prices images / tokens: the "*" fallback does
    assert prices.rate("openai", "gpt-4o-mini", "images") == Decimal("0.05")
    assert prices.rate("stability", "sd3", "tokens") == Decimal("0.0001")
    assert prices.rate("acme", "x", "tokens") == Decimal("0.0001")
    assert prices.priced_metrics == frozenset({"tokens", "images"})


def test_twenty_images_at_five_cents_are_exactly_one_dollar(alpha: CompiledPolicy) -> None:
    assert alpha.prices.cost_micros("acme", "painter", {"images": 20}) == (
        1_000_000,
        [],
        {"images": Decimal("0.05")},
    )


def test_token_cost_rounds_up_to_whole_micro_dollars(alpha: CompiledPolicy) -> None:
    # 1 token of gpt-4o-mini = $0.0000006 -> 0.6 micro-dollars -> 1
    mini = {"tokens": Decimal("0.0000006")}
    assert alpha.prices.cost_micros("openai", "gpt-4o-mini", {"tokens": 1}) == (1, [], mini)
    assert alpha.prices.cost_micros("openai", "gpt-4o-mini", {"tokens": 1_000_000}) == (600_000, [], mini)


def test_metric_priced_elsewhere_but_not_here_is_unpriced() -> None:
    policy = _compile(_minimal(prices={"openai/*": {"tokens": 0.000002}}))
    assert policy.prices.cost_micros("acme", "x", {"tokens": 10, "requests": 1}) == (0, ["tokens"], {})


# --- compile_policy on models built in Python ----------------------------------------------------


def test_python_floats_become_exact_decimals() -> None:
    policy = _compile(_minimal(thresholds={"warn_at": 0.7, "block_at": 0.9}, prices={"*": {"images": 0.05}}))
    assert policy.thresholds == Thresholds(Decimal("0.7"), Decimal("0.9"))
    assert policy.prices.rate("a", "b", "images") == Decimal("0.05")


def test_tier_overrides_merge_over_the_defaults() -> None:
    document = _minimal(reservation_ttl_seconds=120, on_store_error="allow")
    document["tiers"]["pro"] = {
        "display_name": "Pro",
        "features": ["*"],
        "limits": {"tokens": {"day": 100}},
        "thresholds": {"warn_at": 0.9},
        "on_store_error": "deny",
        "reservation_ttl_seconds": 600,
        "hard_stops": {},
    }
    document["hard_stops"] = {"per_subject": {"tokens": {"minute": 50}}}
    policy = _compile(document)
    free, pro = policy.tiers["free"], policy.tiers["pro"]
    assert free.display_name == "free"
    assert free.thresholds == DEFAULT
    assert free.on_store_error is StoreErrorMode.ALLOW
    assert free.reservation_ttl_seconds == 120
    assert _rows(free.hard_stops) == [("tokens", Window.MINUTE, 50, None, 50)]
    assert pro.thresholds == Thresholds(Decimal("0.9"), Decimal("0.95"))
    assert _rows(pro.limits) == [("tokens", Window.DAY, 100, 90, 95)]
    assert pro.on_store_error is StoreErrorMode.DENY
    assert pro.reservation_ttl_seconds == 600
    assert pro.hard_stops == ()  # an empty hard_stops mapping replaces per_subject with nothing
    assert policy.files == ("inline.yaml",) and policy.version == "v"


def test_compiled_policy_is_immutable() -> None:
    policy = _compile(_minimal(prices={"*": {"tokens": 0.0001}}))
    assert isinstance(policy.tiers, MappingProxyType)
    assert isinstance(policy.prices.entries, MappingProxyType)
    assert isinstance(policy.prices.entries["*"], MappingProxyType)
    assert isinstance(policy.tiers["free"].limits, tuple)
    assert isinstance(policy.tiers["free"].features, frozenset)
    with pytest.raises(TypeError):
        policy.tiers["x"] = policy.tiers["free"]  # type: ignore[index]
    with pytest.raises(TypeError):
        policy.prices.entries["*"]["tokens"] = Decimal(0)  # type: ignore[index]


def test_compile_refuses_a_model_with_semantic_issues() -> None:
    with pytest.raises(ValueError, match="default_tier"):
        _compile({**_minimal(), "default_tier": "gold"})
