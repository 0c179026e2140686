"""Fixtures for the Redis store tests: a store and a raw client on the session's flushed Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from quota_service.store.redis_store import RedisCounterStore

#: Generous for correctness tests (hundreds of concurrent calls on one loop); the outage
#: tests use the production default of 0.25 s.
TEST_TIMEOUT_SECONDS = 5.0


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisCounterStore]:
    counter_store = RedisCounterStore.from_url(redis_url, timeout_seconds=TEST_TIMEOUT_SECONDS)
    try:
        yield counter_store
    finally:
        await counter_store.close()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client to look at keys behind the store's back."""
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()
