"""Who may do what, end to end: admin credentials, a server without an admin plane, an
insecure admin plane off loopback refused at start-up, one subject's data never shown to a
call about another, and on_store_error per tier while Redis is down."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
from support.server_process import ROOT, SHIPPED_POLICIES, ServerProcess

from quota.v1 import admin_pb2, admin_pb2_grpc, quota_pb2, quota_pb2_grpc
from quota_service.server.auth import token_fingerprint
from quota_service.store.embedded import EmbeddedRedis

pytestmark = pytest.mark.e2e


def subject() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


def ask(
    stub: quota_pb2_grpc.QuotaServiceStub, who: str, tokens: int = 10, **extra: object
) -> quota_pb2.CheckAndReserveResponse:
    request = quota_pb2.CheckAndReserveRequest(
        subject=who,
        feature="blog_writer",
        provider="openai",
        model="gpt-4o-mini",
        usage={"tokens": tokens},
        **extra,  # type: ignore[arg-type]
    )
    return stub.CheckAndReserve(request, timeout=5)


ADMIN_CALLS = [
    ("SetTier", admin_pb2.SetTierRequest(subject="u1", tier="pro_alpha")),
    ("GetSubject", admin_pb2.GetSubjectRequest(subject="u1")),
    ("SetOverride", admin_pb2.SetOverrideRequest(subject="u1", metric="tokens", window="day", max=1)),
    ("EmergencyStop", admin_pb2.EmergencyStopRequest(scope=admin_pb2.GLOBAL)),
    ("ListStops", admin_pb2.ListStopsRequest()),
    ("ReloadPolicies", admin_pb2.ReloadPoliciesRequest()),
    ("ResetUsage", admin_pb2.ResetUsageRequest(subject="u1")),
    ("TopUsage", admin_pb2.TopUsageRequest(metric="tokens", window="day")),
    ("ListAudit", admin_pb2.ListAuditRequest()),
]


@pytest.mark.parametrize(("rpc", "request_message"), ADMIN_CALLS, ids=[name for name, _ in ADMIN_CALLS])
def test_admin_calls_need_the_token(
    quota_server: ServerProcess, channel: grpc.Channel, rpc: str, request_message: object
) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    call = getattr(admin, rpc)
    for metadata, code in [
        ((), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Bearer not-the-token"),), grpc.StatusCode.PERMISSION_DENIED),
        ((("authorization", quota_server.admin_token),), grpc.StatusCode.UNAUTHENTICATED),  # no "Bearer "
    ]:
        with pytest.raises(grpc.RpcError) as info:
            call(request_message, metadata=metadata, timeout=5)
        assert info.value.code() == code, (rpc, metadata)
    # Nothing was done: no stop, no tier, no audit entry.
    good = [("authorization", f"Bearer {quota_server.admin_token}")]
    assert list(admin.ListStops(admin_pb2.ListStopsRequest(), metadata=good).stops) == []
    assert list(admin.ListAudit(admin_pb2.ListAuditRequest(), metadata=good).entries) == []
    assert admin.GetSubject(admin_pb2.GetSubjectRequest(subject="u1"), metadata=good).tier_assigned is False


def test_the_authorization_header_is_parsed_strictly(quota_server: ServerProcess, channel: grpc.Channel) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    right, wrong = f"Bearer {quota_server.admin_token}", "Bearer not-the-token"
    cases: list[tuple[list[str], grpc.StatusCode, str]] = [
        ([wrong, right], grpc.StatusCode.UNAUTHENTICATED, "exactly one authorization header"),
        ([right, wrong], grpc.StatusCode.UNAUTHENTICATED, "exactly one authorization header"),
        ([right, right], grpc.StatusCode.UNAUTHENTICATED, "exactly one authorization header"),
        (["Basic dXNlcjpwYXNz"], grpc.StatusCode.UNAUTHENTICATED, "admin calls need a Bearer token"),
        (['Digest username="ops"'], grpc.StatusCode.UNAUTHENTICATED, "admin calls need a Bearer token"),
        (["%%garbage%%"], grpc.StatusCode.UNAUTHENTICATED, "admin calls need a Bearer token"),
        ([wrong], grpc.StatusCode.PERMISSION_DENIED, "the admin token is not valid"),
        ([f"bearer {quota_server.admin_token.upper()}"], grpc.StatusCode.PERMISSION_DENIED, "not valid"),
    ]
    for values, code, message in cases:
        with pytest.raises(grpc.RpcError) as info:
            admin.ListStops(admin_pb2.ListStopsRequest(), metadata=[("authorization", v) for v in values], timeout=5)
        assert (info.value.code(), message in info.value.details()) == (code, True), (values, info.value.details())

    token = quota_server.admin_token
    for n, value in enumerate([f"bearer {token}", f"BEARER {token}", f"Bearer   {token}", f"  Bearer {token}  "]):
        admin.SetTier(
            admin_pb2.SetTierRequest(subject=f"u{n}", tier="pro_alpha"), metadata=[("authorization", value)], timeout=5
        )
    entries = admin.ListAudit(admin_pb2.ListAuditRequest(), metadata=[("authorization", right)], timeout=5).entries
    assert [e.target for e in entries] == ["u3", "u2", "u1", "u0"]
    assert {e.actor for e in entries} == {token_fingerprint(token)}  # the same parsing names the actor


def test_without_a_token_or_insecure_admin_the_admin_service_is_not_served(redis_url: str, tmp_path: Path) -> None:
    server = ServerProcess(redis_url=redis_url, workdir=tmp_path)
    server.admin_token = ""  # --admin-token "" and no --insecure-admin
    server.start()
    try:
        with grpc.insecure_channel(server.target) as ch:
            admin = admin_pb2_grpc.AdminServiceStub(ch)
            for rpc, request_message in ADMIN_CALLS[:3]:
                with pytest.raises(grpc.RpcError) as info:
                    getattr(admin, rpc)(request_message, metadata=[("authorization", "Bearer x")], timeout=5)
                assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED, rpc
            assert ask(quota_pb2_grpc.QuotaServiceStub(ch), subject()).decision == quota_pb2.ALLOW
        assert "admin service: off (no --admin-token or --viewer-token)" in server.log()
    finally:
        server.stop()


def test_insecure_admin_serves_on_loopback_and_records_anonymous(redis_url: str, tmp_path: Path) -> None:
    server = ServerProcess(redis_url=redis_url, workdir=tmp_path, extra_args=("--insecure-admin",))
    server.admin_token = ""
    server.start()
    try:
        with grpc.insecure_channel(server.target) as ch:
            admin = admin_pb2_grpc.AdminServiceStub(ch)
            admin.SetTier(admin_pb2.SetTierRequest(subject="u1", tier="pro_alpha", reason="no token"), timeout=5)
            (entry,) = admin.ListAudit(admin_pb2.ListAuditRequest(), timeout=5).entries
            assert (entry.actor, entry.action, entry.reason) == ("anonymous", "SetTier", "no token")
        assert "admin service: INSECURE" in server.log()
    finally:
        server.stop()


def test_insecure_admin_off_loopback_refuses_to_start(redis_url: str) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "quota_service.cli",
            "serve",
            "--policies",
            str(SHIPPED_POLICIES),
            "--redis-url",
            redis_url,
            "--listen",
            "0.0.0.0:0",
            "--insecure-admin",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done
    assert "--insecure-admin is only allowed on a loopback listen address" in done.stderr
    assert "listening" not in done.stderr + done.stdout
    assert time.monotonic() - started < 30


def test_quota_calls_never_show_one_subject_to_another(quota_server: ServerProcess, channel: grpc.Channel) -> None:
    stub = quota_pb2_grpc.QuotaServiceStub(channel)
    alice, bob = subject(), subject()
    spent = ask(stub, bob, tokens=400)
    stub.Commit(quota_pb2.CommitRequest(reservation_id=spent.reservation_id, usage={"tokens": 400}))
    held = ask(stub, bob, tokens=100)

    usage = stub.GetUsage(quota_pb2.GetUsageRequest(subject=alice), timeout=5)
    assert usage.limits and all(lim.used == 0 and lim.held == 0 for lim in usage.limits)
    bob_usage = stub.GetUsage(quota_pb2.GetUsageRequest(subject=bob), timeout=5)
    assert any(lim.used == 400 and lim.held == 100 for lim in bob_usage.limits)

    # Bob's reservation id with Alice's name in its subject part: not hers, not his, refused.
    nonce = held.reservation_id.rsplit(".", 1)[1]
    encoded = base64.urlsafe_b64encode(alice.encode()).decode().rstrip("=")
    tampered = f"rsv_{encoded}.{nonce}"
    client = redis.Redis.from_url(quota_server.redis_url, decode_responses=True)
    try:
        before = {key: client.hgetall(key) for key in client.keys("q:*")}
        for call in (
            lambda: stub.Commit(quota_pb2.CommitRequest(reservation_id=tampered, usage={"tokens": 1}), timeout=5),
            lambda: stub.Release(quota_pb2.ReleaseRequest(reservation_id=tampered), timeout=5),
            lambda: stub.Release(quota_pb2.ReleaseRequest(reservation_id=held.reservation_id[:-1] + "x"), timeout=5),
            lambda: stub.Release(quota_pb2.ReleaseRequest(reservation_id="rsv_" + "%%%." + nonce), timeout=5),
        ):
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
        assert {key: client.hgetall(key) for key in client.keys("q:*")} == before
        assert client.keys(f"*{{{alice}}}*") == [] or all(
            v in ("0", None) for k in client.keys(f"q:{{{alice}}}:*") for v in client.hgetall(k).values()
        )
    finally:
        client.close()
    # The genuine id still works, once.
    assert not stub.Release(quota_pb2.ReleaseRequest(reservation_id=held.reservation_id), timeout=5).already_settled


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(data_dir=tmp_path / "redis", persistence=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_while_redis_is_down_pro_is_allowed_and_free_is_denied(private_redis: EmbeddedRedis, tmp_path: Path) -> None:
    server = ServerProcess(redis_url=private_redis.url, workdir=tmp_path, extra_args=("--store-timeout", "0.25"))
    server.start()
    try:
        with grpc.insecure_channel(server.target) as ch:
            stub = quota_pb2_grpc.QuotaServiceStub(ch)
            admin = admin_pb2_grpc.AdminServiceStub(ch)
            auth = [("authorization", f"Bearer {server.admin_token}")]
            pro, free = subject(), subject()
            admin.SetTier(admin_pb2.SetTierRequest(subject=pro, tier="pro_alpha"), metadata=auth, timeout=5)
            # The replica learns each subject's tier on its first call (its config cache).
            assert ask(stub, pro).tier == "pro_alpha"
            assert ask(stub, free).tier == "free_alpha"

            private_redis.stop()
            started = time.monotonic()
            allowed = ask(stub, pro)
            assert (allowed.decision, allowed.reason, allowed.tier) == (
                quota_pb2.ALLOW,
                quota_pb2.STORE_UNAVAILABLE,
                "pro_alpha",
            )
            assert not allowed.reservation_id
            denied = ask(stub, free)
            assert (denied.decision, denied.reason) == (quota_pb2.DENY, quota_pb2.STORE_UNAVAILABLE)
            assert denied.retry_after_seconds > 0
            assert time.monotonic() - started < 2.0
    finally:
        server.stop()
    assert "store unavailable" in server.log()


def test_a_viewer_reads_but_cannot_stop_anything(redis_url: str, tmp_path: Path) -> None:
    viewer = "viewer-" + uuid.uuid4().hex
    server = ServerProcess(redis_url=redis_url, workdir=tmp_path, extra_args=("--viewer-token", viewer))
    server.start()
    try:
        with grpc.insecure_channel(server.target) as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            quota = quota_pb2_grpc.QuotaServiceStub(channel)
            as_viewer = (("authorization", f"Bearer {viewer}"),)
            as_admin = (("authorization", f"Bearer {server.admin_token}"),)
            for rpc, request_message in ADMIN_CALLS:
                call = getattr(admin, rpc)
                if rpc in {"GetSubject", "ListStops", "TopUsage", "ListAudit"}:
                    call(request_message, metadata=as_viewer, timeout=5)  # reads are allowed
                    continue
                with pytest.raises(grpc.RpcError) as refused:
                    call(request_message, metadata=as_viewer, timeout=5)
                assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED, rpc
                assert "viewer token may only read" in (refused.value.details() or "")
            # nothing the viewer tried took effect: no stop, no tier change
            assert list(admin.ListStops(admin_pb2.ListStopsRequest(), metadata=as_admin, timeout=5).stops) == []
            assert ask(quota, "u1").decision == quota_pb2.ALLOW
            got = admin.GetSubject(admin_pb2.GetSubjectRequest(subject="u1"), metadata=as_viewer, timeout=5)
            assert got.tier == "free_alpha"
    finally:
        server.stop()
