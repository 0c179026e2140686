"""The pure lifecycle modules: no I/O, exact prices, the percentile rule."""

from __future__ import annotations

import ast
from decimal import Decimal
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from quota_service.lifecycle.estimates import CommittedUsage, estimate_ratios
from quota_service.lifecycle.recommend import nearest_rank
from quota_service.lifecycle.simulate import Pricing
from quota_service.policy.compiled import micros_at

LIFECYCLE = Path(__file__).resolve().parents[3] / "quota_service" / "lifecycle"
FORBIDDEN = ("sqlalchemy", "yaml", "grpc", "redis", "aiosqlite", "asyncpg", "quota.v1", "quota_service.ledger")


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_simulation_core_imports_no_io() -> None:
    for name in ("simulate.py", "recommend.py", "estimates.py", "simulate_text.py"):
        imports = _imports(LIFECYCLE / name)
        bad = sorted(i for i in imports if i.startswith(FORBIDDEN))
        assert bad == [], f"{name} imports {bad}"


@given(
    rates=st.dictionaries(
        st.sampled_from(["tokens", "images", "seconds"]),
        st.decimals(min_value=0, max_value=Decimal("1000"), places=9, allow_nan=False),
        min_size=1,
    ),
    usage=st.dictionaries(st.sampled_from(["tokens", "images", "seconds"]), st.integers(0, 10**12)),
)
def test_integer_pricing_is_micros_at_exactly(rates: dict[str, Decimal], usage: dict[str, int]) -> None:
    assert Pricing.of(rates).cost(usage) == micros_at(rates, usage)


def test_the_shipped_prices() -> None:
    assert Pricing.of({"tokens": Decimal("0.0000006")}).cost({"tokens": 7}) == 5  # 4.2 micro-dollars, rounded up
    assert Pricing.of({"images": Decimal("0.05")}).cost({"images": 20}) == 1_000_000


def test_nearest_rank_percentiles() -> None:
    ordered = [50 * k for k in range(1, 21)]
    assert [nearest_rank(ordered, p) for p in (50, 90, 95, 100)] == [500, 900, 950, 1000]
    assert nearest_rank([7], 1) == 7


def test_estimate_ratios_by_hand() -> None:
    records = [
        CommittedUsage("free", "chat", "openai", "gpt-4o", {"tokens": 100}, {"tokens": used})
        for used in (50, 100, 150, 200)
    ]
    records.append(CommittedUsage("free", "chat", "openai", "gpt-4o", {"tokens": 0, "images": 2}, {"images": 1}))
    found = {r.metric: r for r in estimate_ratios(records)}
    # ratios 0.5, 1.0, 1.5, 2.0: p50 = rank 2, p95 = rank 4; a zero estimate is no ratio
    assert (found["tokens"].count, found["tokens"].p50, found["tokens"].p95, found["tokens"].over) == (4, 1.0, 2.0, 2)
    assert found["tokens"].mean == 1.25
    assert (found["images"].count, found["images"].p50) == (1, 0.5)
    assert estimate_ratios(records, tier="pro") == []
