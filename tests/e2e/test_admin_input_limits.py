"""Admin inputs that once damaged the admin plane for everyone, end to end through the real
server: a 1 MB reason (then ListAudit and ListOverrides failed with RESOURCE_EXHAUSTED),
reasons with control characters, and ResetUsage of ``__global__`` (it zeroed the
company-wide counters)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from support.server_process import ServerProcess

from quota.v1 import admin_pb2, admin_pb2_grpc, quota_pb2, quota_pb2_grpc

pytestmark = pytest.mark.e2e

MEGABYTE_REASON = "r" * 1_000_000


@pytest.fixture
def admin(channel: grpc.Channel) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(channel)


@pytest.fixture
def auth(quota_server: ServerProcess) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {quota_server.admin_token}")]


def writes(reason: str) -> list[tuple[str, Any]]:
    """Every admin write that takes a reason, with that reason."""
    return [
        ("SetTier", admin_pb2.SetTierRequest(subject="u1", tier="pro_alpha", reason=reason)),
        (
            "SetOverride",
            admin_pb2.SetOverrideRequest(subject="u1", metric="tokens", window="day", max=5, reason=reason),
        ),
        ("EmergencyStop", admin_pb2.EmergencyStopRequest(scope=admin_pb2.SUBJECT, target="u1", reason=reason)),
        ("ResumeStop", admin_pb2.ResumeStopRequest(scope=admin_pb2.SUBJECT, target="u1", reason=reason)),
        ("ResetUsage", admin_pb2.ResetUsageRequest(subject="u1", reason=reason)),
    ]


def refused(call: Any, request: Any, auth: list[tuple[str, str]]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, metadata=auth, timeout=10)
    return info.value


def assert_nothing_written(admin: admin_pb2_grpc.AdminServiceStub, auth: list[tuple[str, str]]) -> None:
    assert list(admin.ListAudit(admin_pb2.ListAuditRequest(), metadata=auth, timeout=5).entries) == []
    assert list(admin.ListOverrides(admin_pb2.ListOverridesRequest(), metadata=auth, timeout=5).overrides) == []
    assert list(admin.ListStops(admin_pb2.ListStopsRequest(), metadata=auth, timeout=5).stops) == []
    subject = admin.GetSubject(admin_pb2.GetSubjectRequest(subject="u1"), metadata=auth, timeout=5)
    assert (subject.tier, subject.tier_assigned) == ("free_alpha", False)


def test_a_megabyte_reason_is_refused_and_the_lists_keep_working(
    admin: admin_pb2_grpc.AdminServiceStub, auth: list[tuple[str, str]]
) -> None:
    for rpc, request in writes(MEGABYTE_REASON):
        error = refused(getattr(admin, rpc), request, auth)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (rpc, error.code())
        assert "at most 1024 bytes" in error.details(), rpc
    assert_nothing_written(admin, auth)

    # 1 KiB is fine, for every write, and every list still answers.
    for rpc, request in writes("k" * 1024):
        getattr(admin, rpc)(request, metadata=auth, timeout=5)
    entries = admin.ListAudit(admin_pb2.ListAuditRequest(), metadata=auth, timeout=5).entries
    assert {e.action for e in entries} == {"SetTier", "SetOverride", "EmergencyStop", "ResumeStop", "ResetUsage"}
    assert len(admin.ListOverrides(admin_pb2.ListOverridesRequest(), metadata=auth, timeout=5).overrides) == 1


@pytest.mark.parametrize("bad", ["\x00", "\x1b[2J", "\t", "\r", "\x7f", "\x9b"])
def test_a_reason_with_a_control_character_is_refused(
    admin: admin_pb2_grpc.AdminServiceStub, auth: list[tuple[str, str]], bad: str
) -> None:
    for rpc, request in writes(f"why{bad}not"):
        error = refused(getattr(admin, rpc), request, auth)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, rpc
        assert "no control characters other than newlines" in error.details(), rpc
    assert_nothing_written(admin, auth)


def test_a_reason_may_hold_newlines(admin: admin_pb2_grpc.AdminServiceStub, auth: list[tuple[str, str]]) -> None:
    reason = "ticket 7\nasked by support\n"
    admin.SetTier(admin_pb2.SetTierRequest(subject="u1", tier="pro_alpha", reason=reason), metadata=auth, timeout=5)
    (entry,) = admin.ListAudit(admin_pb2.ListAuditRequest(), metadata=auth, timeout=5).entries
    assert entry.reason == reason


def global_used(quota: quota_pb2_grpc.QuotaServiceStub) -> dict[tuple[str, str], float]:
    """The company-wide counters, as a dry-run request of another subject reports them."""
    answer = quota.CheckAndReserve(
        quota_pb2.CheckAndReserveRequest(
            subject="observer",
            feature="blog_writer",
            provider="openai",
            model="gpt-4o-mini",
            usage={"tokens": 1},
            dry_run=True,
        ),
        timeout=5,
    )
    return {(lim.metric, lim.window): lim.used for lim in answer.limits if lim.kind == quota_pb2.LIMIT_KIND_GLOBAL}


def test_reset_usage_of_the_company_wide_scope_is_refused(
    admin: admin_pb2_grpc.AdminServiceStub, auth: list[tuple[str, str]], channel: grpc.Channel
) -> None:
    quota = quota_pb2_grpc.QuotaServiceStub(channel)
    answer = quota.CheckAndReserve(
        quota_pb2.CheckAndReserveRequest(
            subject="spender", feature="blog_writer", provider="openai", model="gpt-4o-mini", usage={"tokens": 500}
        ),
        timeout=5,
    )
    quota.Commit(quota_pb2.CommitRequest(reservation_id=answer.reservation_id, usage={"tokens": 500}), timeout=5)
    before = global_used(quota)
    assert before and all(used > 0 for used in before.values())

    for request in (
        admin_pb2.ResetUsageRequest(subject="__global__"),
        admin_pb2.ResetUsageRequest(subject="__global__", metric="cost_usd", window="day"),
    ):
        error = refused(admin.ResetUsage, request, auth)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith("__global__ is the company-wide scope, not a subject; ")
    assert global_used(quota) == before
    assert list(admin.ListAudit(admin_pb2.ListAuditRequest(), metadata=auth, timeout=5).entries) == []
    # As every other admin RPC does.
    for rpc, request in (
        ("SetTier", admin_pb2.SetTierRequest(subject="__global__", tier="pro_alpha")),
        ("GetSubject", admin_pb2.GetSubjectRequest(subject="__global__")),
    ):
        assert refused(getattr(admin, rpc), request, auth).code() == grpc.StatusCode.INVALID_ARGUMENT, rpc
    # A subject's own reset leaves the company-wide counters alone.
    assert admin.ResetUsage(admin_pb2.ResetUsageRequest(subject="spender"), metadata=auth, timeout=5).counters_reset
    assert global_used(quota) == before
