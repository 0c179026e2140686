"""Durability, selectable: the embedded Redis' fsync policy, and WAIT for replicas after every
money write (a real primary and a real replica)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio

from quota_service.metrics import REPLICA_WAIT_SHORT
from quota_service.policy.domain import CounterCharge, CounterRef
from quota_service.policy.windows import Window
from quota_service.store import keys
from quota_service.store.base import ReserveCommand
from quota_service.store.embedded import EmbeddedRedis
from quota_service.store.redis_store import RedisCounterStore

pytestmark = [pytest.mark.redis, pytest.mark.fault]

DAY = time.strftime("%Y-%m-%d", time.gmtime())


def test_the_embedded_redis_fsyncs_every_write_when_asked(tmp_path: Path) -> None:
    server = EmbeddedRedis(data_dir=tmp_path, persistence=True, appendfsync="always")
    server.start()
    try:
        with redis.Redis.from_url(server.url, decode_responses=True) as client:
            assert client.config_get("appendfsync") == {"appendfsync": "always"}
            assert client.config_get("appendonly") == {"appendonly": "yes"}
    finally:
        server.stop()
    with pytest.raises(ValueError, match="appendfsync"):
        EmbeddedRedis(data_dir=tmp_path, appendfsync="never")


@pytest.fixture
def primary_and_replica(tmp_path: Path) -> Iterator[tuple[EmbeddedRedis, EmbeddedRedis]]:
    primary = EmbeddedRedis(
        data_dir=tmp_path / "primary", persistence=False, extra_args=("--repl-diskless-sync-delay", "0")
    )
    primary.start()
    port = primary.url.rsplit(":", 1)[1].split("/")[0]
    replica = EmbeddedRedis(
        data_dir=tmp_path / "replica", persistence=False, extra_args=("--replicaof", "127.0.0.1", port)
    )
    replica.start()
    try:
        with redis.Redis.from_url(replica.url, decode_responses=True) as client:
            deadline = time.monotonic() + 20
            while client.info("replication")["master_link_status"] != "up":
                assert time.monotonic() < deadline, "the replica never synced"
                time.sleep(0.1)
        yield primary, replica
    finally:
        replica.stop()
        primary.stop()


@pytest.fixture
async def raw_replica(primary_and_replica: tuple[EmbeddedRedis, EmbeddedRedis]) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(primary_and_replica[1].url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


def command(who: str, n: int) -> ReserveCommand:
    ref = CounterRef(who, "tokens", Window.DAY, DAY, int(time.time()) + 86400)
    return ReserveCommand(
        subject=who,
        reservation_id=keys.new_reservation_id(who),
        request_id=f"r-{n}",
        subject_charges=(CounterCharge(ref, 10, 10**9, 10**9),),
        global_charges=(),
        now_ms=int(time.time() * 1000),
        ttl_seconds=60,
        estimate={"tokens": 10},
    )


async def test_every_money_write_is_on_the_replica_when_it_is_answered(
    primary_and_replica: tuple[EmbeddedRedis, EmbeddedRedis], raw_replica: redis.asyncio.Redis
) -> None:
    primary, _ = primary_and_replica
    store = RedisCounterStore.from_url(primary.url, timeout_seconds=2.0, wait_replicas=1, wait_ms=1000)
    counter = f"q:{{w}}:tokens:day:{DAY}"
    try:
        for n in range(20):
            reserved = await store.reserve(command("w", n))
            assert await raw_replica.hget(counter, "held") == "10"  # already on the replica
            await store.commit(reserved.reservation_id, {"tokens": 7}, int(time.time() * 1000))
            assert await raw_replica.hget(counter, "held") == "0"
            assert await raw_replica.hget(counter, "used") == str(7 * (n + 1))
    finally:
        await store.close()


async def test_fewer_replicas_than_asked_delay_by_the_wait_and_are_counted(
    primary_and_replica: tuple[EmbeddedRedis, EmbeddedRedis],
) -> None:
    primary, _ = primary_and_replica
    store = RedisCounterStore.from_url(primary.url, timeout_seconds=2.0, wait_replicas=2, wait_ms=200)
    before = REPLICA_WAIT_SHORT._value.get()
    try:
        started = time.monotonic()
        reserved = await store.reserve(command("short", 1))
        assert reserved.reservation_id  # the write stands on the primary
        assert time.monotonic() - started >= 0.2
        assert REPLICA_WAIT_SHORT._value.get() == before + 1
    finally:
        await store.close()


async def test_wait_is_refused_on_a_cluster(redis_cluster_url: str) -> None:
    with pytest.raises(ValueError, match="Cluster"):
        RedisCounterStore.from_url(redis_cluster_url, wait_replicas=1)
    await asyncio.sleep(0)
