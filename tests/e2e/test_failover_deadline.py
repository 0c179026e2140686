"""Deadlines during a store failover: the server's per-request budget (``--request-budget``,
0.4 s by default) sits below the Python client's attempt timeout (0.5 s by default), so a
frozen Redis (SIGSTOP: connections open, nothing answers, as a master that died without a
reset) gets every caller an answer inside one attempt: CheckAndReserve its on_store_error
decision, Commit a retryable UNAVAILABLE; never a timed-out attempt. Run with the defaults
(no --store-timeout or --request-budget given), on one Redis and on a cluster whose master
owning the subject's slot is frozen (the other masters' subjects are unaffected)."""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
from support.redis_cluster import LocalRedisCluster
from support.server_process import ServerProcess

from quota.v1 import quota_pb2, quota_pb2_grpc
from quota_client import QuotaClient, QuotaUnavailable
from quota_client.options import ClientOptions
from quota_service.cli import _build_parser
from quota_service.quotas import DEFAULT_REQUEST_BUDGET_SECONDS, REPLY_MARGIN_SECONDS
from quota_service.store.embedded import EmbeddedRedis

pytestmark = [pytest.mark.e2e, pytest.mark.fault]

BUDGET = DEFAULT_REQUEST_BUDGET_SECONDS
#: Scheduling and the reply's trip on a shared 2-core machine.
SLACK_SECONDS = 0.08


def test_the_defaults_are_aligned() -> None:
    served = _build_parser().parse_args(["serve"])
    assert served.request_budget == BUDGET or "QUOTA_REQUEST_BUDGET" in os.environ
    assert ClientOptions().attempt_timeout > BUDGET + REPLY_MARGIN_SECONDS
    assert served.store_timeout <= BUDGET or "QUOTA_STORE_TIMEOUT" in os.environ


def request(who: str) -> quota_pb2.CheckAndReserveRequest:
    return quota_pb2.CheckAndReserveRequest(
        subject=who,
        feature="blog_writer",
        provider="openai",
        model="gpt-4o-mini",
        usage={"tokens": 10},
        request_id=uuid.uuid4().hex,
    )


def timed_reserve(stub: quota_pb2_grpc.QuotaServiceStub, who: str) -> tuple[quota_pb2.CheckAndReserveResponse, float]:
    started = time.monotonic()
    answer = stub.CheckAndReserve(request(who))  # no deadline of the caller's: the server's budget alone
    return answer, time.monotonic() - started


@pytest.fixture(params=["defaults", "store-timeout-1s"])
def one_redis(
    own_redis: EmbeddedRedis, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[ServerProcess, EmbeddedRedis]]:
    # A per-call store timeout above the budget, as one may set it to ride out a failover:
    # the budget, not the per-call timeout, bounds the answer.
    extra = ("--store-timeout", "1.0") if request.param == "store-timeout-1s" else ()
    server = ServerProcess(redis_url=own_redis.url, workdir=tmp_path, extra_args=extra)
    server.start()
    try:
        yield server, own_redis
    finally:
        if own_redis.pid:
            os.kill(own_redis.pid, signal.SIGCONT)
        server.stop()


def test_a_frozen_redis_is_answered_within_the_budget(
    one_redis: tuple[ServerProcess, EmbeddedRedis], caplog: pytest.LogCaptureFixture
) -> None:
    server, own_redis = one_redis
    assert "deadlines: 0.4 s per request at most" in server.log()
    assert "not below the Python client's default attempt timeout" not in server.log()
    with grpc.insecure_channel(server.target) as channel:
        stub = quota_pb2_grpc.QuotaServiceStub(channel)
        granted, _ = timed_reserve(stub, "alice")
        assert granted.decision == quota_pb2.ALLOW
        assert own_redis.pid
        os.kill(own_redis.pid, signal.SIGSTOP)
        try:
            latencies = []
            for _ in range(3):
                answer, took = timed_reserve(stub, "alice")
                assert (answer.decision, answer.reason) == (quota_pb2.DENY, quota_pb2.STORE_UNAVAILABLE)
                latencies.append(took)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as commit_error:
                stub.Commit(quota_pb2.CommitRequest(reservation_id=granted.reservation_id, usage={"tokens": 5}))
            commit_took = time.monotonic() - started
            assert commit_error.value.code() == grpc.StatusCode.UNAVAILABLE
            print(
                "\nfrozen redis, no caller deadline: CheckAndReserve "
                + ", ".join(f"{t * 1000:.0f}" for t in latencies)
                + f" ms; Commit UNAVAILABLE in {commit_took * 1000:.0f} ms (budget {BUDGET * 1000:.0f} ms)"
            )
            assert max(*latencies, commit_took) < BUDGET + SLACK_SECONDS

            # The real client with its defaults: answered inside its first attempt, no retry.
            caplog.set_level(logging.DEBUG, logger="quota_client")
            with QuotaClient(server.target) as client:
                started = time.monotonic()
                result = client.check_and_reserve(
                    "alice", "blog_writer", provider="openai", model="gpt-4o-mini", tokens=10
                )
                client_took = time.monotonic() - started
                assert result.decision.name == "DENY"
                assert client_took < ClientOptions().attempt_timeout
                assert not [r for r in caplog.records if "retrying" in r.getMessage()]
                # A Commit is retried on UNAVAILABLE, never on a timed-out attempt.
                with pytest.raises(QuotaUnavailable):
                    client.commit(granted.reservation_id, tokens=5)
                retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
                assert retries and all("UNAVAILABLE" in m and "DEADLINE_EXCEEDED" not in m for m in retries), retries
            print(f"client defaults: CheckAndReserve answered in {client_took * 1000:.0f} ms, one attempt")
        finally:
            os.kill(own_redis.pid, signal.SIGCONT)
        settled = stub.Commit(quota_pb2.CommitRequest(reservation_id=granted.reservation_id, usage={"tokens": 5}))
        assert settled is not None


def owner_of(cluster: LocalRedisCluster, key: str) -> EmbeddedRedis:
    with redis.RedisCluster(host="127.0.0.1", port=cluster.ports[0]) as client:
        node = client.get_node_from_key(key)
        port = node.port
    return next(n for n in cluster.nodes if n.port == port)


def test_a_frozen_cluster_master_is_answered_within_the_budget(
    redis_cluster: LocalRedisCluster, redis_cluster_url: str, tmp_path: Path
) -> None:
    frozen = owner_of(redis_cluster, "{__global__}")
    # A subject on a master other than the frozen one (the global slot's owner).
    subjects = [f"user-{i}" for i in range(64)]
    healthy = next(s for s in subjects if owner_of(redis_cluster, f"{{{s}}}").port != frozen.port)
    on_frozen = next(s for s in subjects if owner_of(redis_cluster, f"{{{s}}}").port == frozen.port)
    server = ServerProcess(redis_url=redis_cluster_url, workdir=tmp_path)
    server.start()
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = quota_pb2_grpc.QuotaServiceStub(channel)
            for who in (healthy, on_frozen):
                assert timed_reserve(stub, who)[0].decision == quota_pb2.ALLOW
            assert frozen.pid
            os.kill(frozen.pid, signal.SIGSTOP)  # short of cluster-node-timeout (5 s): no failover
            try:
                latencies = []
                for who in (on_frozen, healthy, on_frozen):
                    answer, took = timed_reserve(stub, who)
                    # Every request also takes the company-wide {__global__} step: on the
                    # frozen master, each gets its on_store_error answer, in time.
                    assert (answer.decision, answer.reason) == (quota_pb2.DENY, quota_pb2.STORE_UNAVAILABLE)
                    latencies.append(took)
            finally:
                os.kill(frozen.pid, signal.SIGCONT)
            print(
                "\nfrozen cluster master: "
                + ", ".join(f"{t * 1000:.0f}" for t in latencies)
                + f" ms (budget {BUDGET * 1000:.0f} ms)"
            )
            assert max(latencies) < BUDGET + SLACK_SECONDS
            started = time.monotonic()
            while timed_reserve(stub, healthy)[0].decision != quota_pb2.ALLOW:
                assert time.monotonic() - started < 5, "no recovery after SIGCONT"
                time.sleep(0.05)
    finally:
        server.stop()


def test_a_budget_above_the_clients_attempt_timeout_is_warned_about(redis_url: str, tmp_path: Path) -> None:
    server = ServerProcess(redis_url=redis_url, workdir=tmp_path, extra_args=("--request-budget", "0.6"))
    server.start()
    try:
        assert "--request-budget 0.6 s is not below the Python client's default attempt timeout (0.5 s)" in server.log()
    finally:
        server.stop()
