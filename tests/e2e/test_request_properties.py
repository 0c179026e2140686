"""Property-based tests over the request surface (issue 12): whatever a caller sends,
the real server answers with a definite status (never UNKNOWN or INTERNAL), quickly,
and a refused request changes no counter.

One real server and one real Redis for the whole module; hypothesis drives the requests
(derandomized, so CI runs the same examples every time)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.server_process import ServerProcess

from quota.v1 import quota_pb2, quota_pb2_grpc
from quota_service.store.embedded import EmbeddedRedis

pytestmark = pytest.mark.e2e

#: Codes that would mean the server lost track of an input: never acceptable. DEADLINE_EXCEEDED
#: too: every call carries a deadline of REFUSAL_SECONDS, the bound on answering any input.
BROKEN = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
REFUSAL_SECONDS = 2.0

PROPERTY_SETTINGS = settings(
    max_examples=150,
    derandomize=True,
    deadline=None,  # each example is a real round trip; time is bounded by the RPC timeout instead
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, redis.Redis]]:
    redis_dir = tmp_path_factory.mktemp("props-redis")
    embedded = EmbeddedRedis(data_dir=redis_dir, persistence=False)
    embedded.start()
    process = ServerProcess(redis_url=embedded.url, workdir=Path(tmp_path_factory.mktemp("props-server")))
    process.start()
    client = redis.Redis.from_url(embedded.url, decode_responses=True)
    try:
        yield process, client
    finally:
        client.close()
        process.stop()
        embedded.stop()


@pytest.fixture(scope="module")
def stub(server: tuple[ServerProcess, redis.Redis]) -> Iterator[quota_pb2_grpc.QuotaServiceStub]:
    with grpc.insecure_channel(server[0].target) as channel:
        yield quota_pb2_grpc.QuotaServiceStub(channel)


def counters(client: redis.Redis) -> dict[str, dict[str, str]]:
    """Every counter hash (``q:*``) and its fields: what a refused request must not change."""
    return {key: client.hgetall(key) for key in client.scan_iter(match="q:*", count=1000)}  # type: ignore[misc]


hostile_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=12),
    st.sampled_from(["", "openai", "OpenAI", "__global__", "a" * 300, "x\u200by", "\u202eopenai", "{tag}", "a\nb"]),
    st.builds(lambda n: "z" * n, st.integers(min_value=9_000, max_value=30_000)),
)
names = st.one_of(st.sampled_from(["tester", "user-1", "blog_writer", "openai", "gpt-4o-mini"]), hostile_text)
amounts = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -1.0, 1e300, 2.0**53, 2.0**53 + 2, 0.1, 1e-300, -0.0, math.nan]),
    st.integers(min_value=0, max_value=2000).map(float),
)
metrics = st.one_of(st.sampled_from(["tokens", "images", "cost_usd", "Tokens", "tokens\n", ""]), hostile_text)
usages = st.dictionaries(metrics, amounts, max_size=4)


def call(method: Any, request: Any) -> grpc.StatusCode:
    try:
        method(request, timeout=REFUSAL_SECONDS)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        assert code not in BROKEN, f"{code}: {exc.details()}"
        assert len(exc.details() or "") <= 2048, "an error message must stay short"
        return code
    return grpc.StatusCode.OK


@PROPERTY_SETTINGS
@given(
    subject=names,
    feature=names,
    provider=names,
    model=names,
    usage=usages,
    request_id=st.one_of(st.just(""), hostile_text),
    ttl=st.one_of(st.just(0), st.integers(min_value=0, max_value=2**32 - 1)),
    dry_run=st.booleans(),
)
def test_check_and_reserve_never_breaks_and_a_refusal_counts_nothing(
    server: tuple[ServerProcess, redis.Redis],
    stub: quota_pb2_grpc.QuotaServiceStub,
    subject: str,
    feature: str,
    provider: str,
    model: str,
    usage: dict[str, float],
    request_id: str,
    ttl: int,
    dry_run: bool,
) -> None:
    before = counters(server[1])
    request = quota_pb2.CheckAndReserveRequest(
        subject=subject,
        feature=feature,
        provider=provider,
        model=model,
        usage=usage,
        request_id=request_id,
        reservation_ttl_seconds=ttl,
        dry_run=dry_run,
    )
    code = call(stub.CheckAndReserve, request)
    if code is not grpc.StatusCode.OK:
        assert counters(server[1]) == before


reservation_ids = st.one_of(
    hostile_text,
    st.sampled_from(["rsv_", "rsv_dXNlcg.0123456789abcdef0123456789abcdef", "rsv_dXNlcg." + "0" * 32, "rsv_.x"]),
    st.builds(lambda a, b: f"rsv_{a}.{b}", hostile_text, hostile_text),
)


@PROPERTY_SETTINGS
@given(reservation_id=reservation_ids, usage=usages, release=st.booleans())
def test_settling_unknown_or_malformed_reservations_never_breaks_and_counts_nothing(
    server: tuple[ServerProcess, redis.Redis],
    stub: quota_pb2_grpc.QuotaServiceStub,
    reservation_id: str,
    usage: dict[str, float],
    release: bool,
) -> None:
    before = counters(server[1])
    if release:
        code = call(stub.Release, quota_pb2.ReleaseRequest(reservation_id=reservation_id))
    else:
        code = call(stub.Commit, quota_pb2.CommitRequest(reservation_id=reservation_id, usage=usage))
    assert code is not grpc.StatusCode.OK  # none of these was ever issued
    assert counters(server[1]) == before


@PROPERTY_SETTINGS
@given(subject=names)
def test_get_usage_never_breaks(stub: quota_pb2_grpc.QuotaServiceStub, subject: str) -> None:
    call(stub.GetUsage, quota_pb2.GetUsageRequest(subject=subject))
