"""A Redis that may evict keys is refused (serve's start check), read with CONFIG GET and,
where a managed Redis disables CONFIG, from INFO memory; unreadable is a warning."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from support.redis_cluster import LocalRedisCluster

from quota_service.store.embedded import EmbeddedRedis
from quota_service.store.redis_store import RedisCounterStore

pytestmark = pytest.mark.redis


@pytest.fixture
async def plain_store(redis_url: str) -> AsyncIterator[RedisCounterStore]:
    store = RedisCounterStore.from_url(redis_url, timeout_seconds=5.0)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def eviction_policy(redis_url: str) -> Iterator[redis.Redis]:
    """The session Redis, its maxmemory-policy restored afterwards."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        client.config_set("maxmemory-policy", "noeviction")
        client.close()


async def test_noeviction_passes(plain_store: RedisCounterStore) -> None:
    assert await plain_store.check_eviction_policy() is None


async def test_a_redis_that_evicts_is_refused(plain_store: RedisCounterStore, eviction_policy: redis.Redis) -> None:
    eviction_policy.config_set("maxmemory-policy", "allkeys-lru")
    problem = await plain_store.check_eviction_policy()
    assert problem is not None and problem.refuse
    assert "maxmemory-policy is 'allkeys-lru' on Redis" in problem.message
    assert "noeviction" in problem.message and "--allow-eviction" in problem.message


def managed_redis(tmp_path: Path, *args: str) -> EmbeddedRedis:
    """A Redis with commands renamed away, as managed services disable CONFIG."""
    return EmbeddedRedis(data_dir=tmp_path, persistence=False, extra_args=args).start()


@pytest.mark.parametrize(("policy", "refused"), [("noeviction", False), ("volatile-lru", True)])
async def test_without_config_the_policy_is_read_from_info(tmp_path: Path, policy: str, refused: bool) -> None:
    server = managed_redis(tmp_path, "--maxmemory-policy", policy, "--rename-command", "CONFIG", "")
    store = RedisCounterStore.from_url(server.url, timeout_seconds=5.0)
    try:
        problem = await store.check_eviction_policy()
        assert (problem is not None and problem.refuse) is refused
        if refused:
            assert problem is not None and "'volatile-lru'" in problem.message
    finally:
        await store.close()
        server.stop()


async def test_an_unreadable_policy_is_a_warning_not_a_refusal(tmp_path: Path) -> None:
    server = managed_redis(tmp_path, "--rename-command", "CONFIG", "", "--rename-command", "INFO", "")
    store = RedisCounterStore.from_url(server.url, timeout_seconds=5.0)
    try:
        problem = await store.check_eviction_policy()
        assert problem is not None and not problem.refuse
        assert problem.message.startswith("could not read maxmemory-policy of Redis (CONFIG GET: ")
        assert "make sure it is 'noeviction'" in problem.message
    finally:
        await store.close()
        server.stop()


@pytest.mark.cluster
async def test_every_cluster_master_is_checked(redis_cluster: LocalRedisCluster, redis_cluster_url: str) -> None:
    store = RedisCounterStore.from_url(redis_cluster_url, timeout_seconds=5.0)
    last = redis.Redis(port=redis_cluster.ports[-1], decode_responses=True)
    try:
        assert await store.check_eviction_policy() is None
        last.config_set("maxmemory-policy", "allkeys-random")
        problem = await store.check_eviction_policy()
        assert problem is not None and problem.refuse
        assert f"'allkeys-random' on 127.0.0.1:{redis_cluster.ports[-1]}" in problem.message
    finally:
        last.config_set("maxmemory-policy", "noeviction")
        last.close()
        await store.close()
