"""Redis going away: every call fails fast with StoreUnavailable, and works again after a restart.

These use their own persistent redis-server (append-only file in tmp_path), so counters
must survive the restart. The bounds are correctness bounds (no hang past the deadline),
not benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from support.charges import NOW_MS, charge, command, counter

from quota_service.errors import StoreUnavailable
from quota_service.policy.domain import CounterValue
from quota_service.store.base import ReserveStatus
from quota_service.store.embedded import EmbeddedRedis
from quota_service.store.redis_store import RedisCounterStore

pytestmark = pytest.mark.redis

TIMEOUT_SECONDS = 0.25  # the production default
BOUND_SECONDS = 1.5  # timeout plus a generous margin for a loaded CI machine


@pytest.fixture
async def outage_store(own_redis: EmbeddedRedis) -> AsyncIterator[RedisCounterStore]:
    store = RedisCounterStore.from_url(own_redis.url, timeout_seconds=TIMEOUT_SECONDS)
    try:
        yield store
    finally:
        with contextlib.suppress(StoreUnavailable):
            await store.close()


async def fails_fast(call: Callable[[], Awaitable[Any]]) -> float:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await call()
    elapsed = time.monotonic() - started
    assert elapsed < BOUND_SECONDS, f"took {elapsed:.3f}s"
    return elapsed


def every_call(store: RedisCounterStore, rid: str) -> list[Callable[[], Awaitable[Any]]]:
    tokens = counter()
    return [
        lambda: store.reserve(command(charge(tokens, 1, cap=1000), request_id="during-outage")),
        lambda: store.commit(rid, {"tokens": 1}, NOW_MS),
        lambda: store.release(rid, NOW_MS),
        lambda: store.usage((tokens,), NOW_MS),
        lambda: store.get_reservation(rid),
        lambda: store.subject_config("alice", NOW_MS),
        lambda: store.set_tier("alice", "pro_alpha"),
        store.ping,
    ]


async def test_a_stopped_redis_fails_fast_and_a_restarted_one_has_the_counters(
    own_redis: EmbeddedRedis, outage_store: RedisCounterStore
) -> None:
    tokens = counter()
    committed = await outage_store.reserve(command(charge(tokens, 30, cap=1000)))
    await outage_store.commit(committed.reservation_id, {"tokens": 25}, NOW_MS)
    open_one = await outage_store.reserve(command(charge(tokens, 10, cap=1000)))
    assert await outage_store.usage((tokens,), NOW_MS) == {tokens: CounterValue(25, 10)}

    own_redis.stop()
    elapsed = [await fails_fast(call) for call in every_call(outage_store, open_one.reservation_id)]
    print(f"\nstopped redis: slowest failure {max(elapsed):.3f}s")

    own_redis.restart()
    assert await outage_store.usage((tokens,), NOW_MS) == {tokens: CounterValue(25, 10)}
    settled = await outage_store.commit(open_one.reservation_id, {"tokens": 5}, NOW_MS)
    assert settled.values == {tokens: CounterValue(30, 0)}
    again = await outage_store.reserve(command(charge(tokens, 1, cap=1000)))
    assert again.status is ReserveStatus.RESERVED


async def test_a_hung_redis_times_out_at_the_deadline(
    own_redis: EmbeddedRedis, outage_store: RedisCounterStore
) -> None:
    tokens = counter()
    rid = (await outage_store.reserve(command(charge(tokens, 10, cap=1000)))).reservation_id
    assert own_redis.pid is not None
    os.kill(own_redis.pid, signal.SIGSTOP)  # the kernel still accepts; nobody answers
    try:
        elapsed = [await fails_fast(call) for call in every_call(outage_store, rid)]
    finally:
        os.kill(own_redis.pid, signal.SIGCONT)
    assert min(elapsed) >= TIMEOUT_SECONDS * 0.9  # it did wait for the deadline, no longer
    print(f"\nhung redis: failures took {min(elapsed):.3f}..{max(elapsed):.3f}s")

    # A write that timed out may still be applied when Redis wakes up: its outcome is unknown.
    # Retrying with the same request_id is safe: it counts once either way.
    retried = await outage_store.reserve(command(charge(tokens, 1, cap=1000), request_id="during-outage"))
    assert retried.status is ReserveStatus.RESERVED
    value = (await outage_store.usage((tokens,), NOW_MS))[tokens]
    reservation = await outage_store.get_reservation(rid)
    assert reservation is not None
    if reservation.state.value == "open":  # the commit and release sent during the hang were lost
        assert value == CounterValue(0, 11)
    else:  # one of them reached Redis
        assert value in (CounterValue(1, 1), CounterValue(0, 1))


def _until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Waits (polling) until ``condition()`` holds; fails after ``seconds``."""
    give_up = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < give_up, "condition not met in time"
        time.sleep(0.01)


async def test_redis_busy_running_a_script_is_an_outage(
    own_redis: EmbeddedRedis, outage_store: RedisCounterStore
) -> None:
    """BUSY (another client's script runs past lua-time-limit) is transient: StoreUnavailable."""
    tokens = counter()
    await outage_store.usage((tokens,), NOW_MS)  # connected, scripts loaded
    busy_loop = (
        "local function now() local t = redis.call('TIME') return t[1] * 1000000 + t[2] end "
        "local start = now() while now() - start < 1500000 do end return 1"
    )
    with redis.Redis.from_url(own_redis.url) as admin:
        admin.config_set("lua-time-limit", 50)
    runner = threading.Thread(target=lambda: redis.Redis.from_url(own_redis.url).eval(busy_loop, 0))
    runner.start()
    try:

        def answers_busy() -> bool:
            with redis.Redis.from_url(own_redis.url, socket_timeout=1) as probe:
                try:
                    probe.ping()
                except redis.ResponseError as exc:
                    return str(exc).startswith("BUSY")
                return False

        await asyncio.to_thread(_until, answers_busy)
        with pytest.raises(StoreUnavailable, match="BUSY"):
            await outage_store.usage((tokens,), NOW_MS)
    finally:
        await asyncio.to_thread(runner.join)
        with redis.Redis.from_url(own_redis.url) as admin:
            admin.config_set("lua-time-limit", 5000)
    assert (await outage_store.usage((tokens,), NOW_MS))[tokens] == CounterValue(0, 0)


async def test_a_read_only_replica_after_a_failover_is_an_outage(own_redis: EmbeddedRedis, tmp_path: Path) -> None:
    """A store pointed at a replica (as after a failover, before clients follow) gets
    READONLY on its first write: transient, StoreUnavailable, not damaged data."""
    replica = EmbeddedRedis(
        data_dir=tmp_path / "replica",
        persistence=False,
        extra_args=("--replicaof", "127.0.0.1", str(own_redis.port)),
    )
    replica.start()
    store = RedisCounterStore.from_url(replica.url, timeout_seconds=TIMEOUT_SECONDS)
    try:

        def linked() -> bool:
            with redis.Redis.from_url(replica.url, decode_responses=True) as probe:
                return probe.info("replication").get("master_link_status") == "up"

        await asyncio.to_thread(_until, linked)
        with pytest.raises(StoreUnavailable, match=r"ReadOnlyError|READONLY"):
            await store.reserve(command(charge(counter(), 1, cap=1000)))
    finally:
        await store.close()
        replica.stop()
