"""Sizes at the edge, end to end: whatever a request echoes back in an error, the client
gets the real status with a bounded message (a status message travels in HTTP/2 trailers,
which the peer limits to a few KiB: an unbounded one arrived as RESOURCE_EXHAUSTED "Stream
removed"); requests and metadata above the server's deliberate limits are refused by gRPC."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from support.server_process import SHIPPED_POLICIES, ServerProcess

from quota.v1 import admin_pb2, admin_pb2_grpc, quota_pb2, quota_pb2_grpc
from quota_service.server.status import MAX_STATUS_MESSAGE_BYTES, TRUNCATED

pytestmark = pytest.mark.e2e

HUGE = "x" * 20_000


def refused(call: object, *args: object, **kwargs: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=10, **kwargs)  # type: ignore[operator]
    return info.value


def assert_bounded(error: grpc.RpcError, code: grpc.StatusCode) -> str:
    assert error.code() == code, (error.code(), error.details()[:200])
    details = error.details()
    assert len(details.encode()) <= MAX_STATUS_MESSAGE_BYTES
    # Cut at the source (validation echoes at most a short prefix) or, failing that, at the
    # transport (status_message truncates): either way never the whole 20 KB value.
    assert details.endswith(TRUNCATED) or len(details) < 400
    return details


def test_huge_echoed_values_get_the_real_status(quota_server: ServerProcess, channel: grpc.Channel) -> None:
    quota = quota_pb2_grpc.QuotaServiceStub(channel)
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    auth = [("authorization", f"Bearer {quota_server.admin_token}")]
    ask = quota_pb2.CheckAndReserveRequest(subject="u1", feature="blog_writer", provider="openai", model="gpt-4o-mini")

    ask_huge_metric = quota_pb2.CheckAndReserveRequest()
    ask_huge_metric.CopyFrom(ask)
    ask_huge_metric.usage[HUGE] = 1
    details = assert_bounded(refused(quota.CheckAndReserve, ask_huge_metric), grpc.StatusCode.INVALID_ARGUMENT)
    assert "xxxx" in details

    assert_bounded(
        refused(quota.Commit, quota_pb2.CommitRequest(reservation_id=HUGE, usage={"tokens": 1})),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert_bounded(
        refused(quota.Release, quota_pb2.ReleaseRequest(reservation_id=HUGE)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert_bounded(
        refused(admin.SetTier, admin_pb2.SetTierRequest(subject="u1", tier=HUGE), metadata=auth),
        grpc.StatusCode.NOT_FOUND,
    )
    # A real reservation commits with its real id afterwards: nothing was broken on the way.
    ask.usage["tokens"] = 5
    reserved = quota.CheckAndReserve(ask, timeout=5)
    quota.Commit(quota_pb2.CommitRequest(reservation_id=reserved.reservation_id, usage={"tokens": 5}), timeout=5)


def test_control_characters_in_a_status_message_are_escaped(redis_url: str, tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    good = (SHIPPED_POLICIES / "alpha.yaml").read_text()
    (policies / "alpha.yaml").write_text(good)
    server = ServerProcess(redis_url=redis_url, workdir=tmp_path, policies=policies, extra_args=("--no-watch",))
    server.start()
    try:
        # The loader names the bad key as written; a YAML escape puts ESC [2J (clear the
        # screen), a newline and a bidi override in it.
        (policies / "alpha.yaml").write_text(good + '"evil\\e[2J\\nforged\\u202ekey": 1\n')
        with grpc.insecure_channel(server.target) as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            auth = [("authorization", f"Bearer {server.admin_token}")]
            error = refused(admin.ReloadPolicies, admin_pb2.ReloadPoliciesRequest(), metadata=auth)
    finally:
        server.stop()
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = error.details()
    assert not any(ch in details for ch in "\x1b\n\u202e"), details
    assert "evil\\x1b[2J\\nforged\\u202ekey" in details


def test_requests_above_one_mib_are_refused_by_both_services(
    quota_server: ServerProcess, channel: grpc.Channel
) -> None:
    quota = quota_pb2_grpc.QuotaServiceStub(channel)
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    auth = [("authorization", f"Bearer {quota_server.admin_token}")]
    big = "y" * (1 << 20)
    error = refused(quota.Release, quota_pb2.ReleaseRequest(reservation_id=big))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    error = refused(admin.SetTier, admin_pb2.SetTierRequest(subject="u1", tier="pro_alpha", reason=big), metadata=auth)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_metadata_above_the_limit_is_refused_every_time(quota_server: ServerProcess, channel: grpc.Channel) -> None:
    quota = quota_pb2_grpc.QuotaServiceStub(channel)
    # 10 KiB: above the 8 KiB limit, below gRPC's default hard limit (16 KiB): there the
    # default soft limit (8 KiB) refuses only some of the calls, at random.
    padding = [("x-padding", "p" * (10 << 10))]
    for _ in range(20):
        error = refused(quota.GetUsage, quota_pb2.GetUsageRequest(subject="u1"), metadata=padding)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert quota.GetUsage(quota_pb2.GetUsageRequest(subject="u1"), metadata=[("x-small", "s" * 1024)], timeout=5).tier
