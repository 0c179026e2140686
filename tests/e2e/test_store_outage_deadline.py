"""The real server with Redis stopped and with Redis frozen (SIGSTOP): a caller with a 0.3 s
deadline gets its on_store_error answer (DENY or ALLOW, reason STORE_UNAVAILABLE), never
DEADLINE_EXCEEDED: one deadline bounds every store call of the request. The server runs with
a per-call store timeout (1 s) longer than the caller's deadline, as one may set it to ride
out a cluster failover: the request's deadline, not the per-call timeout, bounds the answer.
Whether it came in time is the client's deadline to say (it raises otherwise); the latencies
are printed."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support.server_process import ServerProcess

from quota.v1 import admin_pb2, admin_pb2_grpc, quota_pb2, quota_pb2_grpc
from quota_service.store.embedded import EmbeddedRedis

pytestmark = pytest.mark.e2e

CLIENT_DEADLINE_SECONDS = 0.3


@pytest.fixture
def served(own_redis: EmbeddedRedis, tmp_path: Path) -> Iterator[tuple[ServerProcess, grpc.Channel]]:
    workdir = tmp_path / "server"
    workdir.mkdir()
    server = ServerProcess(redis_url=own_redis.url, workdir=workdir, extra_args=("--store-timeout", "1.0"))
    server.start()
    channel = grpc.insecure_channel(server.target)
    try:
        yield server, channel
    finally:
        channel.close()
        if own_redis.pid:
            os.kill(own_redis.pid, signal.SIGCONT)  # let the server drain against a live Redis
        server.stop()


def ask(channel: grpc.Channel, who: str) -> tuple[quota_pb2.CheckAndReserveResponse, float]:
    request = quota_pb2.CheckAndReserveRequest(
        subject=who,
        feature="blog_writer",
        provider="openai",
        model="gpt-4o-mini",
        usage={"tokens": 10},
        request_id=uuid.uuid4().hex,
    )
    started = time.monotonic()
    answer = quota_pb2_grpc.QuotaServiceStub(channel).CheckAndReserve(request, timeout=CLIENT_DEADLINE_SECONDS)
    return answer, time.monotonic() - started


def make_pro(server: ServerProcess, channel: grpc.Channel, who: str) -> None:
    admin_pb2_grpc.AdminServiceStub(channel).SetTier(
        admin_pb2.SetTierRequest(subject=who, tier="pro_alpha"),
        metadata=[("authorization", f"Bearer {server.admin_token}")],
        timeout=5,
    )


def outage_answers(server: ServerProcess, channel: grpc.Channel, how: str) -> list[float]:
    """Five calls (a known free subject twice, a known pro subject twice, one never seen)
    during the outage: each gets its on_store_error answer in time. Returns the latencies."""
    latencies = []
    for who, decision in (("free-user", quota_pb2.DENY), ("pro-user", quota_pb2.ALLOW), ("stranger", quota_pb2.DENY)):
        for _ in range(2 if who != "stranger" else 1):
            try:
                answer, took = ask(channel, who)
            except grpc.RpcError as exc:
                pytest.fail(f"{how}: {who} got {exc.code()} instead of an answer:\n{server.log()[-3000:]}")
            assert (answer.decision, answer.reason) == (decision, quota_pb2.STORE_UNAVAILABLE), (how, who, answer)
            latencies.append(took)
    print(
        f"\n{how} Redis: on_store_error answers in "
        + ", ".join(f"{t * 1000:.0f}" for t in latencies)
        + f" ms (client deadline {CLIENT_DEADLINE_SECONDS * 1000:.0f} ms)"
    )
    return latencies


def warm(server: ServerProcess, channel: grpc.Channel) -> None:
    """The server knows free-user (free_alpha) and pro-user (pro_alpha: on_store_error allow)."""
    make_pro(server, channel, "pro-user")
    for who in ("free-user", "pro-user"):
        answer, _ = ask(channel, who)
        assert answer.decision == quota_pb2.ALLOW, answer


def test_a_stopped_redis_is_answered_before_the_callers_deadline(
    own_redis: EmbeddedRedis, served: tuple[ServerProcess, grpc.Channel]
) -> None:
    server, channel = served
    warm(server, channel)
    own_redis.stop()
    outage_answers(server, channel, "stopped")


def test_a_frozen_redis_is_answered_before_the_callers_deadline(
    own_redis: EmbeddedRedis, served: tuple[ServerProcess, grpc.Channel]
) -> None:
    server, channel = served
    warm(server, channel)
    assert own_redis.pid
    os.kill(own_redis.pid, signal.SIGSTOP)
    try:
        outage_answers(server, channel, "frozen (SIGSTOP)")
    finally:
        os.kill(own_redis.pid, signal.SIGCONT)
    answer, _ = ask(channel, "free-user")  # and it recovers by itself
    assert answer.decision == quota_pb2.ALLOW, answer
