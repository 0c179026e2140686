"""A repeated request_id gets the first answer, whatever changed since; a replay never
releases or changes the reservation; the store's gate decides, the engine only explains."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import pytest
from support.requests import ask

from quota_service.clock import ManualClock
from quota_service.policy.domain import CounterRef, CounterValue, Decision, OverrideRecord, Reason
from quota_service.policy.windows import Window
from quota_service.quotas import Quotas, ReserveAnswer
from quota_service.reload import LivePolicy
from quota_service.store.base import ReservationState, ReserveCommand, ReserveResult, ReserveStatus
from quota_service.store.memory_store import MemoryCounterStore

pytestmark = pytest.mark.unit


async def usage_of(quotas: Quotas, who: str) -> tuple[int, int]:
    report = next(
        r for r in (await quotas.usage(who)).limits if r.limit.metric == "tokens" and r.limit.kind.value != "hard_stop"
    )
    return report.used, report.held


def same_answer(first: ReserveAnswer, again: ReserveAnswer) -> None:
    assert again.replayed and not first.replayed
    assert dataclasses.replace(again, replayed=False) == first  # decision, reason, message, id, limits, tier


async def test_a_lowered_override_does_not_rejudge_a_replay(quotas: Quotas, store: MemoryCounterStore) -> None:
    first = await quotas.check_and_reserve(ask("ann", 500))
    assert first.outcome.decision is Decision.ALLOW and first.reservation_id
    await store.set_override(OverrideRecord("ann", "tokens", Window.DAY, 100, expires_at=0))
    quotas.configs.forget("ann")  # as the admin plane (or the config feed) does

    again = await quotas.check_and_reserve(ask("ann", 500))
    same_answer(first, again)
    reservation = await store.get_reservation(first.reservation_id)
    assert reservation is not None and reservation.state is ReservationState.OPEN  # never released by the replay
    assert store.calls["release"] == 0 and store.calls["withdraw"] == 0
    await quotas.commit(first.reservation_id, {"tokens": 450})
    assert await usage_of(quotas, "ann") == (450, 0)  # the commit is counted
    fresh = await quotas.check_and_reserve(ask("ann", 10, request_id="req-2"))
    assert (fresh.outcome.decision, fresh.outcome.reason) == (
        Decision.DENY,
        Reason.BLOCK_THRESHOLD,
    )  # new requests: new cap


async def test_a_tier_change_does_not_rejudge_a_replay(quotas: Quotas, store: MemoryCounterStore) -> None:
    await store.set_tier("pat", "pro_alpha")
    first = await quotas.check_and_reserve(ask("pat", 5000))
    assert (first.outcome.decision, first.tier) == (Decision.ALLOW, "pro_alpha")
    await store.set_tier("pat", "free_alpha")  # 1,000 tokens a day: 5,000 would be denied now
    quotas.configs.forget("pat")
    again = await quotas.check_and_reserve(ask("pat", 5000))
    same_answer(first, again)
    await quotas.commit(first.reservation_id, {"tokens": 4000})
    assert await usage_of(quotas, "pat") == (4000, 0)


async def test_a_policy_reload_does_not_rejudge_a_replay(
    quotas: Quotas, store: MemoryCounterStore, policy_file: Path
) -> None:
    first = await quotas.check_and_reserve(ask("rae", 700))
    assert first.outcome.decision is Decision.ALLOW
    policy_file.write_text(policy_file.read_text().replace("tokens: {day: 1000}", "tokens: {day: 100}"))
    assert quotas.policy.reload()
    again = await quotas.check_and_reserve(ask("rae", 700))
    same_answer(first, again)  # the first policy version and caps, too
    assert again.policy_version != quotas.policy.current.version
    await quotas.commit(first.reservation_id, {"tokens": 650})
    assert (await usage_of(quotas, "rae"))[0] == 650


PRICE = "tokens: 0.0000006"


def cost_held(answer: ReserveAnswer) -> list[tuple[int, int]]:
    return [(r.used, r.held) for r in answer.outcome.limits if r.limit.metric == "cost_usd"]


async def test_a_replay_after_the_prices_changed_is_the_first_answer(
    quotas: Quotas, store: MemoryCounterStore, policy_file: Path
) -> None:
    """The cost ask comes from the recorded estimate at the recorded rates, not today's prices."""
    first = await quotas.check_and_reserve(ask("pip", 700))
    assert first.outcome.decision is Decision.ALLOW
    assert {held for _, held in cost_held(first)} == {420}  # 700 tokens at $0.60 per million
    policy_file.write_text(policy_file.read_text().replace(PRICE, "tokens: 0.01"))  # $7 now: past the $5 a day
    assert quotas.policy.reload()
    fresh = await quotas.check_and_reserve(ask("pip", 700, request_id="req-new"))
    assert fresh.outcome.decision is Decision.DENY  # the new price is in force
    again = await quotas.check_and_reserve(ask("pip", 700))
    same_answer(first, again)  # held, remaining, message: the first call's
    reservation = await store.get_reservation(first.reservation_id)
    assert reservation is not None and reservation.rates == {"tokens": "6E-7"}


async def test_a_replay_with_another_estimate_gets_the_first_answer(quotas: Quotas, store: MemoryCounterStore) -> None:
    first = await quotas.check_and_reserve(ask("ivy", 500))
    assert first.outcome.decision is Decision.ALLOW
    for other in (900, 5, 5000):  # more, less, past the cap: the recorded asks, never these
        again = await quotas.check_and_reserve(ask("ivy", other))
        same_answer(first, again)
    assert await usage_of(quotas, "ivy") == (0, 500)


async def test_a_replayed_denial_keeps_its_answer_and_counts_retry_after_from_now(
    quotas: Quotas, store: MemoryCounterStore, clock: ManualClock, policy_file: Path
) -> None:
    """A DENY of the day cap: its windows, values and message as first answered, also with
    another estimate, other prices and after the day rolled over; only
    ``retry_after_seconds`` moves, counted from now (never below 0)."""
    clock.set(clock.now().replace(hour=23, minute=30))
    held = await quotas.check_and_reserve(ask("ned", 900, request_id="fill"))
    await quotas.commit(held.reservation_id, {"tokens": 900})
    first = await quotas.check_and_reserve(ask("ned", 200))
    assert (first.outcome.decision, first.outcome.reason) == (Decision.DENY, Reason.LIMIT_EXCEEDED)
    assert first.outcome.retry_after_seconds == 1800  # the day ends at midnight
    policy_file.write_text(policy_file.read_text().replace(PRICE, "tokens: 0.01"))
    assert quotas.policy.reload()

    def but_retry_after(answer: ReserveAnswer) -> ReserveAnswer:
        outcome = dataclasses.replace(answer.outcome, retry_after_seconds=first.outcome.retry_after_seconds)
        return dataclasses.replace(answer, outcome=outcome, replayed=False)

    for advance, retry_after in ((600, 1200), (1800, 0)):  # the second: 00:10, a new day
        clock.advance(advance)
        again = await quotas.check_and_reserve(ask("ned", 20))
        assert again.replayed and again.outcome.retry_after_seconds == retry_after
        assert but_retry_after(again) == first  # limits (recorded windows and resets_at), message, tier, version
    assert store.calls["withdraw"] == 0


async def test_a_denial_replays_as_the_same_denial_after_the_cap_was_raised(
    quotas: Quotas, store: MemoryCounterStore
) -> None:
    first = await quotas.check_and_reserve(ask("dan", 5000))
    assert (first.outcome.decision, first.outcome.reason) == (Decision.DENY, Reason.LIMIT_EXCEEDED)
    await store.set_tier("dan", "pro_alpha")
    quotas.configs.forget("dan")
    again = await quotas.check_and_reserve(ask("dan", 5000))
    same_answer(first, again)


async def test_a_replay_across_a_window_rollover_reads_the_recorded_values_again(
    quotas: Quotas, store: MemoryCounterStore, clock: ManualClock
) -> None:
    clock.set(clock.now().replace(hour=23, minute=59, second=59))
    first = await quotas.check_and_reserve(ask("nia", 300))
    clock.advance(2)  # a new day: this plan's day counters are other keys than the first's
    again = await quotas.check_and_reserve(ask("nia", 300))
    same_answer(first, again)
    assert store.calls["reserve"] == 3  # the replay, then a replay-only command with the first plan's counters
    assert store.calls["withdraw"] == 0


async def test_a_replay_a_cold_replica_serves_is_the_same(
    quotas: Quotas, store: MemoryCounterStore, policy_file: Path, clock: ManualClock
) -> None:
    first = await quotas.check_and_reserve(ask("cy", 200))
    other = Quotas(policy=LivePolicy(policy_file, clock=clock), store=store, clock=clock)  # another replica
    same_answer(first, await other.check_and_reserve(ask("cy", 200)))


async def test_a_replay_recorded_without_an_answer_keeps_the_stores_verdict(
    quotas: Quotas, store: MemoryCounterStore
) -> None:
    """A record from before recorded answers: the store's verdict and reservation stand,
    explained by the current plan."""
    first = await quotas.check_and_reserve(ask("old", 500))
    answer = store._scopes["old"].answers["req-1"]
    answer.answer = ""
    await store.set_override(OverrideRecord("old", "tokens", Window.DAY, 100, expires_at=0))
    quotas.configs.forget("old")
    again = await quotas.check_and_reserve(ask("old", 500))
    assert again.replayed and again.reservation_id == first.reservation_id
    assert again.outcome.decision is Decision.WARN  # held by the store: never a DENY, never released
    assert store.calls["release"] == 0 and store.calls["withdraw"] == 0


class Overruling(MemoryCounterStore):
    """A store whose verdict disagrees with the rule (a bug in one of the two)."""

    def __init__(self, verdict: ReserveStatus, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.verdict = verdict

    async def reserve(self, command: ReserveCommand) -> ReserveResult:
        result = await super().reserve(command)
        if self.verdict is ReserveStatus.DENIED and result.status is ReserveStatus.RESERVED:
            await self.release(result.reservation_id, command.now_ms)
            return dataclasses.replace(result, status=ReserveStatus.DENIED, reservation_id="", expires_at=0)
        if self.verdict is ReserveStatus.RESERVED:  # reports values past the cap for what it held
            values: Mapping[CounterRef, CounterValue] = {ref: CounterValue(used=999, held=0) for ref in result.values}
            return dataclasses.replace(result, values=values)
        return result


async def test_a_store_denial_no_limit_explains_is_still_a_denial(clock: ManualClock, policy_file: Path) -> None:
    store = Overruling(ReserveStatus.DENIED, timeout_seconds=5.0)
    quotas = Quotas(policy=LivePolicy(policy_file, clock=clock), store=store, clock=clock)
    answer = await quotas.check_and_reserve(ask("eve", 1))
    assert (answer.outcome.decision, answer.outcome.reason) == (Decision.DENY, Reason.LIMIT_EXCEEDED)
    assert "no limit of this request explains it" in answer.outcome.message and not answer.reservation_id


async def test_a_store_hold_the_rule_would_deny_is_kept_and_explained(clock: ManualClock, policy_file: Path) -> None:
    store = Overruling(ReserveStatus.RESERVED, timeout_seconds=5.0)
    quotas = Quotas(policy=LivePolicy(policy_file, clock=clock), store=store, clock=clock)
    answer = await quotas.check_and_reserve(ask("fay", 10))
    assert answer.outcome.decision is Decision.WARN and answer.reservation_id  # never a DENY holding an estimate
    assert store.calls["release"] == 0 and store.calls["withdraw"] == 0
    reservation = await store.get_reservation(answer.reservation_id)
    assert reservation is not None and reservation.state is ReservationState.OPEN


async def test_a_dry_run_is_decided_by_the_rule_and_recorded_nowhere(quotas: Quotas, store: MemoryCounterStore) -> None:
    checked = await quotas.check_and_reserve(ask("gus", 5000, dry_run=True))
    assert (checked.outcome.decision, checked.reservation_id, checked.replayed) == (Decision.DENY, "", False)
    real = await quotas.check_and_reserve(ask("gus", 50, dry_run=False))
    assert real.outcome.decision is Decision.ALLOW and not real.replayed
