"""Retries, request_id reuse and fail modes against the in-process fake and a dead port."""

from __future__ import annotations

import logging
import time

import grpc
import pytest
from fake_quota_service import FakeServer

from quota_client import (
    Decision,
    QuotaAuthError,
    QuotaClient,
    QuotaRequestError,
    QuotaUnavailable,
    RetryPolicy,
)

pytestmark = pytest.mark.unit

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)


def test_unavailable_is_retried_with_the_same_request_id(fake: FakeServer) -> None:
    fake.service.fail_next["CheckAndReserve"] = [UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED]
    with QuotaClient(fake.target, retry=FAST) as client:
        result = client.check_and_reserve("u1", "blog_writer", tokens=100)
    requests = fake.service.calls_of("CheckAndReserve")
    assert len(requests) == 3
    assert {r.request_id for r in requests} == {result.request_id}
    assert result.decision is Decision.ALLOW and fake.service.held["u1"] == 100


def test_a_lost_response_is_replayed_and_counted_once(fake: FakeServer) -> None:
    fake.service.drop_after_reserve = 1
    with QuotaClient(fake.target, retry=FAST) as client, client.reserve("u1", "blog_writer", tokens=100) as r:
        assert r.result.replayed
        r.commit(tokens=70)
    assert len(fake.service.calls_of("CheckAndReserve")) == 2
    assert (fake.service.used["u1"], fake.service.held["u1"]) == (70, 0)
    assert len(fake.service.reservations) == 1


def test_a_timed_out_attempt_is_retried_and_counted_once(fake: FakeServer) -> None:
    fake.service.delay_after_reserve = 0.5
    with QuotaClient(fake.target, attempt_timeout=0.15, deadline=2.0, retry=FAST) as client:
        result = client.check_and_reserve("u1", "blog_writer", tokens=100)
    assert result.replayed and len(fake.service.reservations) == 1 and fake.service.held["u1"] == 100


def test_commit_and_release_are_retried(fake: FakeServer) -> None:
    with QuotaClient(fake.target, retry=FAST) as client:
        first = client.check_and_reserve("u1", "blog_writer", tokens=100)
        second = client.check_and_reserve("u1", "blog_writer", tokens=100)
        fake.service.fail_next["Commit"] = [UNAVAILABLE]
        fake.service.fail_next["Release"] = [UNAVAILABLE, UNAVAILABLE]
        assert not client.commit(first.reservation_id, tokens=10).already_settled
        assert not client.release(second.reservation_id).already_settled
    assert len(fake.service.calls_of("Commit")) == 2 and len(fake.service.calls_of("Release")) == 3
    assert (fake.service.used["u1"], fake.service.held["u1"]) == (10, 0)


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, QuotaRequestError),
        (grpc.StatusCode.FAILED_PRECONDITION, QuotaRequestError),
        (grpc.StatusCode.INTERNAL, QuotaRequestError),
        (grpc.StatusCode.UNAUTHENTICATED, QuotaAuthError),
        (grpc.StatusCode.PERMISSION_DENIED, QuotaAuthError),
    ],
)
def test_other_statuses_are_never_retried(
    fake: FakeServer, code: grpc.StatusCode, error: type[QuotaRequestError]
) -> None:
    fake.service.fail_next["CheckAndReserve"] = [code]
    with QuotaClient(fake.target, retry=FAST, fail_mode="open") as client, pytest.raises(error) as raised:
        client.check_and_reserve("u1", "blog_writer", tokens=1)
    assert raised.value.code is code
    assert len(fake.service.calls_of("CheckAndReserve")) == 1


def test_retries_give_up_after_max_attempts(fake: FakeServer) -> None:
    fake.service.fail_next["CheckAndReserve"] = [UNAVAILABLE] * 10
    with (
        QuotaClient(fake.target, retry=RetryPolicy(max_attempts=3, initial_backoff=0.01)) as client,
        pytest.raises(QuotaUnavailable) as raised,
    ):
        client.check_and_reserve("u1", "blog_writer", tokens=1)
    assert raised.value.attempts == 3 and raised.value.code is UNAVAILABLE
    assert len(fake.service.calls_of("CheckAndReserve")) == 3


def test_fail_closed_raises_within_the_deadline(dead_target: str) -> None:
    with QuotaClient(dead_target, deadline=0.5) as client:
        started = time.monotonic()
        with pytest.raises(QuotaUnavailable) as raised, client.reserve("u1", "blog_writer", tokens=1):
            pytest.fail("the block must not run")
        elapsed = time.monotonic() - started
    assert elapsed < 0.5 + 0.4
    assert raised.value.attempts >= 2 and raised.value.elapsed <= 0.5 + 0.05


def test_a_hanging_service_fails_closed_within_the_deadline(fake: FakeServer) -> None:
    fake.service.delay_after_reserve = 3.0
    with QuotaClient(fake.target, deadline=0.4, attempt_timeout=1.0) as client:
        started = time.monotonic()
        with pytest.raises(QuotaUnavailable) as raised:
            client.check_and_reserve("u1", "blog_writer", tokens=1)
        elapsed = time.monotonic() - started
    assert raised.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0.35 < elapsed < 0.9  # the deadline, plus scheduling noise on a busy machine


def test_fail_open_proceeds_unverified_and_logs(dead_target: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="quota_client")
    with QuotaClient(dead_target, deadline=0.3, fail_mode="open") as client:
        with client.reserve("u1", "blog_writer", tokens=40) as r:
            assert r.unverified and r.decision is Decision.ALLOW and r.reservation_id == ""
            committed = r.commit(tokens=33)
        assert committed.unverified and r.state == "committed"
        with pytest.raises(RuntimeError), client.reserve("u1", "blog_writer", tokens=40) as r2:
            raise RuntimeError("provider failed")
        assert r2.state == "released" and r2.release_result is not None and r2.release_result.unverified
        assert client.commit("rsv_x", tokens=1).unverified
        assert client.release("rsv_x").unverified
        with pytest.raises(QuotaUnavailable):  # read-only: no fail-open answer to make up
            client.get_usage("u1")
    messages = [rec.getMessage() for rec in caplog.records]
    assert any("UNVERIFIED" in m and "subject=u1" in m for m in messages)
    assert any("unverified commit not recorded" in m and "'tokens': 33.0" in m for m in messages)
    assert any("unverified release not recorded" in m for m in messages)


def test_commit_failing_closed_is_raised_and_never_releases(fake: FakeServer) -> None:
    with QuotaClient(fake.target, retry=RetryPolicy(max_attempts=2, initial_backoff=0.01)) as client:
        with pytest.raises(QuotaUnavailable), client.reserve("u1", "blog_writer", tokens=100) as r:
            fake.service.fail_next["Commit"] = [UNAVAILABLE] * 2
            r.commit(tokens=90)
        assert r.state == "unsettled"
    assert not fake.service.calls_of("Release")
    assert fake.service.held["u1"] == 100  # left for the service to settle at its estimate


def test_auto_commit_failure_is_logged_not_raised(fake: FakeServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="quota_client")
    with (
        QuotaClient(fake.target, retry=RetryPolicy.never()) as client,
        client.reserve("u1", "blog_writer", tokens=100) as r,
    ):
        fake.service.fail_next["Commit"] = [UNAVAILABLE]
    assert r.state == "unsettled"
    assert any("automatic commit" in rec.getMessage() for rec in caplog.records)


def test_metadata_and_auth_token_are_sent_on_every_attempt(fake: FakeServer) -> None:
    fake.service.fail_next["CheckAndReserve"] = [UNAVAILABLE]
    with QuotaClient(fake.target, retry=FAST, auth_token="tok", metadata={"x-caller": "blog"}) as client:
        client.check_and_reserve("u1", "blog_writer", tokens=1)
    sent = [md for name, _, md in fake.service.calls if name == "CheckAndReserve"]
    assert len(sent) == 2
    assert all(md["authorization"] == "Bearer tok" and md["x-caller"] == "blog" for md in sent)


def test_caller_request_id_is_used(fake: FakeServer) -> None:
    with QuotaClient(fake.target) as client:
        first = client.check_and_reserve("u1", "blog_writer", tokens=100, request_id="job-42")
        again = client.check_and_reserve("u1", "blog_writer", tokens=100, request_id="job-42")
    assert first.request_id == "job-42" and again.replayed
    assert again.reservation_id == first.reservation_id and fake.service.held["u1"] == 100
