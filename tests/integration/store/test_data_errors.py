"""Damaged data is not an outage: a wrong-typed or corrupt key, and Redis out of memory,
raise StoreDataError naming the key, never StoreUnavailable (real redis-server and 6.2)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
import redis.asyncio
from support.charges import NOW_MS, charge, command, counter, record_key

from quota_service import deadline
from quota_service.errors import StoreDataError, StoreUnavailable
from quota_service.store import keys
from quota_service.store.base import ReserveStatus
from quota_service.store.embedded import EmbeddedRedis
from quota_service.store.redis_store import RedisCounterStore

pytestmark = pytest.mark.redis


async def reserved(store: RedisCounterStore, ask: int = 10) -> str:
    result = await store.reserve(command(charge(counter(), ask, cap=1000), request_id="req-1"))
    assert result.status is ReserveStatus.RESERVED
    return result.reservation_id


async def test_a_counter_that_is_a_list_is_damaged_data(store: RedisCounterStore, raw: redis.asyncio.Redis) -> None:
    tokens = counter()
    rid = await reserved(store)
    await raw.delete(keys.counter_key(tokens))
    await raw.rpush(keys.counter_key(tokens), "not a hash")
    for call in (
        lambda: store.reserve(command(charge(tokens, 1, cap=1000))),
        lambda: store.usage((tokens,), NOW_MS),
        lambda: store.commit(rid, {"tokens": 1}, NOW_MS),
    ):
        with pytest.raises(StoreDataError) as info:
            await call()
        assert info.value.key == keys.counter_key(tokens)
        assert "WRONGTYPE" in str(info.value)


async def test_a_counter_with_a_used_that_is_no_number_is_damaged_data(
    store: RedisCounterStore, raw: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = counter()
    await reserved(store)
    await raw.hset(keys.counter_key(tokens), "used", "ten")
    with (
        caplog.at_level(logging.ERROR, logger="quota_service.store.redis_store"),
        pytest.raises(StoreDataError) as info,
    ):
        await store.reserve(command(charge(tokens, 1, cap=1000)))
    assert info.value.key == keys.counter_key(tokens)
    assert "used is not a whole number: ten" in str(info.value)
    # logged once, at ERROR, with the key
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert keys.counter_key(tokens) in caplog.records[0].getMessage()
    with pytest.raises(StoreDataError):
        await store.usage((tokens,), NOW_MS)


async def test_a_corrupt_reservation_record_is_damaged_data(store: RedisCounterStore, raw: redis.asyncio.Redis) -> None:
    rid = await reserved(store)
    record = record_key(rid)
    await raw.hset(record, "asks", "ten")
    for call in (
        lambda: store.commit(rid, {"tokens": 1}, NOW_MS),
        lambda: store.release(rid, NOW_MS),
        lambda: store.get_reservation(rid),
        lambda: store.reserve(command(charge(counter(), 10, cap=1000), request_id="req-1")),  # its replay
    ):
        with pytest.raises(StoreDataError) as info:
            await call()
        assert info.value.key == record

    await raw.delete(record)
    await raw.set(record, "c|garbage")  # a tombstone that is none
    with pytest.raises(StoreDataError) as info:
        await store.commit(rid, {"tokens": 1}, NOW_MS)
    assert info.value.key == record and "not a tombstone" in str(info.value)


async def test_a_corrupt_json_in_a_records_shared_text_is_damaged_data(
    store: RedisCounterStore, raw: redis.asyncio.Redis
) -> None:
    rid = await reserved(store)
    (plan,) = await raw.keys("a:{alice}:*")
    await raw.set(plan, "tokens\ntokens=1\n{not json\nanswer", keepttl=True)
    with pytest.raises(StoreDataError) as info:
        await store.get_reservation(rid)
    assert info.value.key == record_key(rid)
    assert "JSONDecodeError" in str(info.value)
    await raw.delete(plan)  # gone while the record names it
    with pytest.raises(StoreDataError) as gone:
        await store.get_reservation(rid)
    assert gone.value.key == plan


async def test_a_record_of_another_type_is_damaged_data(store: RedisCounterStore, raw: redis.asyncio.Redis) -> None:
    rid = await reserved(store)
    await raw.delete(record_key(rid))
    await raw.sadd(record_key(rid), "x")
    with pytest.raises(StoreDataError) as info:
        await store.release(rid, NOW_MS)
    assert info.value.key == record_key(rid) and "a record of type set" in str(info.value)


async def test_out_of_memory_is_damaged_data_not_an_outage(store: RedisCounterStore, raw: redis.asyncio.Redis) -> None:
    """A lasting condition (DENY STORE_ERROR), never on_store_error's allow."""
    rid = await reserved(store)
    await raw.config_set("maxmemory", 1)  # noeviction (the default): every write is refused
    try:
        for call in (
            lambda: store.reserve(command(charge(counter(), 1, cap=1000))),
            lambda: store.commit(rid, {"tokens": 1}, NOW_MS),
        ):
            with pytest.raises(StoreDataError) as info:
                await call()
            assert "OOM" in str(info.value) or "maxmemory" in str(info.value)
            assert info.value.key.startswith("r:{alice}:")  # the script's first key: the record
    finally:
        await raw.config_set("maxmemory", 0)
    assert not (await store.commit(rid, {"tokens": 1}, NOW_MS)).already_settled  # nothing was half-written


# -- outages stay outages -----------------------------------------------------------------


@pytest.fixture
async def stopped_store() -> AsyncIterator[RedisCounterStore]:
    server = EmbeddedRedis(persistence=False)
    server.start()
    store = RedisCounterStore.from_url(server.url, timeout_seconds=5.0)
    server.stop()
    try:
        yield store
    finally:
        await store.close()


async def test_a_request_whose_deadline_passed_does_no_io(stopped_store: RedisCounterStore) -> None:
    """The Redis behind this store is gone: a call that tried would say so; this one never tries."""
    with deadline.request_deadline(0.0):
        with pytest.raises(StoreUnavailable, match=r"^request deadline passed$"):
            await stopped_store.reserve(command(charge(counter(), 1, cap=1000)))
        with pytest.raises(StoreUnavailable, match=r"^request deadline passed$"):
            await stopped_store.usage((counter(),), NOW_MS)
    with pytest.raises(StoreUnavailable, match="ConnectionError"):  # outside the deadline it tries
        await stopped_store.ping()


async def test_a_call_gets_no_more_than_what_is_left_of_the_request_deadline(store_url: str) -> None:
    """The store's own timeout is 5 s; the request has 50 ms left: that is the call's budget."""
    store = RedisCounterStore.from_url(store_url, timeout_seconds=5.0)
    client = redis.asyncio.Redis.from_url(store_url, decode_responses=True)
    try:
        await store.ping()
        await client.execute_command("CLIENT", "PAUSE", 2000, "ALL")  # every client waits ...
        with deadline.request_deadline(0.05), pytest.raises(StoreUnavailable) as info:
            await store.usage((counter(),), NOW_MS)
        budget = float(str(info.value).rsplit("within ", 1)[1].rstrip("s"))
        assert 0 < budget <= 0.05
    finally:
        await client.execute_command("CLIENT", "UNPAUSE")  # ... until now
        await client.aclose()
        await store.close()
