"""Exactness with the group-committed, fused reserve on, when the requests are spread: over
two replicas on one Redis (200 concurrent 10-token calls of one subject grant exactly 95),
and over two workers for the company-wide cap (200 subjects, a cap of exactly 100 calls'
cost: exactly 100 granted, and the global counter holds exactly the cap)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest
import redis
from support.server_process import SHIPPED_POLICIES, ServerProcess

from quota.v1 import quota_pb2, quota_pb2_grpc

pytestmark = pytest.mark.e2e

#: Own TCP connection per channel (grpc shares subchannels between equal channels otherwise).
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
#: 10 tokens of openai/gpt-4o-mini at $0.60 per 1M tokens: 6 micro-dollars per call.
MICROS_PER_CALL = 6


def request(who: str) -> quota_pb2.CheckAndReserveRequest:
    return quota_pb2.CheckAndReserveRequest(
        subject=who, feature="blog_writer", provider="openai", model="gpt-4o-mini", usage={"tokens": 10}
    )


async def _spread(
    targets: Sequence[str], requests: Sequence[quota_pb2.CheckAndReserveRequest]
) -> list[quota_pb2.CheckAndReserveResponse]:
    opened = [grpc.aio.insecure_channel(t, options=OWN_CONNECTION) for t in targets for _ in range(10)]
    try:
        stubs = [quota_pb2_grpc.QuotaServiceStub(ch) for ch in opened]
        calls = (stubs[i % len(stubs)].CheckAndReserve(r, timeout=30) for i, r in enumerate(requests))
        return list(await asyncio.gather(*calls))
    finally:
        for ch in opened:
            await ch.close()


@pytest.fixture
def two_replicas(redis_url: str, tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    made: list[ServerProcess] = []
    try:
        for name in ("a", "b"):
            workdir = tmp_path / name
            workdir.mkdir()
            server = ServerProcess(redis_url=redis_url, workdir=workdir, extra_args=("--no-watch",))
            server.start(timeout=60)
            made.append(server)
        yield made[0], made[1]
    finally:
        for server in made:
            server.stop()


def test_200_concurrent_calls_over_two_replicas_grant_exactly_95(
    two_replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    who = f"user-{uuid.uuid4().hex[:10]}"
    answers = asyncio.run(_spread([s.target for s in two_replicas], [request(who)] * 200))
    granted = [a for a in answers if a.decision in (quota_pb2.ALLOW, quota_pb2.WARN)]
    denied = [a for a in answers if a.decision == quota_pb2.DENY]
    assert (len(granted), len(denied)) == (95, 105)
    assert len({a.reservation_id for a in granted}) == 95
    assert {a.reason for a in denied} == {quota_pb2.BLOCK_THRESHOLD}


@pytest.fixture
def small_global_cap(tmp_path: Path) -> Path:
    """The shipped policy with the company-wide cap cut to the cost of exactly 100 calls."""
    folder = tmp_path / "policies"
    folder.mkdir()
    text = (SHIPPED_POLICIES / "alpha.yaml").read_text(encoding="utf-8")
    assert "cost_usd: {day: 200.00}     # USD" in text
    cap = f"{100 * MICROS_PER_CALL / 1_000_000:.6f}"
    (folder / "alpha.yaml").write_text(text.replace("cost_usd: {day: 200.00}", f"cost_usd: {{day: {cap}}}"), "utf-8")
    return folder


def test_the_global_cap_grants_exactly_its_worth_across_200_subjects_and_two_workers(
    redis_url: str, tmp_path: Path, small_global_cap: Path
) -> None:
    server = ServerProcess(
        redis_url=redis_url, workdir=tmp_path, policies=small_global_cap, extra_args=("--workers", "2", "--no-watch")
    )
    server.start(timeout=60)
    try:
        run = uuid.uuid4().hex[:8]
        answers = asyncio.run(_spread([server.target] * 2, [request(f"g{run}-{i}") for i in range(200)]))
    finally:
        server.stop()
    granted = [a for a in answers if a.decision in (quota_pb2.ALLOW, quota_pb2.WARN)]
    denied = [a for a in answers if a.decision == quota_pb2.DENY]
    assert (len(granted), len(denied)) == (100, 100), server.log()[-2000:]
    assert {a.reason for a in denied} == {quota_pb2.GLOBAL_LIMIT}
    # the company-wide counter holds exactly the cap, and no denied subject holds anything
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        held = [raw.hgetall(k) for k in raw.scan_iter("q:{__global__}:cost_usd:day:*")]
        assert sum(int(h.get("held", 0)) + int(h.get("used", 0)) for h in held) == 100 * MICROS_PER_CALL
        for i, answer in enumerate(answers):
            if answer.decision == quota_pb2.DENY:
                for key in raw.scan_iter(f"q:{{g{run}-{i}}}:*"):
                    assert raw.hget(key, "held") in (None, "0"), key
    finally:
        raw.close()
