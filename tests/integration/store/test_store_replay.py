"""A repeated request_id gets the first answer, whatever it asks now, and never changes,
settles or releases the reservation (real redis-server, and Redis 6.2)."""

from __future__ import annotations

import pytest
import redis.asyncio
from support.charges import (
    NOW_MS,
    charge,
    command,
    counter,
    global_counter,
    global_record_key,
    record_key,
    request_record_key,
)

from quota_service.errors import NotFound, StoreDataError
from quota_service.policy.domain import GLOBAL_SCOPE, CounterRef, CounterValue
from quota_service.store import keys
from quota_service.store.base import ReservationState, ReserveStatus
from quota_service.store.redis_store import RedisCounterStore

pytestmark = pytest.mark.redis

LATER_MS = NOW_MS + 10 * 60 * 1000  # past every 60 s reservation of these tests


async def value(store: RedisCounterStore, ref: CounterRef, now_ms: int = NOW_MS) -> CounterValue:
    return (await store.usage((ref,), now_ms))[ref]


async def state(store: RedisCounterStore, reservation_id: str) -> ReservationState:
    reservation = await store.get_reservation(reservation_id)
    assert reservation is not None
    return reservation.state


async def test_a_replay_asking_otherwise_gets_the_first_answer_and_changes_nothing(
    store: RedisCounterStore, raw: redis.asyncio.Redis
) -> None:
    tokens = counter()
    first = await store.reserve(command(charge(tokens, 10, cap=100), request_id="X", answer="plan A: 100 tokens"))
    assert first.status is ReserveStatus.RESERVED and not first.replayed and first.answer == ""
    await store.reserve(command(charge(tokens, 30, cap=100)))  # someone else since

    # The same request_id with a cap it would now fail, another ask and another answer text.
    replay = await store.reserve(command(charge(tokens, 50, cap=5), request_id="X", answer="plan B: 5 tokens"))
    assert replay.status is ReserveStatus.RESERVED and replay.replayed
    assert (replay.reservation_id, replay.expires_at) == (first.reservation_id, first.expires_at)
    assert replay.values == first.values == {tokens: CounterValue(0, 0)}  # as recorded, not (0, 40)
    assert replay.answer == "plan A: 100 tokens"
    assert await value(store, tokens) == CounterValue(0, 40)  # counted once
    assert await state(store, first.reservation_id) is ReservationState.OPEN  # still open ...

    committed = await store.commit(first.reservation_id, {"tokens": 8}, NOW_MS)  # ... and committable
    assert not committed.already_settled
    assert await value(store, tokens) == CounterValue(8, 30)

    # After the commit: still the first answer; the commit is not undone or repeated.
    after = await store.reserve(command(charge(tokens, 1, cap=1000), request_id="X", answer="plan C"))
    assert (after.status, after.reservation_id, after.replayed) == (ReserveStatus.RESERVED, first.reservation_id, True)
    assert (after.values, after.answer, after.expires_at) == (first.values, "plan A: 100 tokens", first.expires_at)
    assert await value(store, tokens) == CounterValue(8, 30)
    assert await state(store, first.reservation_id) is ReservationState.COMMITTED
    assert (await store.commit(first.reservation_id, {"tokens": 99}, NOW_MS)).already_settled
    assert await raw.type(request_record_key("alice", "X")) == "string"  # a tombstone now


async def test_a_replay_under_a_changed_config_is_not_re_judged(store: RedisCounterStore) -> None:
    tokens = counter()
    first = await store.reserve(command(charge(tokens, 10, cap=100), request_id="X", config_version="0", answer="a"))
    await store.set_tier("alice", "pro_alpha")  # the config version moves on
    replay = await store.reserve(command(charge(tokens, 10, cap=100), request_id="X", config_version="0"))
    assert replay.status is ReserveStatus.RESERVED and replay.reservation_id == first.reservation_id
    assert replay.answer == "a"


async def test_a_denial_replays_with_its_answer(store: RedisCounterStore) -> None:
    tokens = counter()
    await store.reserve(command(charge(tokens, 95, cap=100)))
    denied = await store.reserve(command(charge(tokens, 10, cap=100), request_id="D", answer="denied: tokens"))
    replay = await store.reserve(command(charge(tokens, 1, cap=10**6), request_id="D", answer="other"))
    assert (replay.status, replay.replayed, replay.answer) == (ReserveStatus.DENIED, True, "denied: tokens")
    assert replay.values == denied.values == {tokens: CounterValue(0, 95)}
    assert await value(store, tokens) == CounterValue(0, 95)


async def test_a_global_denial_replays_with_both_steps_recorded_values(store: RedisCounterStore) -> None:
    tokens, company = counter(), global_counter()
    await store.reserve(command(subject="bob", global_charges=(charge(company, 9, cap=10),)))
    denied = await store.reserve(
        command(charge(tokens, 10, cap=100), global_charges=(charge(company, 2, cap=10),), request_id="G", answer="g")
    )
    assert denied.status is ReserveStatus.DENIED_GLOBAL
    await store.reserve(command(subject="carol", global_charges=(charge(company, 1, cap=10),)))  # company moves on
    replay = await store.reserve(
        command(charge(tokens, 1, cap=100), global_charges=(charge(company, 1, cap=10**6),), request_id="G")
    )
    assert (replay.status, replay.replayed, replay.answer) == (ReserveStatus.DENIED_GLOBAL, True, "g")
    assert replay.values == denied.values == {tokens: CounterValue(0, 0), company: CounterValue(0, 9)}
    assert await store.usage((tokens, company), NOW_MS) == {tokens: CounterValue(0, 0), company: CounterValue(0, 10)}


async def test_a_replay_of_an_expired_reservation_answers_it_and_keeps_it_charged(store: RedisCounterStore) -> None:
    tokens = counter()
    first = await store.reserve(command(charge(tokens, 40, cap=100), request_id="E", answer="e"))
    replay = await store.reserve(command(charge(tokens, 40, cap=100), request_id="E", now_ms=LATER_MS))
    assert (replay.status, replay.reservation_id, replay.answer) == (ReserveStatus.RESERVED, first.reservation_id, "e")
    assert await state(store, first.reservation_id) is ReservationState.EXPIRED
    assert await value(store, tokens, LATER_MS) == CounterValue(40, 0)  # settled at its estimate, once
    assert (await store.commit(first.reservation_id, {"tokens": 15}, LATER_MS)).values == {tokens: CounterValue(15, 0)}


async def test_a_replay_with_a_global_part_counts_it_once_before_and_after_the_commit(
    store: RedisCounterStore, raw: redis.asyncio.Redis
) -> None:
    tokens, company = counter(), global_counter()

    def cmd(cap: int = 100) -> object:
        return command(charge(tokens, 10, cap=cap), global_charges=(charge(company, 3, cap=cap),), request_id="W")

    first = await store.reserve(cmd())  # type: ignore[arg-type]
    replay = await store.reserve(cmd(cap=1))  # type: ignore[arg-type]
    assert replay.reservation_id == first.reservation_id and replay.values == first.values
    assert await store.usage((tokens, company), NOW_MS) == {tokens: CounterValue(0, 10), company: CounterValue(0, 3)}

    await store.commit(first.reservation_id, {"tokens": 4, "cost_usd": 2}, NOW_MS)
    assert not await raw.exists(global_record_key(first.reservation_id))  # the global part is forgotten
    after = await store.reserve(cmd())  # type: ignore[arg-type]
    assert (after.status, after.reservation_id) == (ReserveStatus.RESERVED, first.reservation_id)
    assert after.values[tokens] == CounterValue(0, 0)  # recorded
    assert after.values[company] == CounterValue(2, 0)  # the company-wide counters as they are now
    # the replay did not hold the company-wide ask again
    assert await store.usage((tokens, company), NOW_MS) == {tokens: CounterValue(4, 0), company: CounterValue(2, 0)}


async def test_a_replay_completes_a_global_step_that_never_happened(
    store: RedisCounterStore, raw: redis.asyncio.Redis
) -> None:
    """The subject's step went through, the global one failed (here: damaged data in the
    global slot); the caller retries the request_id: the reservation is completed, once."""
    tokens, company = counter(), global_counter()
    await raw.set(keys.open_set_key(GLOBAL_SCOPE), "not a zset")
    request = command(charge(tokens, 10, cap=100), global_charges=(charge(company, 3, cap=100),), request_id="C")
    with pytest.raises(StoreDataError):
        await store.reserve(request)
    assert await value(store, tokens) == CounterValue(0, 10)  # the subject's part is held
    await raw.delete(keys.open_set_key(GLOBAL_SCOPE))

    replay = await store.reserve(request)
    assert replay.status is ReserveStatus.RESERVED and replay.replayed
    assert await store.usage((tokens, company), NOW_MS) == {tokens: CounterValue(0, 10), company: CounterValue(0, 3)}
    again = await store.reserve(request)
    assert again.reservation_id == replay.reservation_id
    assert await value(store, company) == CounterValue(0, 3)
    await store.commit(replay.reservation_id, {"tokens": 5, "cost_usd": 1}, NOW_MS)
    assert await store.usage((tokens, company), NOW_MS) == {tokens: CounterValue(5, 0), company: CounterValue(1, 0)}


async def test_after_its_record_is_gone_a_request_id_is_decided_afresh(
    store: RedisCounterStore, raw: redis.asyncio.Redis
) -> None:
    tokens = counter()
    first = await store.reserve(command(charge(tokens, 10, cap=100), request_id="F"))
    await store.commit(first.reservation_id, {"tokens": 10}, NOW_MS)
    await raw.delete(record_key(first.reservation_id))  # as after the grace period
    fresh = await store.reserve(command(charge(tokens, 10, cap=100), request_id="F"))
    assert fresh.status is ReserveStatus.RESERVED and not fresh.replayed
    assert fresh.reservation_id != first.reservation_id  # same record name, another generation
    with pytest.raises(NotFound):  # the forgotten reservation is not mistaken for the new one
        await store.commit(first.reservation_id, {"tokens": 1}, NOW_MS)
    assert await value(store, tokens) == CounterValue(10, 10)


async def test_a_replay_never_adds_a_company_wide_part_the_first_decision_did_not_have(
    store: RedisCounterStore,
) -> None:
    """A global cap added to the policy since: the replay reports the company-wide counter
    as it is and holds nothing on it."""
    tokens, company = counter(), global_counter()
    first = await store.reserve(command(charge(tokens, 10, cap=100), request_id="N"))
    replay = await store.reserve(
        command(charge(tokens, 10, cap=100), global_charges=(charge(company, 5, cap=100),), request_id="N")
    )
    assert (replay.status, replay.reservation_id) == (ReserveStatus.RESERVED, first.reservation_id)
    assert replay.values == {tokens: CounterValue(0, 0), company: CounterValue(0, 0)}
    assert await store.usage((tokens, company), NOW_MS) == {tokens: CounterValue(0, 10), company: CounterValue(0, 0)}
    await store.commit(first.reservation_id, {"tokens": 10, "cost_usd": 5}, NOW_MS)
    assert await store.usage((tokens, company), NOW_MS) == {tokens: CounterValue(10, 0), company: CounterValue(0, 0)}
