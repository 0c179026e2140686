"""RedisCounterStore commit / release / expiry against a real redis-server."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio
from support.charges import NOW_MS, charge, command, counter, global_counter

from quota_service.errors import InvalidRequest, NotFound
from quota_service.policy.domain import CounterRef, CounterValue
from quota_service.policy.windows import Window
from quota_service.store import keys
from quota_service.store.base import ReservationState, ReserveStatus, SettledCounter
from quota_service.store.redis_store import RedisCounterStore

pytestmark = pytest.mark.redis

LATER_MS = NOW_MS + 10 * 60 * 1000  # past every 60 s reservation of these tests


async def value(store: RedisCounterStore, ref: CounterRef, now_ms: int = NOW_MS) -> CounterValue:
    return (await store.usage((ref,), now_ms))[ref]


async def state(store: RedisCounterStore, reservation_id: str) -> ReservationState:
    reservation = await store.get_reservation(reservation_id)
    assert reservation is not None
    return reservation.state


async def reserve(store: RedisCounterStore, ask: int, *refs: CounterRef, cap: int = 100) -> str:
    result = await store.reserve(command(*(charge(ref, ask, cap=cap) for ref in refs)))
    assert result.status is ReserveStatus.RESERVED
    return result.reservation_id


async def test_commit_below_the_estimate_refunds_the_rest(store: RedisCounterStore) -> None:
    tokens = counter()
    rid = await reserve(store, 100, tokens, cap=1000)
    result = await store.commit(rid, {"tokens": 60}, NOW_MS)
    assert not result.already_settled
    assert result.values == {tokens: CounterValue(used=60, held=0)}
    assert await state(store, rid) is ReservationState.COMMITTED


async def test_commit_above_the_estimate_charges_and_may_pass_the_cap(store: RedisCounterStore) -> None:
    day, month = counter(), counter(window=Window.MONTH, window_id="2030-01")
    rid = await reserve(store, 90, day, month)
    result = await store.commit(rid, {"tokens": 150, "images": 3}, NOW_MS)
    assert result.values == {day: CounterValue(150, 0), month: CounterValue(150, 0)}  # recorded, never lost
    denied = await store.reserve(command(charge(day, 1, cap=100)))
    assert denied.status is ReserveStatus.DENIED


async def test_a_metric_left_out_of_the_commit_counts_zero(store: RedisCounterStore) -> None:
    tokens, images = counter(), counter(metric="images")
    rid = await reserve(store, 5, tokens, images)
    result = await store.commit(rid, {"tokens": 4}, NOW_MS)
    assert result.values == {tokens: CounterValue(4, 0), images: CounterValue(0, 0)}


async def test_release_gives_the_estimate_back(store: RedisCounterStore) -> None:
    tokens = counter()
    await reserve(store, 10, tokens)
    rid = await reserve(store, 30, tokens)
    result = await store.release(rid, NOW_MS)
    assert not result.already_settled
    assert result.values == {tokens: CounterValue(0, 10)}
    assert await state(store, rid) is ReservationState.RELEASED


async def test_settling_twice_changes_nothing(store: RedisCounterStore) -> None:
    tokens = counter()
    committed = await reserve(store, 10, tokens)
    released = await reserve(store, 20, tokens)
    await store.commit(committed, {"tokens": 7}, NOW_MS)
    await store.release(released, NOW_MS)
    expected = {tokens: CounterValue(used=7, held=0)}

    again = await asyncio.gather(
        store.commit(committed, {"tokens": 7}, NOW_MS),
        store.commit(committed, {"tokens": 99}, NOW_MS),
        store.release(committed, NOW_MS),
        store.commit(released, {"tokens": 20}, NOW_MS),
        store.release(released, NOW_MS),
    )
    assert all(r.already_settled and r.values == expected for r in again)
    assert await value(store, tokens) == CounterValue(7, 0)


async def test_concurrent_commits_of_one_reservation_count_once(store: RedisCounterStore) -> None:
    tokens = counter()
    rid = await reserve(store, 10, tokens)
    results = await asyncio.gather(*(store.commit(rid, {"tokens": 8}, NOW_MS) for _ in range(10)))
    assert sorted(r.already_settled for r in results) == [False] + [True] * 9
    assert await value(store, tokens) == CounterValue(8, 0)


async def test_an_expired_reservation_is_settled_at_its_estimate_on_the_next_touch(
    store: RedisCounterStore,
) -> None:
    tokens = counter()
    rid = await reserve(store, 40, tokens)
    assert await value(store, tokens, NOW_MS + 59_999) == CounterValue(0, 40)  # not yet
    assert await value(store, tokens, LATER_MS) == CounterValue(40, 0)  # money is not handed back
    assert await state(store, rid) is ReservationState.EXPIRED

    late = await store.commit(rid, {"tokens": 25}, LATER_MS)  # a late commit corrects it
    assert not late.already_settled
    assert late.values == {tokens: CounterValue(25, 0)}
    assert (await store.commit(rid, {"tokens": 25}, LATER_MS)).already_settled


async def test_a_reserve_settles_expired_reservations_first(store: RedisCounterStore) -> None:
    tokens = counter()
    rid = await reserve(store, 90, tokens)
    # at LATER_MS the 90 held becomes 90 used: the gate sees uh = 90 either way
    later = await store.reserve(command(charge(tokens, 20, cap=100), now_ms=LATER_MS))
    assert later.status is ReserveStatus.DENIED
    assert later.values[tokens] == CounterValue(90, 0)
    # the reservation's owner answers late: it used 10 of it, the rest comes back
    assert (await store.commit(rid, {"tokens": 10}, LATER_MS)).values == {tokens: CounterValue(10, 0)}
    again = await store.reserve(command(charge(tokens, 20, cap=100), now_ms=LATER_MS))
    assert again.status is ReserveStatus.RESERVED


async def test_a_late_release_refunds_an_expired_reservation(store: RedisCounterStore) -> None:
    tokens = counter()
    rid = await reserve(store, 40, tokens)
    assert await value(store, tokens, LATER_MS) == CounterValue(40, 0)
    assert (await store.release(rid, LATER_MS)).values == {tokens: CounterValue(0, 0)}


async def test_a_commit_past_expiry_before_any_sweep_is_exact(store: RedisCounterStore) -> None:
    tokens = counter()
    rid = await reserve(store, 40, tokens)
    assert (await store.commit(rid, {"tokens": 55}, LATER_MS)).values == {tokens: CounterValue(55, 0)}
    assert await value(store, tokens, LATER_MS) == CounterValue(55, 0)


async def test_the_expiry_sweep_is_bounded_per_call(store: RedisCounterStore, raw: redis.asyncio.Redis) -> None:
    tokens = counter()
    await asyncio.gather(*(reserve(store, 1, tokens, cap=1000) for _ in range(150)))
    assert await value(store, tokens, LATER_MS) == CounterValue(100, 50)
    assert await raw.zcard(keys.open_set_key("alice")) == 50
    assert await value(store, tokens, LATER_MS) == CounterValue(150, 0)
    assert await raw.zcard(keys.open_set_key("alice")) == 0


async def test_the_global_part_is_settled_with_the_same_actual_amounts(store: RedisCounterStore) -> None:
    tokens, company_cost, company_tokens = counter(), global_counter(), global_counter("tokens")
    result = await store.reserve(
        command(
            charge(tokens, 100, cap=1000),
            global_charges=(charge(company_cost, 500, cap=10_000), charge(company_tokens, 100, cap=10_000)),
        )
    )
    reservation = await store.get_reservation(result.reservation_id)
    assert reservation is not None
    assert reservation.asks == {"tokens": 100, "cost_usd": 500}
    committed = await store.commit(result.reservation_id, {"tokens": 80, "cost_usd": 400}, NOW_MS)
    assert committed.values == {
        tokens: CounterValue(80, 0),
        company_cost: CounterValue(400, 0),
        company_tokens: CounterValue(80, 0),
    }
    settled = await store.get_reservation(result.reservation_id)
    assert settled is not None and settled.state is ReservationState.COMMITTED
    assert settled.asks == {}  # a settled reservation holds nothing (its record is a tombstone)

    other = await store.reserve(
        command(charge(tokens, 10, cap=1000), global_charges=(charge(company_cost, 50, 10_000),))
    )
    released = await store.release(other.reservation_id, NOW_MS)
    assert released.values == {tokens: CounterValue(80, 0), company_cost: CounterValue(400, 0)}
    # expiry is per slot: the global part expires and settles on its own
    third = await store.reserve(
        command(charge(tokens, 10, cap=1000), global_charges=(charge(company_cost, 50, 10_000),))
    )
    assert third.status is ReserveStatus.RESERVED
    assert await value(store, company_cost, LATER_MS) == CounterValue(450, 0)
    assert (await store.commit(third.reservation_id, {"cost_usd": 5}, LATER_MS)).values[company_cost] == CounterValue(
        405, 0
    )


async def test_get_reservation_reports_the_record(store: RedisCounterStore) -> None:
    tokens = counter()
    result = await store.reserve(
        command(charge(tokens, 10, cap=100), meta={"feature": "blog_writer", "model": "gpt-4o-mini"}, ttl_seconds=30)
    )
    reservation = await store.get_reservation(result.reservation_id)
    assert reservation is not None
    assert reservation.subject == "alice"
    assert reservation.state is ReservationState.OPEN
    assert reservation.asks == {"tokens": 10}
    assert reservation.meta == {"feature": "blog_writer", "model": "gpt-4o-mini"}
    assert reservation.created_at_ms == NOW_MS
    assert reservation.expires_at == result.expires_at == -(-(NOW_MS + 30_000) // 1000)


async def test_unknown_and_malformed_reservations(store: RedisCounterStore) -> None:
    unknown = keys.new_reservation_id("alice")
    assert await store.get_reservation(unknown) is None
    with pytest.raises(NotFound):
        await store.commit(unknown, {"tokens": 1}, NOW_MS)
    with pytest.raises(NotFound):
        await store.release(unknown, NOW_MS)
    for malformed in ("", "rsv_", "not-ours", "rsv_YWxpY2U.short"):
        with pytest.raises(InvalidRequest):
            await store.commit(malformed, {}, NOW_MS)
    rid = await reserve(store, 1, counter())
    for actual in ({"tokens": -1}, {"Tokens!": 1}, {"tokens": 2**53}):
        with pytest.raises(InvalidRequest):
            await store.commit(rid, actual, NOW_MS)


async def test_withdraw_releases_both_parts_and_forgets_the_request(store: RedisCounterStore) -> None:
    """The caller was answered DENY after a store failure: the hold goes, and a repeat of the
    request_id is decided afresh instead of replaying a reservation that holds nothing."""
    tokens, company = counter(), global_counter()
    first = await store.reserve(
        command(charge(tokens, 10, cap=1000), request_id="req-w", global_charges=(charge(company, 10, cap=10**6),))
    )
    assert first.status is ReserveStatus.RESERVED
    assert await store.withdraw(first.reservation_id, "req-w", NOW_MS)
    assert await store.usage((tokens, company), NOW_MS) == {tokens: CounterValue(0, 0), company: CounterValue(0, 0)}
    again = await store.reserve(
        command(charge(tokens, 10, cap=1000), request_id="req-w", global_charges=(charge(company, 10, cap=10**6),))
    )
    assert again.status is ReserveStatus.RESERVED and not again.replayed
    assert again.reservation_id != first.reservation_id
    assert await store.usage((tokens, company), NOW_MS) == {tokens: CounterValue(0, 10), company: CounterValue(0, 10)}
    assert not await store.withdraw(first.reservation_id, "req-w", NOW_MS)  # already settled


async def test_withdraw_keeps_a_reservation_a_replay_handed_out(store: RedisCounterStore) -> None:
    tokens = counter()
    first = await store.reserve(command(charge(tokens, 10, cap=1000), request_id="req-r"))
    replay = await store.reserve(command(charge(tokens, 10, cap=1000), request_id="req-r"))
    assert replay.replayed and replay.reservation_id == first.reservation_id
    assert not await store.withdraw(first.reservation_id, "req-r", NOW_MS)
    assert await value(store, tokens) == CounterValue(0, 10)
    await store.commit(first.reservation_id, {"tokens": 8}, NOW_MS)  # the client's commit still lands
    assert await value(store, tokens) == CounterValue(8, 0)


async def test_withdraw_of_an_unknown_reservation_changes_nothing(store: RedisCounterStore) -> None:
    assert not await store.withdraw(keys.new_reservation_id("alice"), "req-x", NOW_MS)


async def test_a_commit_reports_every_window_it_settled(store: RedisCounterStore) -> None:
    day, month, company = counter(), counter(window=Window.MONTH, window_id="2030-01"), global_counter()
    result = await store.reserve(
        command(charge(day, 40, cap=100), charge(month, 40, cap=100), global_charges=(charge(company, 7, cap=100),))
    )
    committed = await store.commit(result.reservation_id, {"tokens": 55, "cost_usd": 9}, NOW_MS)
    assert committed.windows == (
        SettledCounter(day, used_delta=55, held_delta=-40),
        SettledCounter(month, used_delta=55, held_delta=-40),
        SettledCounter(company, used_delta=9, held_delta=-7),
    )
    assert (await store.commit(result.reservation_id, {"tokens": 55}, NOW_MS)).windows == ()  # nothing applied


async def test_a_late_commit_after_the_window_rolled_over_reports_the_window_it_corrected(
    store: RedisCounterStore,
) -> None:
    """The reservation was made in the day 2030-01-01; it expired (charged its estimate) and
    the commit comes when another day's counter is current: it corrects 2030-01-01's."""
    first_day = counter(window_id="2030-01-01")
    rid = await reserve(store, 40, first_day)
    next_day = counter(window_id="2030-01-02")
    await store.reserve(command(charge(next_day, 1, cap=100), now_ms=LATER_MS))  # a touch: it expires
    late = await store.commit(rid, {"tokens": 25}, LATER_MS)
    assert late.windows == (SettledCounter(first_day, used_delta=25 - 40, held_delta=0),)
    assert late.windows[0].counter.window_id == "2030-01-01"
    assert late.values == {first_day: CounterValue(25, 0)}

    other = await reserve(store, 10, first_day)
    await value(store, first_day, LATER_MS)  # expires it
    released = await store.release(other, LATER_MS)
    assert released.windows == (SettledCounter(first_day, used_delta=-10, held_delta=0),)


async def test_a_commit_after_a_counters_retention_reports_it_lost(
    store: RedisCounterStore, raw: redis.asyncio.Redis
) -> None:
    day, month = counter(), counter(window=Window.MONTH, window_id="2030-01")
    rid = await reserve(store, 40, day, month)
    await raw.delete(keys.counter_key(day))  # as Redis does once the day's counter outlived its retention
    committed = await store.commit(rid, {"tokens": 55}, NOW_MS)
    assert committed.windows == (
        SettledCounter(day, used_delta=55, held_delta=-40, lost=True),  # reported, not counted
        SettledCounter(month, used_delta=55, held_delta=-40, lost=False),
    )
    assert committed.values == {day: CounterValue(0, 0), month: CounterValue(55, 0)}
    assert not await raw.exists(keys.counter_key(day))  # never recreated without its expiry


async def test_release_of_an_open_reservation_reports_the_held_amount_given_back(store: RedisCounterStore) -> None:
    tokens = counter()
    rid = await reserve(store, 30, tokens)
    assert (await store.release(rid, NOW_MS)).windows == (SettledCounter(tokens, used_delta=0, held_delta=-30),)
