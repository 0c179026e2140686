"""Look-alike names never bypass a stop, and oversized names get their real status
(issue 12 #6, #7), through the real server."""

from __future__ import annotations

import uuid

import grpc
import pytest
from support.server_process import ServerProcess

from quota.v1 import admin_pb2, admin_pb2_grpc, quota_pb2, quota_pb2_grpc

pytestmark = pytest.mark.e2e


def ask(stub: quota_pb2_grpc.QuotaServiceStub, provider: str, **fields: str) -> quota_pb2.CheckAndReserveResponse:
    request = quota_pb2.CheckAndReserveRequest(
        subject=fields.pop("subject", f"user-{uuid.uuid4().hex[:8]}"),
        feature=fields.pop("feature", "blog_writer"),
        provider=provider,
        model=fields.pop("model", "gpt-4o-mini"),
        usage={"tokens": 10},
        **fields,  # type: ignore[arg-type]
    )
    return stub.CheckAndReserve(request, timeout=5)


def test_a_provider_stop_cannot_be_bypassed_by_look_alike_names(
    quota_server: ServerProcess, channel: grpc.Channel
) -> None:
    quota = quota_pb2_grpc.QuotaServiceStub(channel)
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    auth = (("authorization", f"Bearer {quota_server.admin_token}"),)
    assert ask(quota, "openai").decision == quota_pb2.ALLOW

    admin.EmergencyStop(
        admin_pb2.EmergencyStopRequest(scope=admin_pb2.PROVIDER, target="OpenAI", reason="incident"),
        metadata=auth,
        timeout=5,
    )
    for same in ("openai", "OpenAI", "OPENAI", "\uff4f\uff50\uff45\uff4e\uff41\uff49"):
        answer = ask(quota, same)
        assert (answer.decision, answer.reason) == (quota_pb2.DENY, quota_pb2.EMERGENCY_STOP), same

    for look_alike in ("openai\u200b", "\u202eopenai", "openai\x9b", "open\u00adai", "openai\n"):
        with pytest.raises(grpc.RpcError) as refused:
            ask(quota, look_alike)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, look_alike
        assert "provider" in (refused.value.details() or "")

    stops = admin.ListStops(admin_pb2.ListStopsRequest(), metadata=auth, timeout=5).stops
    assert [(s.scope, s.target) for s in stops] == [(admin_pb2.PROVIDER, "openai")]


def test_invisible_characters_are_refused_in_every_request_name(channel: grpc.Channel) -> None:
    quota = quota_pb2_grpc.QuotaServiceStub(channel)
    for field in ("subject", "feature", "model", "request_id"):
        with pytest.raises(grpc.RpcError) as refused:
            ask(quota, "openai", **{field: "x\u200by"})
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in (refused.value.details() or "")


@pytest.mark.parametrize("field", ["subject", "feature", "provider", "model", "request_id"])
def test_a_20_kb_name_gets_invalid_argument_with_a_short_message(channel: grpc.Channel, field: str) -> None:
    quota = quota_pb2_grpc.QuotaServiceStub(channel)
    huge = "a" * 20_000
    fields = {field: huge} if field != "provider" else {}
    with pytest.raises(grpc.RpcError) as refused:
        ask(quota, huge if field == "provider" else "openai", **fields)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert len(refused.value.details() or "") < 400


def test_a_20_kb_metric_name_gets_invalid_argument_with_a_short_message(channel: grpc.Channel) -> None:
    quota = quota_pb2_grpc.QuotaServiceStub(channel)
    request = quota_pb2.CheckAndReserveRequest(
        subject="u1", feature="blog_writer", provider="openai", model="gpt-4o-mini", usage={"t" * 20_000: 1}
    )
    with pytest.raises(grpc.RpcError) as refused:
        quota.CheckAndReserve(request, timeout=5)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert len(refused.value.details() or "") < 400


def test_the_company_wide_scope_is_not_a_subject(channel: grpc.Channel) -> None:
    quota = quota_pb2_grpc.QuotaServiceStub(channel)
    with pytest.raises(grpc.RpcError) as refused:
        ask(quota, "openai", subject="__global__")
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as refused:
        quota.GetUsage(quota_pb2.GetUsageRequest(subject="__global__"), timeout=5)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
