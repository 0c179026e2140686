"""A tier capped only in dollars: CheckAndReserve allows, and the Commit charges the actual
cost in cost_usd exactly, an overshoot included (the whole quota path on a real store)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from quota_service.clock import ManualClock
from quota_service.policy.domain import Decision
from quota_service.policy.validation import build_request
from quota_service.quotas import Quotas
from quota_service.reload import LivePolicy
from quota_service.store.base import ReservationState
from quota_service.store.redis_store import RedisCounterStore

pytestmark = pytest.mark.redis

POLICY = """
version: 1
default_tier: dollars
timezone: UTC
reservation_ttl_seconds: 60
prices:
  "openai/split": {{input_tokens: 0.000001, output_tokens: 0.000004}}
  "openai/single": {{tokens: 0.000002}}
hard_stops:
  per_subject: {{cost_usd: {{day: 2.00}}}}
  global: {{cost_usd: {{day: 100.00}}}}
tiers:
  dollars:
    display_name: Dollars only
    features: ["*"]
    limits: {{cost_usd: {{month: {cap}}}}}
"""

# (model, estimate, actual, micro-dollars estimated, micro-dollars actually spent)
CASES = [
    ("split", {"input_tokens": 1000, "output_tokens": 500}, {"input_tokens": 1000, "output_tokens": 2000}, 3000, 9000),
    ("single", {"tokens": 1500}, {"tokens": 4000}, 3000, 8000),
]


@pytest.fixture
async def quotas(redis_url: str, tmp_path: Path) -> AsyncIterator[tuple[Quotas, ManualClock]]:
    (tmp_path / "dollars.yaml").write_text(POLICY.format(cap="1.00"))
    clock = ManualClock(datetime.now(UTC))
    store = RedisCounterStore.from_url(redis_url, timeout_seconds=5.0)
    try:
        yield Quotas(policy=LivePolicy(tmp_path, clock=clock), store=store, clock=clock), clock
    finally:
        await store.close()


def ask(model: str, usage: dict[str, int], request_id: str = "") -> object:
    return build_request(
        subject="penny", feature="chat", provider="openai", model=model, usage=usage, request_id=request_id
    )


def cost_used(answer_limits: object) -> dict[str, tuple[int, int]]:
    return {f"{r.ref.scope}/{r.limit.window.value}": (r.used, r.held) for r in answer_limits}  # type: ignore[attr-defined]


@pytest.mark.parametrize(("model", "estimate", "actual", "estimated", "spent"), CASES, ids=[c[0] for c in CASES])
async def test_a_commit_on_a_dollar_only_tier_charges_the_overshoot_exactly(
    quotas: tuple[Quotas, ManualClock],
    model: str,
    estimate: dict[str, int],
    actual: dict[str, int],
    estimated: int,
    spent: int,
) -> None:
    core, _ = quotas
    answer = await core.check_and_reserve(ask(model, estimate, "req-1"))  # type: ignore[arg-type]
    assert answer.outcome.decision is Decision.ALLOW and answer.reservation_id
    assert {r.ref.metric for r in answer.outcome.limits} == {"cost_usd"}  # no counter on tokens
    held = {f"{r.ref.scope}/{r.limit.window.value}": r.held for r in answer.outcome.limits}
    assert held == {"penny/month": estimated, "penny/day": estimated, "__global__/day": estimated}

    reservation = await core.store.get_reservation(answer.reservation_id)
    assert reservation is not None
    assert reservation.estimate == estimate  # every metric of the estimate, counted or only priced
    assert set(reservation.rates) == set(estimate)

    settled = await core.commit(answer.reservation_id, actual)  # more than estimated
    assert not settled.already_settled
    assert cost_used(settled.limits) == {"penny/month": (spent, 0), "penny/day": (spent, 0)}
    usage = await core.usage("penny")
    assert {(r.limit.window.value, r.used, r.held) for r in usage.limits} == {("month", spent, 0), ("day", spent, 0)}
    assert (await core.commit(answer.reservation_id, actual)).already_settled  # a repeat changes nothing
    assert cost_used((await core.usage("penny")).limits) == {"penny/month": (spent, 0), "penny/day": (spent, 0)}


async def test_a_late_commit_on_a_dollar_only_tier_corrects_the_estimate(quotas: tuple[Quotas, ManualClock]) -> None:
    core, clock = quotas
    model, estimate, actual, estimated, spent = CASES[0]
    answer = await core.check_and_reserve(ask(model, estimate))  # type: ignore[arg-type]
    clock.advance(120)  # past its 60 s: settled at the estimate on the next touch
    assert cost_used((await core.usage("penny")).limits) == {"penny/month": (estimated, 0), "penny/day": (estimated, 0)}
    reservation = await core.store.get_reservation(answer.reservation_id)
    assert reservation is not None and reservation.state is ReservationState.EXPIRED
    assert reservation.estimate == estimate  # an expired record still has what a correction needs

    settled = await core.commit(answer.reservation_id, actual)
    assert not settled.already_settled
    assert cost_used((await core.usage("penny")).limits) == {"penny/month": (spent, 0), "penny/day": (spent, 0)}
