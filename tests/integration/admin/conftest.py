"""Fixtures for the admin core over real Redis: a counter store, the admin store sharing its
connections, a quota path over the shipped policies and the admin core on top."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio
from admin_plane import ALPHA, Plane

from quota_service.admin import Admin
from quota_service.quotas import Quotas
from quota_service.reload import LivePolicy
from quota_service.store.admin_store import RedisAdminStore
from quota_service.store.redis_store import RedisCounterStore


@pytest.fixture
async def plane(redis_url: str) -> AsyncIterator[Plane]:
    counters = RedisCounterStore.from_url(redis_url, timeout_seconds=5.0)
    store = RedisAdminStore(counters=counters)
    quotas = Quotas(policy=LivePolicy(ALPHA), store=counters)
    raw = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield Plane(counters, store, quotas, Admin(quotas=quotas, store=store), raw)
    finally:
        await raw.aclose()
        await counters.close()
