"""The shadow policy on the quota path (in-memory store, manual clock): decided after the
live answer on the values the reservation step reported, counted by tier and
``live->shadow``, sampled at most N per second per tier, never enforced."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from quota_service.clock import ManualClock, to_ms
from quota_service.ledger.events import Event, EventKind
from quota_service.lifecycle.shadow import SampleGate, Shadow, divergence_reason
from quota_service.policy.domain import Decision, Reason
from quota_service.policy.validation import build_request
from quota_service.quotas import Quotas
from quota_service.reload import LivePolicy
from quota_service.store.memory_store import MemoryCounterStore

pytestmark = pytest.mark.unit

FREE = "    features: [blog_writer, basic_seo]\n    limits:\n      tokens: {day: 1000}\n"
SHADOW_FREE = "    features: [blog_writer, basic_seo, seo_analysis]\n    limits:\n      tokens: {day: 500}\n"


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_divergence_reason_names_the_pair() -> None:
    assert divergence_reason(Decision.ALLOW, Decision.ALLOW) is None
    assert divergence_reason(Decision.ALLOW, Decision.DENY) == "ALLOW->DENY"
    assert divergence_reason(Decision.DENY, Decision.WARN) == "DENY->WARN"


def test_sample_gate_lets_n_per_second_per_key_through() -> None:
    ticks = Ticks()
    gate = SampleGate(2, monotonic=ticks)
    assert [gate.allow("free") for _ in range(4)] == [True, True, False, False]  # burst of 2
    assert gate.allow("pro")  # its own bucket
    ticks.now = 0.5
    assert [gate.allow("free") for _ in range(2)] == [True, False]  # one more token per 0.5 s
    ticks.now = 10.0
    assert [gate.allow("free") for _ in range(3)] == [True, True, False]  # never more than the burst
    never = SampleGate(0, monotonic=ticks)
    assert not never.allow("free")
    with pytest.raises(ValueError):
        SampleGate(-1)


@pytest.fixture
def shadowed(
    store: MemoryCounterStore, clock: ManualClock, policy_file: Path, tmp_path: Path
) -> tuple[Quotas, Shadow, list[Event], Ticks]:
    assert policy_file.read_text().count(FREE) == 1
    shadow_file = tmp_path / "shadow.yaml"
    shadow_file.write_text(policy_file.read_text().replace(FREE, SHADOW_FREE))
    recorded: list[Event] = []
    ticks = Ticks()
    shadow = Shadow(
        policy=LivePolicy(shadow_file, clock=clock),
        read_counters=store.usage,
        record=recorded.append,
        samples_per_second=3,
        monotonic=ticks,
    )
    quotas = Quotas(policy=LivePolicy(policy_file, clock=clock), store=store, clock=clock, observer=shadow)
    return quotas, shadow, recorded, ticks


async def _spend(quotas: Quotas, subject: str, tokens: int, feature: str = "blog_writer") -> Decision:
    request = build_request(
        subject=subject, feature=feature, provider="openai", model="gpt-4o-mini", usage={"tokens": tokens}
    )
    answer = await quotas.check_and_reserve(request)
    if answer.reservation_id:
        await quotas.commit(answer.reservation_id, {"tokens": tokens})
    return answer.outcome.decision


async def test_divergences_counted_exactly_and_sampled(
    shadowed: tuple[Quotas, Shadow, list[Event], Ticks], clock: ManualClock
) -> None:
    quotas, shadow, recorded, _ = shadowed
    # 7 x 100: live ALLOW each (warn line 800); shadow: ALLOW x3, WARN x2 (>= 400), DENY x2 (>= 475).
    live = [await _spend(quotas, "alice", 100) for _ in range(7)]
    assert live == [Decision.ALLOW] * 7
    # A live early denial (feature not in the tier) with nothing read: the shadow has the
    # feature and reads bob's counters (0) off the path: ALLOW.
    assert await _spend(quotas, "bob", 100, "seo_analysis") is Decision.DENY
    async with asyncio.timeout(5):
        await shadow.settled()
    status = shadow.status()
    assert status.decided == 8
    assert status.divergences == {
        ("free_alpha", "ALLOW->WARN"): 2,
        ("free_alpha", "ALLOW->DENY"): 2,
        ("free_alpha", "DENY->ALLOW"): 1,
    }
    # At most 3 per second for the tier: the first three divergences, in order.
    assert status.sampled == 3 and len(recorded) == 3
    assert [json.loads(e.detail)["divergence"] for e in recorded] == ["ALLOW->WARN", "ALLOW->WARN", "ALLOW->DENY"]
    event = recorded[2]
    assert event.kind is EventKind.SHADOW_DIVERGED and event.id.startswith("shd_")
    assert (event.subject, event.tier, event.decision, event.reason) == (
        "alice",
        "free_alpha",
        Decision.DENY,
        Reason.BLOCK_THRESHOLD,
    )
    assert event.limit is not None and (event.limit.max_units, event.limit.used) == (500, 500)
    assert event.policy_version == status.version != quotas.policy.current.version
    assert event.at_ms == to_ms(clock.now())
    # Never enforced: alice's counters are the live requests' alone.
    usage = await quotas.usage("alice")
    tokens = next(r for r in usage.limits if r.limit.metric == "tokens" and r.limit.max_units == 1000)
    assert (tokens.used, tokens.held) == (700, 0)


async def test_a_full_queue_drops_and_counts_instead_of_waiting(
    store: MemoryCounterStore, clock: ManualClock, policy_file: Path
) -> None:
    shadow = Shadow(policy=LivePolicy(policy_file, clock=clock), read_counters=store.usage, max_pending=2)
    quotas = Quotas(policy=LivePolicy(policy_file, clock=clock), store=store, clock=clock, observer=shadow)
    requests = [
        build_request(
            subject=f"s{i}", feature="blog_writer", provider="openai", model="gpt-4o-mini", usage={"tokens": 1}
        )
        for i in range(5)
    ]
    await asyncio.gather(*(quotas.check_and_reserve(r) for r in requests))
    async with asyncio.timeout(5):
        await shadow.settled()
    status = shadow.status()
    assert status.decided + status.dropped == 5
    assert status.dropped >= 1 and status.divergences == {}


def test_the_fast_decisions_are_the_explained_one(policy_file: Path, clock: ManualClock) -> None:
    from quota_service.lifecycle.shadow import fast_decision, shadow_decision, shadow_outcome, shadow_plan
    from quota_service.policy.domain import CounterValue
    from quota_service.quotas import UNCONFIGURED

    policy = LivePolicy(policy_file, clock=clock).current
    seen = set()
    for feature in ("blog_writer", "seo_analysis"):
        for ask in (1, 100, 999, 5000):
            request = build_request(
                subject="s", feature=feature, provider="openai", model="gpt-4o-mini", usage={"tokens": ask}
            )
            the_plan = shadow_plan(policy, request, config=UNCONFIGURED, stops=(), now=clock.now())
            for used in (0, 500, 799, 800, 949, 950, 1000, 2000):
                values = {c.ref: CounterValue(used=used, held=0) for c in the_plan.all_counters}
                decision = shadow_decision(the_plan, values)
                assert decision is shadow_outcome(the_plan, values).decision
                fast = fast_decision(policy, request, config=UNCONFIGURED, stops=(), now=clock.now(), values=values)
                assert fast is decision
                seen.add(decision)
            if the_plan.all_counters:  # a counter missing: the fast path says so
                partial = {c.ref: CounterValue() for c in the_plan.all_counters[1:]}
                now = clock.now()
                assert fast_decision(policy, request, config=UNCONFIGURED, stops=(), now=now, values=partial) is None
    assert seen == {Decision.ALLOW, Decision.WARN, Decision.DENY}
