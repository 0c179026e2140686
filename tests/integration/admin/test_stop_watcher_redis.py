"""StopWatcher over real Redis: the subscription, the polling backstop, fail-closed start-up,
a Redis restart, and a real cluster. Every wait is bounded and measured."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path

import pytest
import redis.asyncio
from admin_plane import ACTOR, ALPHA
from prometheus_client import REGISTRY

from quota_service.admin import Admin
from quota_service.policy.domain import Decision, Reason
from quota_service.policy.stops import EmergencyStop, StopScope
from quota_service.policy.validation import build_request
from quota_service.quotas import Quotas
from quota_service.reload import LivePolicy
from quota_service.stops import NOT_LOADED, StopWatcher
from quota_service.store.admin_store import STOPS_KEY, RedisAdminStore
from quota_service.store.embedded import EmbeddedRedis, free_port
from quota_service.store.redis_store import RedisCounterStore

pytestmark = pytest.mark.redis


class Replica:
    """One replica's view: its own connections, stop watcher and admin core."""

    def __init__(self, url: str, *, poll_interval: float, timeout: float = 1.0) -> None:
        self.counters = RedisCounterStore.from_url(url, timeout_seconds=timeout)
        self.store = RedisAdminStore(counters=self.counters)
        self.watcher = StopWatcher(store=self.store, poll_interval=poll_interval, resubscribe_delay=0.1)
        self.quotas = Quotas(policy=LivePolicy(ALPHA), store=self.counters, stops=self.watcher)
        self.admin = Admin(quotas=self.quotas, store=self.store, stops=self.watcher)

    async def close(self) -> None:
        await self.watcher.close()
        await self.counters.close()


@pytest.fixture
async def replicas(redis_url: str) -> AsyncIterator[Callable[..., Replica]]:
    made: list[Replica] = []

    def make(url: str = redis_url, *, poll_interval: float = 0.5, timeout: float = 1.0) -> Replica:
        replica = Replica(url, poll_interval=poll_interval, timeout=timeout)
        made.append(replica)
        return replica

    try:
        yield make
    finally:
        for replica in made:
            await replica.close()


async def wait_until(predicate: Callable[[], bool], seconds: float) -> float:
    """Seconds until ``predicate()`` held; fails the test after ``seconds``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > seconds:
            pytest.fail(f"not within {seconds} s")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


def has(watcher: StopWatcher, scope: StopScope, target: str = "") -> bool:
    return any(s.scope is scope and s.target == target for s in watcher.active())


async def test_the_subscription_alone_carries_a_stop_to_another_replica_fast(
    replicas: Callable[..., Replica],
) -> None:
    writer = replicas()
    reader = replicas(poll_interval=3600)  # no polling: only the channel can tell it
    assert await reader.watcher.start() and reader.watcher.active() == ()
    # Subscribed: the subscription re-reads the stops once it is in place (no polling here).
    await wait_until(lambda: reader.watcher.refreshes >= 2, 2.0)

    started = time.monotonic()  # measured from the admin call, which also writes the audit log
    await writer.admin.emergency_stop(StopScope.PROVIDER, "openai", actor=ACTOR, reason="incident")
    await wait_until(lambda: has(reader.watcher, StopScope.PROVIDER, "openai"), 1.0)
    pulled = time.monotonic() - started
    assert REGISTRY.get_sample_value("quota_emergency_stops_active") == 1
    started = time.monotonic()
    await writer.admin.resume_stop(StopScope.PROVIDER, "openai", actor=ACTOR)
    await wait_until(lambda: reader.watcher.active() == (), 1.0)
    lifted = time.monotonic() - started
    print(f"stop propagation via pub/sub: pulled {pulled * 1000:.1f} ms, lifted {lifted * 1000:.1f} ms")
    assert pulled < 0.5 and lifted < 0.5
    assert REGISTRY.get_sample_value("quota_emergency_stops_active") == 0


class Deaf(RedisAdminStore):
    """A store whose subscription never hears anything: only polling can see changes."""

    async def stop_changes(self) -> AsyncGenerator[None, None]:
        await asyncio.Event().wait()
        yield None


async def test_polling_backs_up_a_silent_channel(redis_url: str, replicas: Callable[..., Replica]) -> None:
    replica = replicas()
    watcher = StopWatcher(store=Deaf(counters=replica.counters), poll_interval=0.2)
    await watcher.start()
    try:
        raw = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        # Written behind the service's back: no message at all.
        await raw.hset(STOPS_KEY, "GLOBAL", '{"scope": "GLOBAL", "target": "", "reason": "by hand"}')
        await raw.aclose()
        seen = await wait_until(lambda: has(watcher, StopScope.GLOBAL), 1.0)
        assert seen < 0.5
        assert watcher.active()[0].reason == "by hand"
    finally:
        await watcher.close()


async def test_a_replica_that_cannot_read_the_stops_fails_closed_until_it_can(
    tmp_path: Path, replicas: Callable[..., Replica]
) -> None:
    down = EmbeddedRedis(port=free_port(), data_dir=tmp_path / "redis", persistence=True)
    replica = replicas(down.url, poll_interval=0.2, timeout=0.25)
    assert await replica.watcher.start(attempts=1) is False
    assert replica.watcher.active() == (NOT_LOADED,) and not replica.watcher.loaded
    request = build_request(
        subject="u1", feature="blog_writer", provider="openai", model="gpt-4o-mini", usage={"tokens": 1}
    )
    answer = await replica.quotas.check_and_reserve(request)
    assert (answer.outcome.decision, answer.outcome.reason) == (Decision.DENY, Reason.EMERGENCY_STOP)
    try:
        down.start()
        loaded = await wait_until(lambda: replica.watcher.loaded, 3.0)
        assert replica.watcher.active() == ()
        print(f"stops loaded {loaded:.2f} s after Redis came up")
        answer = await replica.quotas.check_and_reserve(request)
        assert answer.outcome.decision is Decision.ALLOW
    finally:
        down.stop()


async def test_stops_survive_a_redis_restart_and_the_subscription_comes_back(
    tmp_path: Path, replicas: Callable[..., Replica]
) -> None:
    with EmbeddedRedis(data_dir=tmp_path / "redis", persistence=True) as server:
        writer = replicas(server.url)
        reader = replicas(server.url, poll_interval=3600)  # the channel only
        await reader.watcher.start()
        await writer.admin.emergency_stop(StopScope.FEATURE, "seo_analysis", actor=ACTOR)
        await wait_until(lambda: has(reader.watcher, StopScope.FEATURE, "seo_analysis"), 1.0)

        server.restart()  # the append-only file keeps the stop
        await wait_until(lambda: reader.watcher.refreshes > 2, 5.0)  # resubscribed, re-read
        assert has(reader.watcher, StopScope.FEATURE, "seo_analysis")
        deadline = time.monotonic() + 5
        while True:  # the writer's pooled connection may need a retry after the restart
            try:
                await writer.admin.emergency_stop(StopScope.GLOBAL, "", actor=ACTOR)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        await wait_until(lambda: has(reader.watcher, StopScope.GLOBAL), 1.0)


@pytest.mark.cluster
async def test_a_stop_reaches_a_replica_subscribed_through_another_cluster_node(
    redis_cluster_url: str, replicas: Callable[..., Replica]
) -> None:
    writer = replicas(redis_cluster_url)
    reader = replicas(redis_cluster_url, poll_interval=3600)
    await reader.watcher.start()
    await wait_until(lambda: reader.watcher.refreshes >= 2, 2.0)  # subscribed (no polling here)
    await writer.admin.emergency_stop(StopScope.TIER, "free_alpha", actor=ACTOR, reason="cluster")
    took = await wait_until(lambda: has(reader.watcher, StopScope.TIER, "free_alpha"), 1.0)
    assert took < 0.5
    assert [s.reason for s in await reader.admin.list_stops()] == ["cluster"]


async def test_stops_still_deny_while_the_store_is_down(tmp_path: Path, replicas: Callable[..., Replica]) -> None:
    with EmbeddedRedis(data_dir=tmp_path / "redis", persistence=False) as server:
        replica = replicas(server.url, poll_interval=0.2, timeout=0.25)
        await replica.watcher.start()
        await replica.admin.set_tier("pro-user", "pro_alpha", actor=ACTOR)
        await replica.admin.set_tier("pro-other", "pro_alpha", actor=ACTOR)
        request = build_request(
            subject="pro-user", feature="anything", provider="openai", model="gpt-4o-mini", usage={"tokens": 1}
        )
        other = build_request(
            subject="pro-other", feature="anything", provider="openai", model="gpt-4o-mini", usage={"tokens": 1}
        )
        for each in (request, other):  # this replica learns both subjects' tier
            assert (await replica.quotas.check_and_reserve(each)).outcome.decision is Decision.ALLOW
        await replica.admin.emergency_stop(StopScope.SUBJECT, "pro-user", actor=ACTOR)
        server.stop()
        stopped = await replica.quotas.check_and_reserve(request)
        assert (stopped.outcome.decision, stopped.outcome.reason) == (Decision.DENY, Reason.EMERGENCY_STOP)
        allowed = await replica.quotas.check_and_reserve(other)  # on_store_error: allow (pro_alpha)
        assert (allowed.outcome.decision, allowed.outcome.reason) == (Decision.ALLOW, Reason.STORE_UNAVAILABLE)
        assert replica.watcher.active() == (
            EmergencyStop(StopScope.SUBJECT, "pro-user", "", replica.watcher.active()[0].created_at, ACTOR),
        )
