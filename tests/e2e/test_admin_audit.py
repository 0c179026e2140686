"""The admin plane's records and reports end to end: the audit log (who, before, after, why;
never the token), GetSubject, ResetUsage (used zeroed, held kept) and TopUsage."""

from __future__ import annotations

import json
import time
import uuid

import grpc
import pytest
import redis
from support.server_process import ServerProcess

from quota.v1 import admin_pb2, admin_pb2_grpc, quota_pb2, quota_pb2_grpc
from quota_service.server.auth import token_fingerprint

pytestmark = pytest.mark.e2e


def subject() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def admin(channel: grpc.Channel) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(channel)


@pytest.fixture
def auth(quota_server: ServerProcess) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {quota_server.admin_token}")]


def reserve(channel: grpc.Channel, who: str, tokens: int) -> str:
    stub = quota_pb2_grpc.QuotaServiceStub(channel)
    answer = stub.CheckAndReserve(
        quota_pb2.CheckAndReserveRequest(
            subject=who, feature="blog_writer", provider="openai", model="gpt-4o-mini", usage={"tokens": tokens}
        ),
        timeout=5,
    )
    assert answer.decision != quota_pb2.DENY, answer
    return answer.reservation_id


def spend(channel: grpc.Channel, who: str, tokens: int) -> None:
    stub = quota_pb2_grpc.QuotaServiceStub(channel)
    stub.Commit(quota_pb2.CommitRequest(reservation_id=reserve(channel, who, tokens), usage={"tokens": tokens}))


def test_changes_are_audited_with_actor_before_after_and_reason(
    quota_server: ServerProcess, admin: admin_pb2_grpc.AdminServiceStub, auth: list[tuple[str, str]]
) -> None:
    who = subject()
    started_ms = time.time() * 1000
    admin.SetTier(admin_pb2.SetTierRequest(subject=who, tier="basic_alpha", reason="alpha tester"), metadata=auth)
    admin.SetOverride(
        admin_pb2.SetOverrideRequest(subject=who, metric="cost_usd", window="month", max=12.5, reason="campaign"),
        metadata=auth,
    )
    admin.EmergencyStop(
        admin_pb2.EmergencyStopRequest(scope=admin_pb2.SUBJECT, target=who, reason="runaway loop"), metadata=auth
    )
    admin.SetTier(admin_pb2.SetTierRequest(subject=subject(), tier="pro_alpha", reason="someone else"), metadata=auth)

    entries = list(admin.ListAudit(admin_pb2.ListAuditRequest(subject=who), metadata=auth).entries)
    assert [e.action for e in entries] == ["EmergencyStop", "SetOverride", "SetTier"]  # newest first
    stop, override, tier = entries
    fingerprint = token_fingerprint(quota_server.admin_token)
    for entry in entries:
        assert entry.actor == fingerprint and entry.id and started_ms - 1000 <= entry.at <= time.time() * 1000 + 1000
        assert quota_server.admin_token not in str(entry)
    assert (tier.target, tier.reason) == (who, "alpha tester")
    assert json.loads(tier.before) == {"tier": None} and json.loads(tier.after) == {"tier": "basic_alpha"}
    assert override.reason == "campaign" and json.loads(override.before) is None
    assert json.loads(override.after) == {
        "metric": "cost_usd",
        "window": "month",
        "max": 12.5,
        "expires_at": 0,
        "reason": "campaign",
    }
    assert (stop.target, stop.reason) == (f"SUBJECT:{who}", "runaway loop")
    assert json.loads(stop.after)["created_by"] == fingerprint and json.loads(stop.before) is None

    everyone = list(admin.ListAudit(admin_pb2.ListAuditRequest(limit=2), metadata=auth).entries)
    assert [(e.action, e.reason) for e in everyone] == [("SetTier", "someone else"), ("EmergencyStop", "runaway loop")]
    assert quota_server.admin_token not in quota_server.log()

    view = admin.GetSubject(admin_pb2.GetSubjectRequest(subject=who), metadata=auth)
    assert (view.tier, view.tier_assigned) == ("basic_alpha", True)
    assert [(o.metric, o.window, o.max, o.created_by) for o in view.overrides] == [
        ("cost_usd", "month", 12.5, fingerprint)
    ]
    assert [(s.scope, s.target) for s in view.stops] == [(admin_pb2.SUBJECT, who)]
    cost = next(lim for lim in view.limits if lim.metric == "cost_usd" and lim.window == "month")
    assert (cost.max, cost.kind) == (12.5, quota_pb2.LIMIT_KIND_OVERRIDE)


def test_reset_usage_zeroes_used_and_keeps_held(
    quota_server: ServerProcess,
    channel: grpc.Channel,
    admin: admin_pb2_grpc.AdminServiceStub,
    auth: list[tuple[str, str]],
) -> None:
    who, bystander = subject(), subject()
    spend(channel, who, 600)
    open_id = reserve(channel, who, 50)
    spend(channel, bystander, 200)
    reply = admin.ResetUsage(
        admin_pb2.ResetUsageRequest(subject=who, metric="tokens", window="day", reason="ticket 7"), metadata=auth
    )
    assert reply.counters_reset == 1
    client = redis.Redis.from_url(quota_server.redis_url, decode_responses=True)
    try:
        (key,) = client.keys(f"q:{{{who}}}:tokens:day:*")
        assert client.hgetall(key) == {"used": "0", "held": "50"}
        (other,) = client.keys(f"q:{{{bystander}}}:tokens:day:*")
        assert client.hget(other, "used") == "200"
        (cost,) = client.keys(f"q:{{{who}}}:cost_usd:month:*")
        assert client.hget(cost, "used") == "360"  # another metric: untouched
    finally:
        client.close()
    # The open reservation still settles correctly on the zeroed counter.
    stub = quota_pb2_grpc.QuotaServiceStub(channel)
    stub.Commit(quota_pb2.CommitRequest(reservation_id=open_id, usage={"tokens": 30}))
    usage = stub.GetUsage(quota_pb2.GetUsageRequest(subject=who))
    tokens = next(lim for lim in usage.limits if lim.metric == "tokens" and lim.kind == quota_pb2.LIMIT_KIND_TIER)
    assert (tokens.used, tokens.held) == (30, 0)
    (entry,) = admin.ListAudit(admin_pb2.ListAuditRequest(subject=who), metadata=auth).entries
    assert (entry.action, entry.reason) == ("ResetUsage", "ticket 7")
    assert list(json.loads(entry.before)["used"].values()) == [600.0]
    with pytest.raises(grpc.RpcError) as info:
        admin.ResetUsage(admin_pb2.ResetUsageRequest(subject=who, window="week"), metadata=auth)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_top_usage_orders_subjects_by_used(
    channel: grpc.Channel, admin: admin_pb2_grpc.AdminServiceStub, auth: list[tuple[str, str]]
) -> None:
    big, middle, small = subject(), subject(), subject()
    spend(channel, big, 600)
    spend(channel, middle, 250)
    spend(channel, small, 40)
    reply = admin.TopUsage(admin_pb2.TopUsageRequest(metric="tokens", window="day", n=2), metadata=auth)
    assert [(e.subject, e.used, e.held) for e in reply.entries] == [(big, 600, 0), (middle, 250, 0)]
    assert reply.window_start % 86_400 == 0 and reply.window_start <= time.time() < reply.window_start + 86_400
    money = admin.TopUsage(admin_pb2.TopUsageRequest(metric="cost_usd", window="month"), metadata=auth)
    assert [(e.subject, e.used) for e in money.entries] == [(big, 0.00036), (middle, 0.00015), (small, 0.000024)]
    for bad in (
        admin_pb2.TopUsageRequest(metric="tokens", window="fortnight"),
        admin_pb2.TopUsageRequest(metric="Bad Metric", window="day"),
        admin_pb2.TopUsageRequest(metric="tokens", window="day", n=100_000),
    ):
        with pytest.raises(grpc.RpcError) as info:
            admin.TopUsage(bad, metadata=auth)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_admin_validation_reaches_the_client_as_precise_codes(
    admin: admin_pb2_grpc.AdminServiceStub, auth: list[tuple[str, str]]
) -> None:
    cases = [
        (admin.SetTier, admin_pb2.SetTierRequest(subject="u1", tier="platinum"), grpc.StatusCode.NOT_FOUND),
        (admin.SetTier, admin_pb2.SetTierRequest(subject="", tier="pro_alpha"), grpc.StatusCode.INVALID_ARGUMENT),
        (
            admin.SetOverride,
            admin_pb2.SetOverrideRequest(subject="u1", metric="tokens", window="day", max=1.5),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            admin.SetOverride,
            admin_pb2.SetOverrideRequest(subject="u1", metric="tokens", window="day", max=1, ttl_seconds=-1),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (admin.EmergencyStop, admin_pb2.EmergencyStopRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        (
            admin.EmergencyStop,
            admin_pb2.EmergencyStopRequest(scope=admin_pb2.GLOBAL, target="x"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            admin.EmergencyStop,
            admin_pb2.EmergencyStopRequest(scope=admin_pb2.PROVIDER),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (admin.ListAudit, admin_pb2.ListAuditRequest(limit=5000), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for call, request_message, code in cases:
        with pytest.raises(grpc.RpcError) as info:
            call(request_message, metadata=auth, timeout=5)
        assert info.value.code() == code, request_message
    assert list(admin.ListAudit(admin_pb2.ListAuditRequest(), metadata=auth).entries) == []
    deleted = admin.DeleteOverride(
        admin_pb2.DeleteOverrideRequest(subject="u1", metric="tokens", window="day"), metadata=auth
    )
    assert deleted.deleted is False
