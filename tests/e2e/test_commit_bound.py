"""One buggy Commit cannot lock out the company (issue 12 #5), and a Commit says which
windows it settled (issue 7 #9), through the real server."""

from __future__ import annotations

import grpc
import pytest
import redis
from support.server_process import ServerProcess

from quota.v1 import quota_pb2, quota_pb2_grpc

pytestmark = pytest.mark.e2e


def reserve(stub: quota_pb2_grpc.QuotaServiceStub, subject: str, tokens: float) -> quota_pb2.CheckAndReserveResponse:
    return stub.CheckAndReserve(
        quota_pb2.CheckAndReserveRequest(
            subject=subject, feature="blog_writer", provider="openai", model="gpt-4o-mini", usage={"tokens": tokens}
        ),
        timeout=5,
    )


def global_cost(client: redis.Redis) -> dict[str, str]:
    (key,) = client.keys("q:{__global__}:cost_usd:day:*")
    return client.hgetall(key)  # type: ignore[return-value]


def test_a_commit_far_past_its_estimate_is_refused_for_review(quota_server: ServerProcess, redis_url: str) -> None:
    with (
        grpc.insecure_channel(quota_server.target) as channel,
        redis.Redis.from_url(redis_url, decode_responses=True) as raw,
    ):
        stub = quota_pb2_grpc.QuotaServiceStub(channel)
        answer = reserve(stub, "buggy", 1)
        assert answer.decision == quota_pb2.ALLOW
        before = global_cost(raw)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Commit(
                quota_pb2.CommitRequest(reservation_id=answer.reservation_id, usage={"tokens": 9e12}), timeout=5
            )
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "more than 10x the estimate" in (refused.value.details() or "")
        assert global_cost(raw) == before  # nothing charged to the company
        assert "commit refused for review" in quota_server.log()
        # Everyone else goes on; the reservation is still there for the real figure.
        assert reserve(stub, "bystander", 10).decision == quota_pb2.ALLOW
        ok = stub.Commit(quota_pb2.CommitRequest(reservation_id=answer.reservation_id, usage={"tokens": 10}), timeout=5)
        assert not ok.already_settled  # 10x the estimate is the bound, and allowed


def test_a_commit_reports_the_windows_it_settled(quota_server: ServerProcess) -> None:
    with grpc.insecure_channel(quota_server.target) as channel:
        stub = quota_pb2_grpc.QuotaServiceStub(channel)
        answer = reserve(stub, "settler", 400)
        done = stub.Commit(
            quota_pb2.CommitRequest(reservation_id=answer.reservation_id, usage={"tokens": 350}), timeout=5
        )
        windows = {(w.metric, w.window, w.company_wide): w for w in done.settled}
        day = windows[("tokens", "day", False)]
        assert (day.amount, day.current, day.lost) == (350.0, True, False)
        assert day.window_start < day.resets_at
        assert windows[("cost_usd", "month", False)].amount == pytest.approx(0.00021)  # 350 x $0.0000006
        assert windows[("cost_usd", "day", True)].amount == pytest.approx(0.00021)  # the company-wide cap
