"""check-policy's summary: readable, in human units."""

from __future__ import annotations

from pathlib import Path

import pytest

from quota_service.policy.loader import load_policy
from quota_service.policy.messages import format_amount
from quota_service.policy.report import summarize

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
ALPHA = ROOT / "policies" / "alpha.yaml"


@pytest.mark.parametrize(
    ("metric", "units", "shown"),
    [
        ("cost_usd", 10_000_000, "$10.00"),
        ("cost_usd", 200_000_000_000, "$200,000.00"),
        ("cost_usd", 9_500_000, "$9.50"),
        ("cost_usd", 1, "$0.000001"),
        ("cost_usd", 1_234_567, "$1.234567"),
        ("cost_usd", 0, "$0.00"),
        ("tokens", 1000, "1,000 tokens"),
        ("images", 5, "5 images"),
    ],
)
def test_format_amount(metric: str, units: int, shown: str) -> None:
    assert format_amount(metric, units) == shown


def test_summary_of_the_seed_plan() -> None:
    policy = load_policy(ALPHA)
    lines = summarize(policy).splitlines()
    assert lines[:8] == [
        f"policy version   {policy.version}",
        f"files            {ALPHA}",
        "timezone         UTC",
        "default tier     free_alpha",
        "thresholds       warn at 80%, block at 95%",
        "reservation TTL  300 s",
        "unpriced         deny",
        "on_store_error   deny",
    ]
    free = lines.index("tier free_alpha (default): Free Alpha")
    assert lines[free : free + 16] == [
        "tier free_alpha (default): Free Alpha",
        "  features:         basic_seo, blog_writer",
        "  thresholds:       warn at 80%, block at 95%",
        "  on_store_error:   deny",
        "  reservation TTL:  300 s",
        "  commit at most:   10x the estimate",
        "  limits:",
        "    metric    window  max           warn at     block at",
        "    tokens    day     1,000 tokens  800 tokens  950 tokens",
        "    images    day     5 images      4 images    5 images",
        "    cost_usd  month   $10.00        $8.00       $9.50",
        "  hard stops (deny above max):",
        "    metric    window  max",
        "    tokens    day     1,000 tokens",
        "    cost_usd  day     $5.00",
        "",
    ]
    assert "tier basic_alpha: Basic Alpha" in lines
    pro = lines.index("tier pro_alpha: Pro Alpha")
    assert lines[pro + 1] == "  features:         all (*)"
    assert lines[pro + 3] == "  on_store_error:   allow"
    assert "    cost_usd  month   $500.00        $400.00        $475.00" in lines
    assert "    tokens    day     60,000 tokens" in lines
    assert lines[-4:] == [
        "global caps (the whole company, deny above max):",
        "  metric    window  max",
        "  cost_usd  day     $200.00",
        "prices: 5 price patterns (openai/gpt-4o-mini, openai/gpt-4o, anthropic/*, stability/*, *)",
    ]


def test_summary_without_global_caps_or_prices() -> None:
    text = summarize(load_policy(ROOT / "tests" / "fixtures" / "policies" / "valid" / "anchors.yaml"))
    assert text.endswith("global caps: none\nprices: none")
    assert "  hard stops:       none" in text.splitlines()
