"""QuotaService end to end: the real server process, the shipped alpha.yaml, real Redis,
through the generated stubs."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import grpc
import pytest
import redis
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support.server_process import ServerProcess

from quota.v1 import admin_pb2, admin_pb2_grpc, quota_pb2, quota_pb2_grpc
from quota_service.store.embedded import EmbeddedRedis

pytestmark = pytest.mark.e2e


def subject() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


def ask(stub: quota_pb2_grpc.QuotaServiceStub, who: str, **kwargs: object) -> quota_pb2.CheckAndReserveResponse:
    usage = kwargs.pop("usage", {"tokens": 10})
    fields: dict[str, object] = {
        "subject": who,
        "feature": "blog_writer",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "usage": usage,
    }
    fields.update(kwargs)
    return stub.CheckAndReserve(quota_pb2.CheckAndReserveRequest(**fields), timeout=5)  # type: ignore[arg-type]


def counter(redis_url: str, who: str, metric: str = "tokens", window_id: str | None = None) -> tuple[int, int]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        keys = client.keys(f"q:{{{who}}}:{metric}:day:*")
        assert len(keys) == 1, keys
        values = client.hgetall(keys[0])
        return int(values.get("used", 0)), int(values.get("held", 0))
    finally:
        client.close()


def test_200_concurrent_requests_grant_exactly_95(quota_server: ServerProcess) -> None:
    who = subject()

    async def burst() -> list[quota_pb2.CheckAndReserveResponse]:
        async with grpc.aio.insecure_channel(quota_server.target) as channel:
            stub = quota_pb2_grpc.QuotaServiceStub(channel)
            request = quota_pb2.CheckAndReserveRequest(
                subject=who, feature="blog_writer", provider="openai", model="gpt-4o-mini", usage={"tokens": 10}
            )
            return list(await asyncio.gather(*(stub.CheckAndReserve(request, timeout=30) for _ in range(200))))

    answers = asyncio.run(burst())
    granted = [a for a in answers if a.decision in (quota_pb2.ALLOW, quota_pb2.WARN)]
    denied = [a for a in answers if a.decision == quota_pb2.DENY]
    assert len(granted) == 95 and len(denied) == 105
    assert len({a.reservation_id for a in granted}) == 95 and all(a.reservation_id for a in granted)
    assert all(not a.reservation_id for a in denied)
    assert {a.reason for a in denied} == {quota_pb2.BLOCK_THRESHOLD}
    assert counter(quota_server.redis_url, who) == (0, 950)
    # 80 % of 1,000 is reached by the 80th grant: grants 80..95 warn.
    assert sum(a.decision == quota_pb2.WARN for a in granted) == 16


def test_allow_warn_deny_commit_release_through_the_stub(quota_server: ServerProcess, channel: grpc.Channel) -> None:
    stub = quota_pb2_grpc.QuotaServiceStub(channel)
    who = subject()
    first = ask(stub, who, usage={"tokens": 500})
    assert (first.decision, first.reason, first.tier) == (quota_pb2.ALLOW, quota_pb2.WITHIN_LIMITS, "free_alpha")
    assert first.policy_version and first.reservation_expires_at > time.time()
    tokens_day = next(
        limit for limit in first.limits if limit.metric == "tokens" and limit.kind == quota_pb2.LIMIT_KIND_TIER
    )
    assert (tokens_day.held, tokens_day.max, tokens_day.remaining) == (500, 1000, 500)

    # Commit below the estimate refunds the difference.
    committed = stub.Commit(quota_pb2.CommitRequest(reservation_id=first.reservation_id, usage={"tokens": 300}))
    assert not committed.already_settled
    assert counter(quota_server.redis_url, who) == (300, 0)
    again = stub.Commit(quota_pb2.CommitRequest(reservation_id=first.reservation_id, usage={"tokens": 999}))
    assert again.already_settled and counter(quota_server.redis_url, who) == (300, 0)

    warn = ask(stub, who, usage={"tokens": 500})  # projected 800 = 80 %
    assert (warn.decision, warn.reason) == (quota_pb2.WARN, quota_pb2.WARN_THRESHOLD)
    assert warn.limit.metric == "tokens" and warn.limit.window == "day"
    # Commit above the estimate charges the overshoot.
    stub.Commit(quota_pb2.CommitRequest(reservation_id=warn.reservation_id, usage={"tokens": 650}))
    assert counter(quota_server.redis_url, who) == (950, 0)

    deny = ask(stub, who, usage={"tokens": 1})
    assert (deny.decision, deny.reason) == (quota_pb2.DENY, quota_pb2.BLOCK_THRESHOLD)
    assert deny.limit.metric == "tokens" and deny.retry_after_seconds > 0 and not deny.reservation_id
    assert "tokens" in deny.message

    other = subject()
    held = ask(stub, other, usage={"tokens": 100})
    released = stub.Release(quota_pb2.ReleaseRequest(reservation_id=held.reservation_id))
    assert not released.already_settled and counter(quota_server.redis_url, other) == (0, 0)
    assert stub.Release(quota_pb2.ReleaseRequest(reservation_id=held.reservation_id)).already_settled

    usage = stub.GetUsage(quota_pb2.GetUsageRequest(subject=who))
    assert usage.tier == "free_alpha"
    day = next(limit for limit in usage.limits if limit.metric == "tokens" and limit.kind == quota_pb2.LIMIT_KIND_TIER)
    assert (day.used, day.held, day.decision) == (950, 0, quota_pb2.DENY)


def test_cost_is_counted_exactly(quota_server: ServerProcess, channel: grpc.Channel) -> None:
    stub = quota_pb2_grpc.QuotaServiceStub(channel)
    who = subject()
    # Stability images at $0.04 each (alpha.yaml); the tier allows 5 images a day.
    for _ in range(5):
        answer = ask(stub, who, provider="stability", model="sdxl", usage={"images": 1})
        assert answer.decision in (quota_pb2.ALLOW, quota_pb2.WARN), answer
        stub.Commit(quota_pb2.CommitRequest(reservation_id=answer.reservation_id, usage={"images": 1}))
    usage = stub.GetUsage(quota_pb2.GetUsageRequest(subject=who))
    cost_month = next(limit for limit in usage.limits if limit.metric == "cost_usd" and limit.window == "month")
    assert cost_month.used == 0.2
    client = redis.Redis.from_url(quota_server.redis_url, decode_responses=True)
    (key,) = client.keys(f"q:{{{who}}}:cost_usd:month:*")
    assert client.hget(key, "used") == "200000"  # micro-dollars, exact
    client.close()


def test_same_request_id_five_times_concurrently_counts_once(quota_server: ServerProcess) -> None:
    who = subject()

    async def repeat() -> list[quota_pb2.CheckAndReserveResponse]:
        async with grpc.aio.insecure_channel(quota_server.target) as channel:
            stub = quota_pb2_grpc.QuotaServiceStub(channel)
            request = quota_pb2.CheckAndReserveRequest(
                subject=who,
                feature="blog_writer",
                provider="openai",
                model="gpt-4o-mini",
                usage={"tokens": 40},
                request_id="req-42",
            )
            return list(await asyncio.gather(*(stub.CheckAndReserve(request, timeout=10) for _ in range(5))))

    answers = asyncio.run(repeat())
    assert len({a.reservation_id for a in answers}) == 1
    assert {a.decision for a in answers} == {quota_pb2.ALLOW}
    assert sum(a.replayed for a in answers) == 4
    assert counter(quota_server.redis_url, who) == (0, 40)


def test_early_denials(quota_server: ServerProcess, channel: grpc.Channel) -> None:
    stub = quota_pb2_grpc.QuotaServiceStub(channel)
    feature = ask(stub, subject(), feature="seo_analysis")
    assert (feature.decision, feature.reason) == (quota_pb2.DENY, quota_pb2.FEATURE_NOT_ALLOWED)
    dry = ask(stub, (who := subject()), dry_run=True)
    assert dry.decision == quota_pb2.ALLOW and not dry.reservation_id
    client = redis.Redis.from_url(quota_server.redis_url)
    assert client.keys(f"q:{{{who}}}:*") == [] or all(
        int(v) == 0 for k in client.keys(f"q:{{{who}}}:*") for v in client.hgetall(k).values()
    )
    client.close()


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"subject": ""}, "subject is required"),
        ({"feature": ""}, "feature is required"),
        ({"usage": {"tokens": -5}}, "must not be negative"),
        ({"usage": {"tokens": float("nan")}}, "finite"),
        ({"usage": {"tokens": float("inf")}}, "finite"),
        ({"usage": {"Bad Metric": 1}}, "metric name"),
        ({"usage": {"cost_usd": 1}}, "derived"),
        ({"usage": {}}, "at least one metric"),
        ({"subject": "has space"}, "subject"),
        ({"reservation_ttl_seconds": 10_000_000}, "reservation_ttl_seconds"),
    ],
)
def test_invalid_requests_get_invalid_argument_and_count_nothing(
    quota_server: ServerProcess, channel: grpc.Channel, fields: dict[str, object], fragment: str
) -> None:
    stub = quota_pb2_grpc.QuotaServiceStub(channel)
    who = subject()
    fields = dict(fields)
    target = str(fields.pop("subject", who))
    with pytest.raises(grpc.RpcError) as info:
        ask(stub, target, **fields)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (info.value.details() or "")
    client = redis.Redis.from_url(quota_server.redis_url)
    assert client.keys(f"*{{{who}}}*") == []
    client.close()


@pytest.mark.parametrize(
    ("rpc", "request_message", "code"),
    [
        ("Commit", quota_pb2.CommitRequest(reservation_id=""), grpc.StatusCode.INVALID_ARGUMENT),
        ("Commit", quota_pb2.CommitRequest(reservation_id="nonsense"), grpc.StatusCode.INVALID_ARGUMENT),
        (
            "Commit",
            quota_pb2.CommitRequest(reservation_id="rsv_dXNlcg." + "0" * 32, usage={"tokens": 1}),
            grpc.StatusCode.NOT_FOUND,
        ),
        ("Release", quota_pb2.ReleaseRequest(reservation_id="rsv_!!." + "0" * 32), grpc.StatusCode.INVALID_ARGUMENT),
        ("GetUsage", quota_pb2.GetUsageRequest(subject=""), grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_bad_settlements_are_refused(
    channel: grpc.Channel, rpc: str, request_message: object, code: grpc.StatusCode
) -> None:
    stub = quota_pb2_grpc.QuotaServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, rpc)(request_message, timeout=5)
    assert info.value.code() == code


def test_commit_of_an_unreserved_metric_is_refused_and_changes_nothing(
    quota_server: ServerProcess, channel: grpc.Channel
) -> None:
    stub = quota_pb2_grpc.QuotaServiceStub(channel)
    who = subject()
    answer = ask(stub, who, usage={"tokens": 10})
    with pytest.raises(grpc.RpcError) as info:
        stub.Commit(quota_pb2.CommitRequest(reservation_id=answer.reservation_id, usage={"images": 1}))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert counter(quota_server.redis_url, who) == (0, 10)


def test_health_reflection_admin_auth_and_startup_log(quota_server: ServerProcess, channel: grpc.Channel) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"quota.v1.QuotaService", "quota.v1.AdminService", "grpc.health.v1.Health"} <= names

    admin = admin_pb2_grpc.AdminServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        admin.GetPolicyStatus(admin_pb2.GetPolicyStatusRequest())
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as info:
        admin.GetPolicyStatus(admin_pb2.GetPolicyStatusRequest(), metadata=[("authorization", "Bearer wrong")])
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    status = admin.GetPolicyStatus(
        admin_pb2.GetPolicyStatusRequest(), metadata=[("authorization", f"Bearer {quota_server.admin_token}")]
    ).status
    assert status.default_tier == "free_alpha"
    assert set(status.tiers) == {"free_alpha", "basic_alpha", "pro_alpha"}
    assert status.files and status.files[0].endswith("alpha.yaml") and not status.last_error

    log = quota_server.log()
    assert f"listening on 127.0.0.1:{quota_server.port}" in log
    assert f"policy version {status.version}" in log
    assert "store: redis://" in log
    assert quota_server.stop() == 0
    assert "stopped" in quota_server.log()


def test_redis_outage_answers_store_unavailable_within_the_deadline_and_recovers(tmp_path: Path) -> None:
    with EmbeddedRedis(data_dir=tmp_path / "redis", persistence=True) as store_redis:
        server = ServerProcess(redis_url=store_redis.url, workdir=tmp_path, extra_args=("--store-timeout", "0.25"))
        server.start()
        try:
            with grpc.insecure_channel(server.target) as ch:
                stub = quota_pb2_grpc.QuotaServiceStub(ch)
                who = subject()
                before = ask(stub, who, usage={"tokens": 100})
                stub.Commit(quota_pb2.CommitRequest(reservation_id=before.reservation_id, usage={"tokens": 100}))
                open_one = ask(stub, who, usage={"tokens": 50})

                store_redis.stop()
                started = time.monotonic()
                down = ask(stub, who, usage={"tokens": 10})
                elapsed = time.monotonic() - started
                assert (down.decision, down.reason) == (quota_pb2.DENY, quota_pb2.STORE_UNAVAILABLE)
                assert elapsed < 2.0, elapsed
                with pytest.raises(grpc.RpcError) as info:
                    stub.Commit(quota_pb2.CommitRequest(reservation_id=open_one.reservation_id, usage={"tokens": 50}))
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE

                store_redis.restart()
                deadline = time.monotonic() + 10
                while True:
                    answer = ask(stub, who, usage={"tokens": 10})
                    if answer.reason != quota_pb2.STORE_UNAVAILABLE or time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
                assert answer.decision == quota_pb2.ALLOW
                # The retried commit lands; nothing was lost across the outage.
                stub.Commit(quota_pb2.CommitRequest(reservation_id=open_one.reservation_id, usage={"tokens": 50}))
                assert counter(store_redis.url, who) == (150, 10)
        finally:
            server.stop()
