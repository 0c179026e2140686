"""Failures from inside the Redis client library stop at the one store boundary.

During a cluster failover redis-py's cluster client (8.1.0) raised ``AttributeError`` from
inside its own code; CheckAndReserve and Commit answered INTERNAL (not retried) and the
background withdraw died, leaving the hold until its TTL. Such a library bug cannot be
triggered on demand, so the fault is a real redis-py connection class whose reply reading
raises it *after* the reply was read (the command ran on the real Redis: its outcome is
unknown to the caller, as in a failover). No mock framework: real Redis, real cluster, real
connections, a real gRPC server in-process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest
import redis.asyncio
from prometheus_client import REGISTRY
from redis.asyncio.cluster import RedisCluster
from support.charges import NOW_MS, charge, command, counter
from support.redis_cluster import LocalRedisCluster
from support.requests import ask

from quota.v1 import quota_pb2, quota_pb2_grpc
from quota_service.background import surviving
from quota_service.errors import StoreUnavailable
from quota_service.policy.domain import Decision, Reason
from quota_service.policy.stops import EmergencyStop, StopScope
from quota_service.quotas import Quotas
from quota_service.reload import LivePolicy
from quota_service.server.app import create_server
from quota_service.stops import StopWatcher
from quota_service.store.admin_store import RedisAdminStore
from quota_service.store.redis_store import RedisCounterStore

pytestmark = [pytest.mark.redis, pytest.mark.fault]

ALPHA = Path(__file__).resolve().parents[3] / "policies" / "alpha.yaml"
#: What redis-py's cluster client raised during a failover, and its kin.
FAULTS = [
    AttributeError("'NoneType' object has no attribute 'host'"),
    TypeError("'NoneType' object is not subscriptable"),
    IndexError("list index out of range"),
    KeyError("slot"),
    RuntimeError("anything at all"),
]


class FailingConnection(redis.asyncio.Connection):
    """A real redis-py connection that fails the way a library bug does, consistently:
    while :attr:`failing` holds an exception, every reply is read and then that exception is
    raised (the command ran); while :attr:`failing_on_send` holds one, it is raised before
    anything is sent (the command never ran)."""

    failing: ClassVar[Exception | None] = None
    failing_on_send: ClassVar[Exception | None] = None

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        reply = await super().read_response(*args, **kwargs)
        fault = FailingConnection.failing
        if fault is not None:
            raise fault
        return reply

    async def send_packed_command(self, *args: Any, **kwargs: Any) -> None:
        fault = FailingConnection.failing_on_send
        if fault is not None:
            raise fault
        await super().send_packed_command(*args, **kwargs)


@pytest.fixture(autouse=True)
def healthy_afterwards() -> Iterator[None]:
    yield
    FailingConnection.failing = FailingConnection.failing_on_send = None


def faults_counted(error: str) -> float:
    """quota_store_client_faults_total for the exception class ``error``, over every operation."""
    return sum(
        sample.value
        for metric in REGISTRY.collect()
        if metric.name == "quota_store_client_faults"
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels.get("error") == error
    )


def standalone_store(url: str) -> RedisCounterStore:
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, connection_class=FailingConnection, decode_responses=True, max_connections=32, timeout=2.0
    )
    return RedisCounterStore(client=redis.asyncio.Redis.from_pool(pool), timeout_seconds=2.0)


def cluster_store(cluster: LocalRedisCluster) -> RedisCounterStore:
    client = RedisCluster(host="127.0.0.1", port=cluster.ports[0], decode_responses=True)
    # The async cluster client fixes its connection class; every node it creates (also after
    # a topology refresh) takes it from these kwargs.
    client.nodes_manager.connection_kwargs["connection_class"] = FailingConnection
    for node in client.nodes_manager.startup_nodes.values():
        node.connection_class = FailingConnection
    return RedisCounterStore(client=client, timeout_seconds=2.0)


@pytest.fixture(params=["redis", "cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[RedisCounterStore]:
    if request.param == "redis":
        counters = standalone_store(request.getfixturevalue("redis_url"))
    else:
        counters = cluster_store(request.getfixturevalue("redis_cluster"))
        request.getfixturevalue("redis_cluster_url")  # flushed
    try:
        yield counters
    finally:
        FailingConnection.failing = None
        await counters.close()


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: type(f).__name__)
async def test_every_store_call_answers_unavailable_then_works_again(
    store: RedisCounterStore, fault: Exception
) -> None:
    tokens = counter()
    held = await store.reserve(command(charge(tokens, 10, cap=1000), request_id="before"))
    before = faults_counted(type(fault).__name__)
    FailingConnection.failing = fault
    calls = {
        "reserve": lambda: store.reserve(command(charge(tokens, 1, cap=1000), request_id="during")),
        "commit": lambda: store.commit(held.reservation_id, {"tokens": 5}, NOW_MS),
        "release": lambda: store.release(held.reservation_id, NOW_MS),
        "usage": lambda: store.usage((tokens,), NOW_MS),
        "get_reservation": lambda: store.get_reservation(held.reservation_id),
        "subject_config": lambda: store.subject_config("alice", NOW_MS),
        "ping": store.ping,
    }
    for name, call in calls.items():
        with pytest.raises(StoreUnavailable, match=rf"inside the client library: {type(fault).__name__}"):
            await call()
        print(f"{name}: StoreUnavailable")
    assert faults_counted(type(fault).__name__) == before + len(calls)
    FailingConnection.failing = None
    # Each failed call may have run on Redis (its reply was read, then the library raised):
    # its outcome is unknown to the caller, and a retry counts once.
    now = (await store.usage((tokens,), NOW_MS))[tokens]
    retried = await store.reserve(command(charge(tokens, 1, cap=1000), request_id="during"))
    fresh = await store.reserve(command(charge(tokens, 20, cap=1000), request_id="after"))
    await store.commit(fresh.reservation_id, {"tokens": 20}, NOW_MS)
    after = (await store.usage((tokens,), NOW_MS))[tokens]
    held_by_retry = 0 if retried.replayed else 1
    assert (after.used, after.held) == (now.used + 20, now.held + held_by_retry)


async def test_check_and_reserve_and_commit_answer_unavailable_over_grpc(redis_url: str) -> None:
    counters = standalone_store(redis_url)
    quotas = Quotas(policy=LivePolicy(ALPHA), store=counters)
    server, port, _health = await create_server(quotas=quotas)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = quota_pb2_grpc.QuotaServiceStub(channel)
            request = quota_pb2.CheckAndReserveRequest(
                subject="alice",
                feature="blog_writer",
                provider="openai",
                model="gpt-4o-mini",
                usage={"tokens": 10},
                request_id="r-1",
            )
            granted = await stub.CheckAndReserve(request, timeout=5)
            assert granted.decision == quota_pb2.ALLOW
            FailingConnection.failing = AttributeError("'NoneType' object has no attribute 'host'")
            during = await stub.CheckAndReserve(
                quota_pb2.CheckAndReserveRequest(**{**_fields(request), "request_id": "r-2"}), timeout=5
            )
            assert during.decision == quota_pb2.DENY and during.reason == quota_pb2.STORE_UNAVAILABLE
            with pytest.raises(grpc.aio.AioRpcError) as commit_error:
                await stub.Commit(
                    quota_pb2.CommitRequest(reservation_id=granted.reservation_id, usage={"tokens": 8}), timeout=5
                )
            assert commit_error.value.code() == grpc.StatusCode.UNAVAILABLE  # retried by clients, not INTERNAL
            with pytest.raises(grpc.aio.AioRpcError) as usage_error:
                await stub.GetUsage(quota_pb2.GetUsageRequest(subject="alice"), timeout=5)
            assert usage_error.value.code() == grpc.StatusCode.UNAVAILABLE
            FailingConnection.failing = None
            retried = await stub.Commit(
                quota_pb2.CommitRequest(reservation_id=granted.reservation_id, usage={"tokens": 8}), timeout=5
            )
            assert retried is not None
    finally:
        await server.stop(None)
        await quotas.drain(5.0)
        await counters.close()


def _fields(request: quota_pb2.CheckAndReserveRequest) -> dict[str, Any]:
    return {
        "subject": request.subject,
        "feature": request.feature,
        "provider": request.provider,
        "model": request.model,
        "usage": dict(request.usage),
    }


async def test_the_withdraw_after_a_fault_survives_it_and_frees_the_hold(redis_url: str) -> None:
    """The reserve ran on Redis, then the library raised: DENY STORE_UNAVAILABLE, and the hold
    it left is withdrawn in the background once the fault is gone (not left to its TTL)."""
    counters = standalone_store(redis_url)
    quotas = Quotas(policy=LivePolicy(ALPHA), store=counters)
    raw = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    day = time.strftime("%Y-%m-%d", time.gmtime())
    key = f"q:{{bob}}:tokens:day:{day}"
    try:
        warm = await quotas.check_and_reserve(ask("carol", tokens=1, request_id="w-0"))  # scripts loaded
        assert warm.outcome.decision is Decision.ALLOW
        FailingConnection.failing = IndexError("list index out of range")
        answer = await quotas.check_and_reserve(ask("bob", tokens=100, request_id="w-1"))
        assert answer.outcome.decision is Decision.DENY and answer.outcome.reason is Reason.STORE_UNAVAILABLE
        # Every withdraw try now fails before anything is sent: the task must live through it.
        FailingConnection.failing, FailingConnection.failing_on_send = None, TypeError("'NoneType' object")
        assert await raw.hget(key, "held") == "100"  # the reserve did run
        await asyncio.sleep(1.0)  # several tries fail meanwhile
        assert await raw.hget(key, "held") == "100"
        assert quotas._withdraws and all(not task.done() for task in quotas._withdraws)
        FailingConnection.failing_on_send = None
        started = time.monotonic()
        while await raw.hget(key, "held") != "0":
            assert time.monotonic() - started < 15, "the hold was not withdrawn"
            await asyncio.sleep(0.05)
        print(f"hold withdrawn {time.monotonic() - started:.2f} s after the fault cleared")
        assert await raw.hget(key, "used") in ("0", None)
    finally:
        FailingConnection.failing = FailingConnection.failing_on_send = None
        await quotas.drain(10.0)
        await raw.aclose()
        await counters.close()


async def test_the_stop_watcher_loops_survive_a_fault_and_see_new_stops(redis_url: str) -> None:
    counters = standalone_store(redis_url)
    admin_store = RedisAdminStore(counters=counters)
    watcher = StopWatcher(store=admin_store, poll_interval=0.1, resubscribe_delay=0.1)
    assert await watcher.start()
    writer = RedisCounterStore.from_url(redis_url, timeout_seconds=2.0)
    try:
        FailingConnection.failing = AttributeError("'NoneType' object has no attribute 'read_response'")
        await asyncio.sleep(0.6)  # several polls and resubscriptions fail meanwhile
        assert all(not task.done() for task in watcher._tasks)
        FailingConnection.failing = None
        await RedisAdminStore(counters=writer).put_stop(
            EmergencyStop(scope=StopScope.GLOBAL, target="", reason="fault test", created_at=int(time.time()))
        )
        started = time.monotonic()
        while not any(stop.scope is StopScope.GLOBAL for stop in watcher.active()):
            assert time.monotonic() - started < 2, "the stop was never seen after the fault"
            await asyncio.sleep(0.02)
    finally:
        FailingConnection.failing = None
        await watcher.close()
        await writer.close()
        await counters.close()


def test_a_background_pass_that_raises_is_counted_and_swallowed() -> None:
    def errors() -> float:
        return REGISTRY.get_sample_value("quota_background_errors_total", {"task": "unit pass"}) or 0.0

    before = errors()
    for _ in range(3):
        with surviving("unit pass"):
            raise ValueError("a bug")
    assert errors() == before + 3
    with pytest.raises(asyncio.CancelledError), surviving("unit pass"):
        raise asyncio.CancelledError  # shutdown is never swallowed
    assert errors() == before + 3
