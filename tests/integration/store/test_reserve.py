"""RedisCounterStore.reserve against a real redis-server: gates, atomicity, idempotency."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import replace

import pytest
import redis.asyncio
from support.charges import (
    EXPIRE_AT,
    NOW_MS,
    charge,
    command,
    counter,
    global_counter,
    global_record_key,
    record_key,
    request_record_key,
)

from quota_service.errors import InvalidRequest
from quota_service.policy.domain import GLOBAL_SCOPE, CounterRef, CounterValue
from quota_service.policy.windows import Window
from quota_service.store import keys
from quota_service.store.base import ReserveStatus
from quota_service.store.redis_store import RedisCounterStore

pytestmark = pytest.mark.redis


async def expiry_ms(raw: redis.asyncio.Redis, key: str) -> int:
    """A key's absolute expiry (unix ms): PEXPIRETIME on Redis 7; on Redis 6.2, which lacks
    it, TIME + PTTL (good to a few ms, hence the tests' 50 ms tolerance)."""
    try:
        return int(await raw.pexpiretime(key))
    except redis.ResponseError:
        seconds, micros = await raw.time()
        return int(seconds) * 1000 + int(micros) // 1000 + int(await raw.pttl(key))


async def value(store: RedisCounterStore, ref: CounterRef) -> CounterValue:
    return (await store.usage((ref,), NOW_MS))[ref]


async def test_200_concurrent_reserves_stop_exactly_at_the_block(store: RedisCounterStore) -> None:
    tokens = counter()
    results = await asyncio.gather(
        *(store.reserve(command(charge(tokens, 10, cap=1000, block=950))) for _ in range(200))
    )
    statuses = Counter(r.status for r in results)
    assert statuses == {ReserveStatus.RESERVED: 95, ReserveStatus.DENIED: 105}
    assert await value(store, tokens) == CounterValue(used=0, held=950)
    reserved = [r.reservation_id for r in results if r.status is ReserveStatus.RESERVED]
    assert len(set(reserved)) == 95
    assert all(r.reservation_id == "" for r in results if r.status is ReserveStatus.DENIED)
    # every reservation saw a distinct "before" value: 0, 10, ..., 940
    assert sorted(r.values[tokens].held for r in results if r.status is ReserveStatus.RESERVED) == list(
        range(0, 950, 10)
    )

    await asyncio.gather(*(store.commit(rid, {"tokens": 10}, NOW_MS) for rid in reserved))
    assert await value(store, tokens) == CounterValue(used=950, held=0)


async def test_the_same_request_id_five_times_at_once_counts_once(store: RedisCounterStore) -> None:
    tokens = counter()
    results = await asyncio.gather(
        *(store.reserve(command(charge(tokens, 10, cap=1000), request_id="req-1")) for _ in range(5))
    )
    assert {r.status for r in results} == {ReserveStatus.RESERVED}
    assert len({r.reservation_id for r in results}) == 1
    assert sorted(r.replayed for r in results) == [False, True, True, True, True]
    assert all(r.values[tokens] == CounterValue(0, 0) for r in results)
    assert await value(store, tokens) == CounterValue(used=0, held=10)


async def test_a_replay_returns_the_recorded_values_not_the_current_ones(store: RedisCounterStore) -> None:
    tokens = counter()
    first = await store.reserve(command(charge(tokens, 10, cap=100), request_id="req-1"))
    await store.reserve(command(charge(tokens, 30, cap=100)))
    replay = await store.reserve(command(charge(tokens, 10, cap=100), request_id="req-1"))
    assert replay.replayed and replay.reservation_id == first.reservation_id
    assert replay.expires_at == first.expires_at
    assert replay.values[tokens] == CounterValue(0, 0)
    assert await value(store, tokens) == CounterValue(0, 40)


async def test_a_denied_request_replays_its_denial(store: RedisCounterStore) -> None:
    tokens = counter()
    blocker = await store.reserve(command(charge(tokens, 95, cap=100)))
    denied = await store.reserve(command(charge(tokens, 10, cap=100), request_id="req-2"))
    assert denied.status is ReserveStatus.DENIED
    await store.release(blocker.reservation_id, NOW_MS)  # room again: the replay still answers the first decision
    replay = await store.reserve(command(charge(tokens, 10, cap=100), request_id="req-2"))
    assert replay.status is ReserveStatus.DENIED and replay.replayed
    assert replay.values == denied.values == {tokens: CounterValue(0, 95)}
    assert await value(store, tokens) == CounterValue(0, 0)


@pytest.mark.parametrize(
    ("used_before", "ask", "expected"),
    [
        (0, 100, ReserveStatus.RESERVED),  # uh + ask == cap: allowed
        (0, 101, ReserveStatus.DENIED),  # uh + ask > cap
        (89, 1, ReserveStatus.RESERVED),  # uh = 89 < block 90
        (90, 1, ReserveStatus.DENIED),  # uh >= block, although the ask fits
    ],
)
async def test_the_gate_is_the_integer_rule(
    store: RedisCounterStore, used_before: int, ask: int, expected: ReserveStatus
) -> None:
    tokens = counter()
    if used_before:
        first = await store.reserve(command(charge(tokens, used_before, cap=1000)))
        await store.commit(first.reservation_id, {"tokens": used_before}, NOW_MS)
    result = await store.reserve(command(charge(tokens, ask, cap=100, block=90)))
    assert result.status is expected
    assert result.values[tokens] == CounterValue(used_before, 0)


async def test_all_or_nothing_across_counters(store: RedisCounterStore, raw: redis.asyncio.Redis) -> None:
    day, month, images = counter(), counter(window=Window.MONTH, window_id="2030-01"), counter(metric="images")
    full = await store.reserve(command(charge(images, 5, cap=5)))
    assert full.status is ReserveStatus.RESERVED

    denied = await store.reserve(
        command(charge(day, 10, cap=1000), charge(month, 10, cap=1000), charge(images, 1, cap=5))
    )
    assert denied.status is ReserveStatus.DENIED
    assert not await raw.exists(keys.counter_key(day), keys.counter_key(month))
    assert await value(store, images) == CounterValue(0, 5)

    ok = await store.reserve(command(charge(day, 10, cap=1000), charge(month, 10, cap=1000)))
    assert ok.status is ReserveStatus.RESERVED
    assert [await value(store, ref) for ref in (day, month)] == [CounterValue(0, 10)] * 2


async def test_a_charge_asking_zero_plays_no_part(store: RedisCounterStore, raw: redis.asyncio.Redis) -> None:
    tokens, images = counter(), counter(metric="images")
    await store.reserve(command(charge(images, 5, cap=5)))
    result = await store.reserve(command(charge(tokens, 10, cap=100), charge(images, 0, cap=5)))
    assert result.status is ReserveStatus.RESERVED
    assert result.values[images] == CounterValue(0, 5)
    assert await value(store, images) == CounterValue(0, 5)


async def test_dry_run_reports_current_values_and_writes_nothing(
    store: RedisCounterStore, raw: redis.asyncio.Redis
) -> None:
    tokens, company = counter(), global_counter()
    await store.reserve(command(charge(tokens, 40, cap=100), global_charges=(charge(company, 7, cap=10),)))
    before = {key: await raw.hgetall(key) for key in await raw.keys("*") if await raw.type(key) == "hash"}
    key_count = await raw.dbsize()

    for ask in (10, 1000):  # a fitting and a denied one: both only checked
        result = await store.reserve(
            command(
                charge(tokens, ask, cap=100),
                global_charges=(charge(company, 1, cap=10),),
                request_id="dry",
                dry_run=True,
            )
        )
        assert result.status is ReserveStatus.CHECKED
        assert result.reservation_id == ""
        assert result.values == {tokens: CounterValue(0, 40), company: CounterValue(0, 7)}

    assert await raw.dbsize() == key_count
    assert not await raw.exists(request_record_key("alice", "dry"))
    assert {key: await raw.hgetall(key) for key in before} == before


async def test_a_stale_config_version_writes_nothing(store: RedisCounterStore, raw: redis.asyncio.Redis) -> None:
    tokens = counter()
    fresh = await store.reserve(command(charge(tokens, 10, cap=100), config_version="0", request_id="r0"))
    assert fresh.status is ReserveStatus.RESERVED  # a subject nobody touched is at version "0"

    await store.set_tier("alice", "pro_alpha")  # version "1"
    keys_before = await raw.dbsize()
    stale = await store.reserve(command(charge(tokens, 10, cap=100), config_version="0", request_id="r1"))
    assert stale.status is ReserveStatus.STALE_CONFIG
    assert stale.reservation_id == ""
    assert await raw.dbsize() == keys_before
    assert not await raw.exists(request_record_key("alice", "r1"))
    assert await value(store, tokens) == CounterValue(0, 10)

    current = await store.reserve(command(charge(tokens, 10, cap=100), config_version="1", request_id="r1"))
    assert current.status is ReserveStatus.RESERVED
    unchecked = await store.reserve(command(charge(tokens, 10, cap=100), config_version=None))
    assert unchecked.status is ReserveStatus.RESERVED


async def test_counter_and_reservation_keys_expire(store: RedisCounterStore, raw: redis.asyncio.Redis) -> None:
    tokens, now_ms = counter(), int(time.time() * 1000)
    result = await store.reserve(command(charge(tokens, 10, cap=100), request_id="r", ttl_seconds=60, now_ms=now_ms))
    assert await expiry_ms(raw, keys.counter_key(tokens)) == pytest.approx(EXPIRE_AT * 1000, abs=50)
    grace_ms = store.grace_seconds * 1000
    assert grace_ms == 60_000  # the default
    # an open record (the request's answer too) lives as long as the counters it holds on
    record = record_key(result.reservation_id)
    assert record == request_record_key("alice", "r")
    assert await expiry_ms(raw, record) == pytest.approx(EXPIRE_AT * 1000, abs=50)
    assert await expiry_ms(raw, keys.open_set_key("alice")) == pytest.approx(EXPIRE_AT * 1000, abs=50)
    (plan,) = await raw.keys("a:{alice}:*")  # the shared text it names lives as long as it
    assert await expiry_ms(raw, plan) == pytest.approx(EXPIRE_AT * 1000, abs=50)
    assert result.expires_at == -(-(now_ms + 60_000) // 1000)

    await store.commit(result.reservation_id, {"tokens": 5}, now_ms)
    # settled: a tombstone kept for the grace period after its expiry, for replays and
    # repeated settlements, with the layout text it names
    assert await raw.type(record) == "string"
    assert await expiry_ms(raw, record) == pytest.approx(now_ms + 60_000 + grace_ms, abs=50)
    (layout,) = await raw.keys("l:{alice}:*")
    assert await expiry_ms(raw, layout) == pytest.approx(now_ms + 60_000 + grace_ms, abs=50)
    assert not await raw.exists(keys.open_set_key("alice"))  # its last member left


async def test_no_key_is_born_expired_when_the_clock_is_behind(
    store: RedisCounterStore, raw: redis.asyncio.Redis
) -> None:
    """A service (or test) clock far behind Redis' must not make keys vanish on creation."""
    past_ms = int(time.time() * 1000) - 30 * 86400 * 1000
    stale_counter = replace(counter(), resets_at=past_ms // 1000 + 3600 - 86_400)
    result = await store.reserve(
        command(charge(stale_counter, 10, cap=100), request_id="old", now_ms=past_ms, ttl_seconds=60)
    )
    assert result.status is ReserveStatus.RESERVED
    floor_ms = int(time.time() * 1000) + store.grace_seconds * 1000 - 5000
    (plan,) = await raw.keys("a:{alice}:*")
    for key in (keys.counter_key(stale_counter), record_key(result.reservation_id), keys.open_set_key("alice"), plan):
        assert await expiry_ms(raw, key) > floor_ms, key
    assert (await store.usage((stale_counter,), past_ms))[stale_counter] == CounterValue(0, 10)
    await store.commit(result.reservation_id, {"tokens": 3}, past_ms)
    (layout,) = await raw.keys("l:{alice}:*")
    for key in (record_key(result.reservation_id), plan, layout):
        assert await expiry_ms(raw, key) > floor_ms, key


async def test_the_global_step_reserves_in_its_own_slot(store: RedisCounterStore, raw: redis.asyncio.Redis) -> None:
    tokens, company = counter(), global_counter()
    result = await store.reserve(
        command(charge(tokens, 10, cap=100), global_charges=(charge(company, 3, cap=10),), request_id="g")
    )
    assert result.status is ReserveStatus.RESERVED
    assert result.values == {tokens: CounterValue(0, 0), company: CounterValue(0, 0)}
    assert await raw.exists(global_record_key(result.reservation_id))

    # a replay re-runs the global step by reservation id: counted once there too
    replay = await store.reserve(
        command(charge(tokens, 10, cap=100), global_charges=(charge(company, 3, cap=10),), request_id="g")
    )
    assert replay.replayed and replay.reservation_id == result.reservation_id
    assert await value(store, company) == CounterValue(0, 3)
    assert await value(store, tokens) == CounterValue(0, 10)


async def test_a_global_denial_gives_the_subject_part_back(store: RedisCounterStore) -> None:
    tokens, company = counter(), global_counter()
    await store.reserve(command(subject="bob", global_charges=(charge(company, 9, cap=10),)))
    assert await value(store, company) == CounterValue(0, 9)

    denied = await store.reserve(
        command(charge(tokens, 10, cap=100), global_charges=(charge(company, 2, cap=10),), request_id="x")
    )
    assert denied.status is ReserveStatus.DENIED_GLOBAL
    assert denied.reservation_id == ""
    assert denied.values == {tokens: CounterValue(0, 0), company: CounterValue(0, 9)}
    assert await value(store, tokens) == CounterValue(0, 0)  # compensated
    assert await value(store, company) == CounterValue(0, 9)

    replay = await store.reserve(
        command(charge(tokens, 10, cap=100), global_charges=(charge(company, 2, cap=10),), request_id="x")
    )
    assert replay.status is ReserveStatus.DENIED_GLOBAL and replay.replayed
    assert replay.values == denied.values
    assert await value(store, tokens) == CounterValue(0, 0)


async def test_bad_commands_are_refused_before_any_write(store: RedisCounterStore, raw: redis.asyncio.Redis) -> None:
    tokens = counter()
    bad = [
        command(charge(tokens, -1, cap=100)),
        command(charge(tokens, 2**53, cap=2**53)),
        command(charge(tokens, 1, cap=100), charge(tokens, 1, cap=100)),  # the same counter twice
        command(charge(counter("bob"), 1, cap=100)),  # another subject's counter
        command(charge(tokens, 1, cap=100), ttl_seconds=0),
        command(charge(global_counter(), 1, cap=100)),  # a global counter in the subject step
        command(charge(tokens, 1, cap=100), subject=GLOBAL_SCOPE),
    ]
    for cmd in bad:
        with pytest.raises(InvalidRequest):
            await store.reserve(cmd)
    for reservation_id in ("rsv_x", keys.new_reservation_id("bob")):
        with pytest.raises(InvalidRequest):
            await store.reserve(replace(command(charge(tokens, 1, cap=100)), reservation_id=reservation_id))
    assert await raw.dbsize() == 0


async def test_200_subjects_at_once_stop_exactly_at_the_global_cap(
    store: RedisCounterStore, raw: redis.asyncio.Redis
) -> None:
    """The global steps of concurrent requests are group-committed (reserve_batch.lua): the
    company-wide cap must still be exact, and every denied subject's part given back."""
    company = global_counter()
    subjects = [f"user{i}" for i in range(200)]
    results = await asyncio.gather(
        *(
            store.reserve(
                command(
                    charge(counter(who, "cost_usd"), 10, cap=1_000_000),
                    subject=who,
                    global_charges=(charge(company, 10, cap=1000),),
                )
            )
            for who in subjects
        )
    )
    statuses = Counter(r.status for r in results)
    assert statuses == {ReserveStatus.RESERVED: 100, ReserveStatus.DENIED_GLOBAL: 100}
    assert await value(store, company) == CounterValue(used=0, held=1000)
    # each global step saw a distinct "before": the batches ran the steps one after the other
    assert sorted(r.values[company].held for r in results if r.status is ReserveStatus.RESERVED) == list(
        range(0, 1000, 10)
    )
    for who, result in zip(subjects, results, strict=True):
        held = CounterValue(0, 10) if result.status is ReserveStatus.RESERVED else CounterValue(0, 0)
        assert await value(store, counter(who, "cost_usd")) == held, who
    reserved = [r.reservation_id for r in results if r.status is ReserveStatus.RESERVED]
    await asyncio.gather(*(store.commit(rid, {"cost_usd": 7}, NOW_MS) for rid in reserved))
    assert await value(store, company) == CounterValue(used=700, held=0)
