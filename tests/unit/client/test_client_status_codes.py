"""Which statuses are retried, for both clients: only UNAVAILABLE, and DEADLINE_EXCEEDED for
idempotent calls. INTERNAL (the service hit damaged data, e.g. on a Commit: a bug, not an
outage) and every other refusal is raised at once, whatever the fail mode, and a guard
answered INTERNAL on entering fails closed: the block does not run."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc
import pytest
from fake_quota_service import FakeServer, start_fake

from quota.v1 import quota_pb2
from quota_client import (
    AsyncQuotaClient,
    QuotaAuthError,
    QuotaClient,
    QuotaDenied,
    QuotaRequestError,
    Reason,
    RetryPolicy,
)
from quota_client._wire import idempotent, retryable

pytestmark = pytest.mark.unit

Code = grpc.StatusCode
FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)
# The refusals the service (or gRPC) answers; none may ever be retried.
NEVER_RETRIED = [
    Code.INTERNAL,
    Code.INVALID_ARGUMENT,
    Code.FAILED_PRECONDITION,
    Code.NOT_FOUND,
    Code.PERMISSION_DENIED,
    Code.UNAUTHENTICATED,
    Code.RESOURCE_EXHAUSTED,
]
METHODS = ["CheckAndReserve", "Commit", "Release", "GetUsage"]
FAIL_MODES = ["closed", "open"]


@pytest.fixture(scope="module")
def shared_fake() -> Iterator[FakeServer]:
    running = start_fake()
    yield running
    running.server.stop(None).wait()


@pytest.fixture
def fake(shared_fake: FakeServer) -> FakeServer:
    """One fake server for the whole module (it runs over a hundred short tests), with a
    fresh service state for each test."""
    shared_fake.service.reset()
    return shared_fake


def error_for(code: grpc.StatusCode) -> type[QuotaRequestError]:
    return QuotaAuthError if code in (Code.UNAUTHENTICATED, Code.PERMISSION_DENIED) else QuotaRequestError


# -- the rule itself ------------------------------------------------------------------------


@pytest.mark.parametrize("code", list(Code), ids=lambda c: c.name)
def test_only_unavailable_and_deadline_exceeded_are_ever_retryable(code: grpc.StatusCode) -> None:
    requests = [
        quota_pb2.CheckAndReserveRequest(subject="u1", feature="f", request_id="r1"),
        quota_pb2.CommitRequest(reservation_id="rsv_1"),
        quota_pb2.ReleaseRequest(reservation_id="rsv_1"),
        quota_pb2.GetUsageRequest(subject="u1"),
    ]
    expected = code in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED)
    assert [retryable(code, request) for request in requests] == [expected] * len(requests)


def test_a_timed_out_check_without_a_request_id_is_not_retried() -> None:
    # Both clients always send one; without it a retried attempt could reserve twice.
    anonymous = quota_pb2.CheckAndReserveRequest(subject="u1", feature="f")
    assert not idempotent(anonymous)
    assert not retryable(Code.DEADLINE_EXCEEDED, anonymous)
    assert retryable(Code.UNAVAILABLE, anonymous)


# -- the sync client ------------------------------------------------------------------------


def call_sync(client: QuotaClient, fake: FakeServer, method: str, code: grpc.StatusCode) -> None:
    """Make a reservation (unscripted), then script ``code`` for ``method`` and call it."""
    reservation_id = client.check_and_reserve("u1", "blog_writer", tokens=10).reservation_id
    fake.service.fail_next[method] = [code]
    if method == "CheckAndReserve":
        client.check_and_reserve("u1", "blog_writer", tokens=10)
    elif method == "Commit":
        client.commit(reservation_id, tokens=5)
    elif method == "Release":
        client.release(reservation_id)
    else:
        client.get_usage("u1")


@pytest.mark.parametrize("fail_mode", FAIL_MODES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("code", NEVER_RETRIED, ids=lambda c: c.name)
def test_sync_client_never_retries(fake: FakeServer, code: grpc.StatusCode, method: str, fail_mode: str) -> None:
    before = 1 if method == "CheckAndReserve" else 0  # the unscripted reservation
    with (
        QuotaClient(fake.target, retry=FAST, fail_mode=fail_mode) as client,
        pytest.raises(QuotaRequestError) as raised,
    ):
        call_sync(client, fake, method, code)
    assert type(raised.value) is error_for(code)
    assert raised.value.code is code and raised.value.method == method
    assert len(fake.service.calls_of(method)) == before + 1


def test_sync_guard_answered_internal_fails_closed(fake: FakeServer) -> None:
    fake.service.fail_next["CheckAndReserve"] = [Code.INTERNAL]
    with (
        QuotaClient(fake.target, retry=FAST) as client,
        pytest.raises(QuotaRequestError) as raised,
        client.reserve("u1", "blog_writer", tokens=100),
    ):
        pytest.fail("the block must not run")
    assert raised.value.code is Code.INTERNAL
    assert len(fake.service.calls_of("CheckAndReserve")) == 1 and not fake.service.reservations


def test_sync_guard_answered_internal_does_not_fail_open(fake: FakeServer) -> None:
    # fail_mode="open" is for an unreachable service; INTERNAL is an answer (a server bug).
    fake.service.fail_next["CheckAndReserve"] = [Code.INTERNAL]
    with (
        QuotaClient(fake.target, retry=FAST, fail_mode="open") as client,
        pytest.raises(QuotaRequestError),
        client.reserve("u1", "blog_writer", tokens=100),
    ):
        pytest.fail("the block must not run")


def test_sync_commit_answered_internal_is_raised_once_and_never_releases(fake: FakeServer) -> None:
    with QuotaClient(fake.target, retry=FAST) as client:
        with pytest.raises(QuotaRequestError) as raised, client.reserve("u1", "blog_writer", tokens=100) as r:
            fake.service.fail_next["Commit"] = [Code.INTERNAL, Code.INTERNAL]
            r.commit(tokens=90)
        assert raised.value.code is Code.INTERNAL and r.state == "unsettled"
    assert len(fake.service.calls_of("Commit")) == 1 and not fake.service.calls_of("Release")
    assert fake.service.held["u1"] == 100  # left for the service to settle at its estimate


def test_sync_auto_commit_answered_internal_is_logged_once(fake: FakeServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="quota_client")
    with QuotaClient(fake.target, retry=FAST) as client, client.reserve("u1", "blog_writer", tokens=100) as r:
        fake.service.fail_next["Commit"] = [Code.INTERNAL, Code.INTERNAL]
    assert r.state == "unsettled"
    assert len(fake.service.calls_of("Commit")) == 1 and not fake.service.calls_of("Release")
    assert any("automatic commit" in rec.getMessage() and "INTERNAL" in rec.getMessage() for rec in caplog.records)


@pytest.mark.parametrize("fail_mode", FAIL_MODES)
def test_sync_guard_denied_for_damaged_data_raises_store_error(fake: FakeServer, fail_mode: str) -> None:
    fake.service.answers["job-1"] = quota_pb2.CheckAndReserveResponse(
        decision=quota_pb2.DENY, reason=quota_pb2.STORE_ERROR, message="damaged counter"
    )
    with (
        QuotaClient(fake.target, fail_mode=fail_mode) as client,
        pytest.raises(QuotaDenied) as denied,
        client.reserve("u1", "blog_writer", tokens=100, request_id="job-1"),
    ):
        pytest.fail("the block must not run")
    assert denied.value.reason is Reason.STORE_ERROR


def test_every_reason_of_the_service_has_a_client_reason() -> None:
    names = {name for name, _ in quota_pb2.Reason.items() if name != "REASON_UNSPECIFIED"}
    assert names <= {reason.value for reason in Reason}


# -- the async client -----------------------------------------------------------------------


async def call_async(client: AsyncQuotaClient, fake: FakeServer, method: str, code: grpc.StatusCode) -> None:
    reservation_id = (await client.check_and_reserve("u1", "blog_writer", tokens=10)).reservation_id
    fake.service.fail_next[method] = [code]
    if method == "CheckAndReserve":
        await client.check_and_reserve("u1", "blog_writer", tokens=10)
    elif method == "Commit":
        await client.commit(reservation_id, tokens=5)
    elif method == "Release":
        await client.release(reservation_id)
    else:
        await client.get_usage("u1")


@pytest.mark.parametrize("fail_mode", FAIL_MODES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("code", NEVER_RETRIED, ids=lambda c: c.name)
async def test_async_client_never_retries(fake: FakeServer, code: grpc.StatusCode, method: str, fail_mode: str) -> None:
    before = 1 if method == "CheckAndReserve" else 0
    async with AsyncQuotaClient(fake.target, retry=FAST, fail_mode=fail_mode) as client:
        with pytest.raises(QuotaRequestError) as raised:
            await call_async(client, fake, method, code)
    assert type(raised.value) is error_for(code)
    assert raised.value.code is code and raised.value.method == method
    assert len(fake.service.calls_of(method)) == before + 1


@pytest.mark.parametrize("fail_mode", FAIL_MODES)
async def test_async_guard_answered_internal_fails_closed(fake: FakeServer, fail_mode: str) -> None:
    fake.service.fail_next["CheckAndReserve"] = [Code.INTERNAL]
    async with AsyncQuotaClient(fake.target, retry=FAST, fail_mode=fail_mode) as client:
        with pytest.raises(QuotaRequestError) as raised:
            async with client.reserve("u1", "blog_writer", tokens=100):
                pytest.fail("the block must not run")
    assert raised.value.code is Code.INTERNAL
    assert len(fake.service.calls_of("CheckAndReserve")) == 1 and not fake.service.reservations


async def test_async_commit_answered_internal_is_raised_once_and_never_releases(fake: FakeServer) -> None:
    async with AsyncQuotaClient(fake.target, retry=FAST) as client:
        with pytest.raises(QuotaRequestError) as raised:
            async with client.reserve("u1", "blog_writer", tokens=100) as r:
                fake.service.fail_next["Commit"] = [Code.INTERNAL, Code.INTERNAL]
                await r.commit(tokens=90)
        assert raised.value.code is Code.INTERNAL and r.state == "unsettled"
    assert len(fake.service.calls_of("Commit")) == 1 and not fake.service.calls_of("Release")
    assert fake.service.held["u1"] == 100


async def test_async_auto_commit_answered_internal_is_logged_once(
    fake: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="quota_client")
    async with (
        AsyncQuotaClient(fake.target, retry=FAST) as client,
        client.reserve("u1", "blog_writer", tokens=100) as r,
    ):
        fake.service.fail_next["Commit"] = [Code.INTERNAL, Code.INTERNAL]
    assert r.state == "unsettled"
    assert len(fake.service.calls_of("Commit")) == 1 and not fake.service.calls_of("Release")
    assert any("automatic commit" in rec.getMessage() and "INTERNAL" in rec.getMessage() for rec in caplog.records)


async def test_async_guard_denied_for_damaged_data_raises_store_error(fake: FakeServer) -> None:
    fake.service.answers["job-1"] = quota_pb2.CheckAndReserveResponse(
        decision=quota_pb2.DENY, reason=quota_pb2.STORE_ERROR, message="damaged counter"
    )
    async with AsyncQuotaClient(fake.target) as client:
        with pytest.raises(QuotaDenied) as denied:
            async with client.reserve("u1", "blog_writer", tokens=100, request_id="job-1"):
                pytest.fail("the block must not run")
    assert denied.value.reason is Reason.STORE_ERROR
