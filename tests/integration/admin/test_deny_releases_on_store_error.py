"""A DENY answered because the store failed after the subject's step reserved gives the
reservation back (Quotas withdraws it in the background), so the denied caller is never
charged the estimate at expiry. The global step is made to fail for real: damaged data in
the global slot on one Redis (a wrong-typed key: DENY STORE_ERROR, whatever the tier's
on_store_error says), and the global slot's master stopped on a real cluster (an outage:
DENY STORE_UNAVAILABLE by on_store_error)."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis
import redis.asyncio
from admin_plane import ALPHA
from redis.asyncio.connection import AbstractConnection
from support.redis_cluster import LocalRedisCluster

from quota_service.policy.domain import GLOBAL_SCOPE, Decision, Reason
from quota_service.policy.validation import build_request
from quota_service.quotas import Backoff, Quotas
from quota_service.reload import LivePolicy
from quota_service.store import keys
from quota_service.store.redis_store import RedisCounterStore

pytestmark = pytest.mark.redis

DAY = time.strftime("%Y-%m-%d", time.gmtime())


def tokens(who: str, amount: int = 100) -> object:
    # Priced: the plan has company-wide (cost_usd per day) charges, so there is a global step.
    return build_request(
        subject=who, feature="blog_writer", provider="openai", model="gpt-4o-mini", usage={"tokens": amount}
    )


@pytest.fixture
async def quotas(redis_url: str) -> AsyncIterator[Quotas]:
    store = RedisCounterStore.from_url(redis_url, timeout_seconds=2.0)
    try:
        yield Quotas(policy=LivePolicy(ALPHA), store=store)
    finally:
        await store.close()


async def test_a_failed_global_step_denies_and_gives_the_subject_part_back(quotas: Quotas, redis_url: str) -> None:
    raw = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        ok = await quotas.check_and_reserve(tokens("warm"))  # the global slot works ...
        assert ok.outcome.decision is Decision.ALLOW
        await raw.set(keys.open_set_key(GLOBAL_SCOPE), "not a zset")  # ... and now every global step fails

        answer = await quotas.check_and_reserve(tokens("victim"))
        assert (answer.outcome.decision, answer.outcome.reason) == (Decision.DENY, Reason.STORE_ERROR)
        assert not answer.reservation_id
        await quotas.drain(5.0)
        counter = await raw.hgetall(f"q:{{victim}}:tokens:day:{DAY}")
        assert counter.get("held") == "0" and counter.get("used", "0") == "0", counter
        assert await raw.keys("r:{victim}:*") == []  # withdrawn: the record is gone with its hold
    finally:
        await raw.aclose()


async def test_damaged_data_denies_even_an_allow_tier_and_gives_the_hold_back(quotas: Quotas, redis_url: str) -> None:
    """pro_alpha says on_store_error: allow; damaged data is no outage, so it never applies."""
    raw = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        await quotas.store.set_tier("payer", "pro_alpha")  # type: ignore[attr-defined]
        await quotas.subject_config("payer", fresh=True)
        await raw.set(keys.open_set_key(GLOBAL_SCOPE), "not a zset")
        answer = await quotas.check_and_reserve(tokens("payer"))
        assert (answer.outcome.decision, answer.outcome.reason) == (Decision.DENY, Reason.STORE_ERROR)
        await quotas.drain(5.0)
        assert await raw.hget(f"q:{{payer}}:tokens:day:{DAY}", "held") == "0"
    finally:
        await raw.aclose()


@pytest.mark.cluster
async def test_on_a_cluster_with_the_global_master_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Quick retries: the client's first call after losing a master may still fail while it
    # rediscovers the cluster; the global part (which holds nothing) keeps failing while its
    # master is down, and the test waits for the retries to end rather than cancel them.
    monkeypatch.setattr("quota_service.quotas.WITHDRAW_BACKOFF", Backoff(base=0.2, cap=0.2, attempts=5))
    cluster = LocalRedisCluster(tmp_path / "cluster").start()
    try:
        await _deny_with_the_global_master_down(cluster)
    finally:
        cluster.stop()
        await _close_abandoned_connections()


async def _close_abandoned_connections() -> None:
    """redis-py's cluster client, rediscovering a cluster that lost a master, drops node
    objects whose in-flight connections its ``aclose()`` then never reaches; close them
    here, so the test leaves no socket behind (the suite turns ResourceWarning into errors)."""
    for obj in gc.get_objects():
        if isinstance(obj, AbstractConnection) and obj.is_connected:
            await obj.disconnect()


async def _deny_with_the_global_master_down(cluster: LocalRedisCluster) -> None:
    store = RedisCounterStore.from_url(cluster.url, timeout_seconds=2.0)
    quotas = Quotas(policy=LivePolicy(ALPHA), store=store)
    try:
        ok = await quotas.check_and_reserve(tokens("warm"))
        assert ok.outcome.decision is Decision.ALLOW
        owner = _owner_port(cluster, keys.open_set_key(GLOBAL_SCOPE))
        victim = next(s for s in (f"victim-{i}" for i in range(1000)) if _owner_port(cluster, f"c:{{{s}}}") != owner)
        subject_port = _owner_port(cluster, f"c:{{{victim}}}")
        await quotas.subject_config(victim)  # known before the failure
        next(n for n in cluster.nodes if n.port == owner).stop()

        answer = await quotas.check_and_reserve(tokens(victim))
        assert (answer.outcome.decision, answer.outcome.reason) == (Decision.DENY, Reason.STORE_UNAVAILABLE)
        # The subject's part is withdrawn within a retry or two (the retries that follow are for
        # the global part, which holds nothing); checked well within the cluster's node timeout.
        with redis.Redis(port=subject_port, decode_responses=True) as raw:
            deadline = time.monotonic() + 3
            while raw.hget(f"q:{{{victim}}}:tokens:day:{DAY}", "held") != "0":
                assert time.monotonic() < deadline, raw.hgetall(f"q:{{{victim}}}:tokens:day:{DAY}")
                await asyncio.sleep(0.05)
            assert raw.keys(f"r:{{{victim}}}:*") == []
        await quotas.drain(5.0)
    finally:
        await store.close()


def _owner_port(cluster: LocalRedisCluster, key: str) -> int:
    with redis.Redis(port=cluster.ports[0], decode_responses=True) as client:
        slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))  # type: ignore[no-untyped-call]
        for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):  # type: ignore[no-untyped-call]
            if int(start) <= slot <= int(end):
                return int(master[1])
    raise AssertionError(f"no node serves {key}")


async def test_the_same_request_id_after_the_withdraw_is_decided_afresh(quotas: Quotas, redis_url: str) -> None:
    """The caller was told DENY; the withdraw forgets its request_id with the hold, so a repeat
    (the store healthy again) gets a real reservation that counts once, never a replay of a
    reservation that was given back (whose commit would land nowhere)."""
    raw = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    request = build_request(
        subject="retrier",
        feature="blog_writer",
        provider="openai",
        model="gpt-4o-mini",
        usage={"tokens": 100},
        request_id="req-after-outage",
    )
    try:
        await quotas.check_and_reserve(tokens("warm"))
        await raw.set(keys.open_set_key(GLOBAL_SCOPE), "not a zset")
        denied = await quotas.check_and_reserve(request)
        assert denied.outcome.reason is Reason.STORE_ERROR
        await quotas.drain(5.0)
        await raw.delete(keys.open_set_key(GLOBAL_SCOPE))  # the store is healthy again

        again = await quotas.check_and_reserve(request)
        assert again.outcome.decision is Decision.ALLOW and again.reservation_id and not again.replayed
        await quotas.commit(again.reservation_id, {"tokens": 60})
        counter = await raw.hgetall(f"q:{{retrier}}:tokens:day:{DAY}")
        assert (counter.get("used"), counter.get("held")) == ("60", "0")
    finally:
        await raw.aclose()
