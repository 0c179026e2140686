"""What each store failure gets, on the in-memory store: on_store_error for an outage or a
missed deadline (always in time), DENY STORE_ERROR for damaged data, a background withdraw
(retried with backoff, bounded) when a denied request may hold something, stale-config
retries and their end."""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from support.requests import ask

from quota_service import deadline
from quota_service.clock import ManualClock
from quota_service.deadline import request_deadline
from quota_service.errors import StoreDataError, StoreUnavailable
from quota_service.policy.domain import Decision, Reason
from quota_service.quotas import STALE_RETRIES, Backoff, Quotas
from quota_service.reload import LivePolicy
from quota_service.store.base import ReservationState, ReserveCommand, ReserveResult, ReserveStatus
from quota_service.store.memory_store import MemoryCounterStore

pytestmark = pytest.mark.unit

QUICK = Backoff(base=0.001, cap=0.002, attempts=4)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def held(store: MemoryCounterStore, who: str) -> int:
    """Tokens held on the subject's day counter."""
    counters = store._scopes[who].counters
    return sum(c.held for key, c in counters.items() if ":tokens:day:" in key)


async def pro(quotas: Quotas, store: MemoryCounterStore, who: str) -> None:
    await store.set_tier(who, "pro_alpha")  # on_store_error: allow
    await quotas.subject_config(who, fresh=True)


# -- outages and deadlines ----------------------------------------------------------------------


async def test_an_outage_answers_on_store_error(quotas: Quotas, store: MemoryCounterStore) -> None:
    await pro(quotas, store, "payer")
    store.fail("reserve", StoreUnavailable("down"), times=2)
    free = await quotas.check_and_reserve(ask("nobody"))
    paying = await quotas.check_and_reserve(ask("payer"))
    assert (free.outcome.decision, free.outcome.reason) == (Decision.DENY, Reason.STORE_UNAVAILABLE)
    assert (paying.outcome.decision, paying.outcome.reason) == (Decision.ALLOW, Reason.STORE_UNAVAILABLE)


async def test_a_frozen_store_is_answered_at_the_deadline(quotas: Quotas, store: MemoryCounterStore) -> None:
    await quotas.subject_config("icy", fresh=True)
    store.freeze("reserve")
    with request_deadline(0.05):
        answer = await quotas.check_and_reserve(ask("icy"))
    assert (answer.outcome.decision, answer.outcome.reason) == (Decision.DENY, Reason.STORE_UNAVAILABLE)
    store.thaw()


class Deaf(MemoryCounterStore):
    """A store that ignores the request's deadline: its reserve never answers."""

    async def reserve(self, command: ReserveCommand) -> ReserveResult:
        self.calls["reserve"] += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_the_deadline_holds_even_when_the_store_ignores_it(clock: ManualClock, policy_file: Path) -> None:
    store = Deaf(timeout_seconds=5.0)
    quotas = Quotas(policy=LivePolicy(policy_file, clock=clock), store=store, clock=clock)
    with request_deadline(0.05):
        answer = await quotas.check_and_reserve(ask("deaf"))
    assert (answer.outcome.decision, answer.outcome.reason) == (Decision.DENY, Reason.STORE_UNAVAILABLE)
    assert quotas.pending_withdraws == 1  # its outcome is unknown: withdrawn in the background
    await quotas.drain(0)


async def test_no_time_left_answers_without_a_store_call(quotas: Quotas, store: MemoryCounterStore) -> None:
    with request_deadline(0):
        answer = await quotas.check_and_reserve(ask("late"))
    assert answer.outcome.reason is Reason.STORE_UNAVAILABLE
    assert store.calls["reserve"] == 0


def test_the_request_deadline_is_the_callers_less_a_margin_capped_by_the_budget(quotas: Quotas) -> None:
    assert quotas.request_seconds(None) == quotas.request_budget_seconds == 0.4
    assert quotas.request_seconds(10.0) == 0.4
    assert quotas.request_seconds(0.3) == pytest.approx(0.25)
    assert quotas.request_seconds(0.01) == 0.0


# -- damaged data --------------------------------------------------------------------------------


async def test_damaged_data_denies_store_error_even_for_an_allow_tier(
    quotas: Quotas, store: MemoryCounterStore, caplog: pytest.LogCaptureFixture
) -> None:
    await pro(quotas, store, "payer")
    before = metric("quota_store_data_errors_total", operation="reserve")
    store.fail("reserve", StoreDataError("WRONGTYPE Operation against a key", key="q:{payer}:tokens:day:2026-11-24"))
    with caplog.at_level(logging.ERROR, logger="quota_service.quotas"):
        answer = await quotas.check_and_reserve(ask("payer"))
    assert (answer.outcome.decision, answer.outcome.reason) == (Decision.DENY, Reason.STORE_ERROR)
    assert metric("quota_store_data_errors_total", operation="reserve") == before + 1
    assert "q:{payer}:tokens:day:2026-11-24" in caplog.text


async def test_damaged_data_after_the_subject_step_withdraws_its_part(
    quotas: Quotas, store: MemoryCounterStore
) -> None:
    store.fail("global_step", StoreDataError("WRONGTYPE", key="z:{__global__}:open"))
    answer = await quotas.check_and_reserve(ask("half"))
    assert answer.outcome.reason is Reason.STORE_ERROR
    await quotas.drain()
    assert held(store, "half") == 0 and store.calls["withdraw"] == 1


async def test_damaged_data_on_commit_is_raised_and_counted(quotas: Quotas, store: MemoryCounterStore) -> None:
    granted = await quotas.check_and_reserve(ask("com"))
    before = metric("quota_store_data_errors_total", operation="commit")
    store.fail("commit", StoreDataError("ERR user_script: bad", key="r:{com}:x"))
    with pytest.raises(StoreDataError):
        await quotas.commit(granted.reservation_id, {"tokens": 10})
    assert metric("quota_store_data_errors_total", operation="commit") == before + 1


# -- withdraws -----------------------------------------------------------------------------------


async def test_a_write_whose_answer_was_lost_is_withdrawn_and_its_request_forgotten(
    quotas: Quotas, store: MemoryCounterStore
) -> None:
    store.fail("reserve", StoreUnavailable("timed out"), after=True)  # applied, then the answer is lost
    denied = await quotas.check_and_reserve(ask("lost"))
    assert denied.outcome.reason is Reason.STORE_UNAVAILABLE and held(store, "lost") == 100
    await quotas.drain()
    assert held(store, "lost") == 0
    again = await quotas.check_and_reserve(ask("lost"))  # the same request_id: decided afresh
    assert again.outcome.decision is Decision.ALLOW and not again.replayed and held(store, "lost") == 100


async def test_a_withdraw_is_retried_while_its_outcome_is_unknown(quotas: Quotas, store: MemoryCounterStore) -> None:
    before = metric("quota_withdraws_total", outcome="withdrawn")
    store.fail("reserve", StoreUnavailable("timed out"), after=True)
    store.fail("withdraw", StoreUnavailable("timed out"), times=2)
    await quotas.check_and_reserve(ask("retry"))
    await quotas.drain()
    assert store.calls["withdraw"] == 3 and held(store, "retry") == 0
    assert metric("quota_withdraws_total", outcome="withdrawn") == before + 1


async def test_a_withdraw_gives_up_after_its_attempts_and_leaves_the_ttl_to_settle(
    quotas: Quotas, store: MemoryCounterStore
) -> None:
    before = metric("quota_withdraws_total", outcome="gave_up")
    store.fail("reserve", StoreUnavailable("timed out"), after=True)
    store.fail("withdraw", StoreUnavailable("down"), times=100)
    await quotas.check_and_reserve(ask("stuck"))
    await quotas.drain()
    assert store.calls["withdraw"] == quotas.withdraw_backoff.attempts
    assert metric("quota_withdraws_total", outcome="gave_up") == before + 1
    assert held(store, "stuck") == 100  # settles at its estimate when it expires


class Late(MemoryCounterStore):
    """A reserve that times out and lands only after the first withdraw found nothing (it
    waited in the input buffer of a Redis that was frozen)."""

    queued: ReserveCommand | None = None

    async def reserve(self, command: ReserveCommand) -> ReserveResult:
        if self.queued is None and command.request_id == "late":
            self.queued = command
            raise StoreUnavailable("timed out")
        return await super().reserve(command)

    async def withdraw(self, reservation_id: str, request_id: str, now_ms: int) -> bool:
        withdrawn = await super().withdraw(reservation_id, request_id, now_ms)
        if self.calls["withdraw"] == 1 and self.queued is not None:
            await super().reserve(self.queued)  # lands now
        return withdrawn


async def test_a_reserve_landing_after_the_first_withdraw_is_still_withdrawn(
    clock: ManualClock, policy_file: Path
) -> None:
    store = Late(timeout_seconds=5.0)
    quotas = Quotas(policy=LivePolicy(policy_file, clock=clock), store=store, clock=clock, withdraw_backoff=QUICK)
    denied = await quotas.check_and_reserve(ask("slowpoke", request_id="late"))
    assert denied.outcome.reason is Reason.STORE_UNAVAILABLE
    await quotas.drain()
    assert store.calls["withdraw"] == 2 and held(store, "slowpoke") == 0
    again = await quotas.check_and_reserve(ask("slowpoke", request_id="late"))
    assert again.outcome.decision is Decision.ALLOW and not again.replayed  # its request_id was forgotten too


def test_the_backoff_is_exponential_with_full_jitter() -> None:
    backoff = Backoff(base=0.1, cap=1.0, attempts=6)
    rng = random.Random(1)
    delays = [[backoff.delay(retry, rng) for retry in range(1, 6)] for _ in range(200)]
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0]
    for column, ceiling in enumerate(ceilings):
        samples = [row[column] for row in delays]
        assert all(0 <= s <= ceiling for s in samples) and max(samples) > ceiling * 0.8  # spread over [0, ceiling]
    assert backoff.longest_sleep == pytest.approx(sum(ceilings))


async def test_pending_withdraws_are_bounded(clock: ManualClock, store: MemoryCounterStore, policy_file: Path) -> None:
    quotas = Quotas(
        policy=LivePolicy(policy_file, clock=clock),
        store=store,
        clock=clock,
        max_pending_withdraws=2,
        withdraw_backoff=Backoff(base=0.001, cap=0.001, attempts=2),
    )
    before = metric("quota_withdraws_total", outcome="shed")
    store.freeze("withdraw")
    for n in range(3):
        store.fail("reserve", StoreUnavailable("timed out"), after=True)
        await quotas.check_and_reserve(ask(f"many-{n}"))
    assert quotas.pending_withdraws == 2
    assert metric("quota_withdraws_total", outcome="shed") == before + 1
    await store.wait_blocked(2)
    store.thaw()
    await quotas.drain()
    assert (held(store, "many-0"), held(store, "many-1"), held(store, "many-2")) == (0, 0, 100)


async def test_drain_cancels_what_cannot_finish_in_time(quotas: Quotas, store: MemoryCounterStore) -> None:
    before = metric("quota_withdraws_total", outcome="cancelled")
    store.fail("reserve", StoreUnavailable("timed out"), after=True)
    store.freeze("withdraw")
    await quotas.check_and_reserve(ask("slow"))
    await store.wait_blocked(1)
    await quotas.drain(0)
    assert quotas.pending_withdraws == 0
    assert metric("quota_withdraws_total", outcome="cancelled") == before + 1
    store.thaw()


class Watching(MemoryCounterStore):
    """Notes the request deadline each withdraw runs under."""

    seen: list[float | None]

    async def withdraw(self, reservation_id: str, request_id: str, now_ms: int) -> bool:
        self.seen.append(deadline.remaining())
        return await super().withdraw(reservation_id, request_id, now_ms)


async def test_a_withdraw_runs_outside_the_requests_deadline(clock: ManualClock, policy_file: Path) -> None:
    store = Watching(timeout_seconds=5.0)
    store.seen = []
    quotas = Quotas(policy=LivePolicy(policy_file, clock=clock), store=store, clock=clock)
    store.fail("reserve", StoreUnavailable("timed out"), after=True)
    with request_deadline(0.2):
        await quotas.check_and_reserve(ask("outside"))
    await quotas.drain()
    assert store.seen == [None]  # its own per-call time, not what was left of the request's


async def test_a_cancelled_request_keeps_what_it_reserved_for_a_retry(
    quotas: Quotas, store: MemoryCounterStore
) -> None:
    """The caller went away: no answer was sent, so nothing is withdrawn; its retry (same
    request_id) replays the reservation and can commit it."""
    await quotas.subject_config("gone", fresh=True)
    store.freeze("global_step")
    call = asyncio.create_task(quotas.check_and_reserve(ask("gone")))
    await store.wait_blocked(1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    store.thaw()
    assert quotas.pending_withdraws == 0 and held(store, "gone") == 100
    retry = await quotas.check_and_reserve(ask("gone"))
    assert retry.replayed and retry.reservation_id
    await quotas.commit(retry.reservation_id, {"tokens": 80})
    reservation = await store.get_reservation(retry.reservation_id)
    assert reservation is not None and reservation.state is ReservationState.COMMITTED


# -- stale configs -----------------------------------------------------------------------------


async def test_a_stale_cached_config_costs_one_retry(quotas: Quotas, store: MemoryCounterStore) -> None:
    await store.set_tier("moved", "free_alpha")
    assert (await quotas.check_and_reserve(ask("moved", 10, "a"))).tier == "free_alpha"
    assert store.calls["reserve"] == 2 and store.calls["subject_config"] == 0  # unconfigured first; stale
    await store.set_tier("moved", "pro_alpha")  # behind this replica's back: its cache is stale
    answer = await quotas.check_and_reserve(ask("moved", 5000, "b"))
    assert (answer.outcome.decision, answer.tier) == (Decision.ALLOW, "pro_alpha")
    assert store.calls["reserve"] == 4 and store.calls["subject_config"] == 0  # each stale answer carries it


class Shifting(MemoryCounterStore):
    """Every reserve finds the config changed (an admin writing in a loop)."""

    async def reserve(self, command: ReserveCommand) -> ReserveResult:
        self.calls["reserve"] += 1
        return ReserveResult(ReserveStatus.STALE_CONFIG, "", {})


async def test_a_config_that_keeps_changing_ends_in_on_store_error(clock: ManualClock, policy_file: Path) -> None:
    store = Shifting(timeout_seconds=5.0)
    quotas = Quotas(policy=LivePolicy(policy_file, clock=clock), store=store, clock=clock, withdraw_backoff=QUICK)
    answer = await quotas.check_and_reserve(ask("busy"))
    assert (answer.outcome.decision, answer.outcome.reason) == (Decision.DENY, Reason.STORE_UNAVAILABLE)
    assert store.calls["reserve"] == STALE_RETRIES and quotas.pending_withdraws == 1
    await quotas.drain()
