"""The asyncio client against the in-process fake service: guard, retries, fail modes."""

from __future__ import annotations

import logging
import time

import grpc
import pytest
from fake_quota_service import FakeServer

from quota_client import (
    AsyncQuotaClient,
    Decision,
    QuotaDenied,
    QuotaRequestError,
    QuotaUnavailable,
    QuotaUsageError,
    QuotaWarning,
    RetryPolicy,
)

pytestmark = pytest.mark.unit

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)


async def test_async_guard_commits_releases_and_auto_commits(fake: FakeServer) -> None:
    async with AsyncQuotaClient(fake.target) as client:
        async with client.reserve("u1", "blog_writer", tokens=300) as r:
            assert r.decision is Decision.ALLOW and fake.service.held["u1"] == 300
            await r.commit(tokens=120)
        with pytest.raises(KeyError):
            async with client.reserve("u1", "blog_writer", tokens=300):
                raise KeyError("boom")
        async with client.reserve("u1", "blog_writer", tokens=30):
            pass
        usage = await client.get_usage("u1")
    assert (fake.service.used["u1"], fake.service.held["u1"]) == (150, 0)
    status = usage.limit("tokens", "day")
    assert status is not None and status.used == 150
    assert client.closed


async def test_async_deny_warn_and_hooks(fake: FakeServer) -> None:
    sync_seen: list[QuotaWarning] = []
    async_seen: list[QuotaWarning] = []

    async def async_hook(warning: QuotaWarning) -> None:
        async_seen.append(warning)

    async with AsyncQuotaClient(fake.target, on_warning=sync_seen.append) as client:
        async with client.reserve("u1", "blog_writer", tokens=820) as r:
            assert r.warning is not None and r.decision is Decision.WARN
        async with client.reserve("u2", "blog_writer", tokens=820, on_warning=async_hook):
            pass
        with pytest.raises(QuotaDenied) as denied:
            async with client.reserve("u1", "blog_writer", tokens=500):
                pytest.fail("the block must not run")
    assert len(sync_seen) == 1 and len(async_seen) == 1
    assert denied.value.limit is not None and denied.value.limit.max == 1000


async def test_async_failing_hook_releases(fake: FakeServer) -> None:
    async def hook(warning: QuotaWarning) -> None:
        raise RuntimeError("push notification failed")

    async with AsyncQuotaClient(fake.target, on_warning=hook) as client:
        with pytest.raises(RuntimeError):
            async with client.reserve("u1", "blog_writer", tokens=900):
                pytest.fail("the block must not run")
    assert fake.service.held["u1"] == 0


async def test_async_require_commit_and_double_commit(fake: FakeServer) -> None:
    async with AsyncQuotaClient(fake.target, require_commit=True) as client:
        with pytest.raises(QuotaUsageError):
            async with client.reserve("u1", "blog_writer", tokens=10):
                pass
        async with client.reserve("u1", "blog_writer", tokens=10) as r:
            await r.commit()
            with pytest.raises(QuotaUsageError):
                await r.commit()
    assert fake.service.used["u1"] == 20


async def test_async_retries_reuse_the_request_id(fake: FakeServer) -> None:
    fake.service.fail_next["CheckAndReserve"] = [grpc.StatusCode.UNAVAILABLE]
    fake.service.drop_after_reserve = 1
    async with AsyncQuotaClient(fake.target, retry=FAST) as client:
        result = await client.check_and_reserve("u1", "blog_writer", tokens=100)
    requests = fake.service.calls_of("CheckAndReserve")
    assert len(requests) == 3 and {r.request_id for r in requests} == {result.request_id}
    assert result.replayed and fake.service.held["u1"] == 100


async def test_async_request_errors_are_not_retried(fake: FakeServer) -> None:
    async with AsyncQuotaClient(fake.target, retry=FAST) as client:
        with pytest.raises(QuotaRequestError):
            await client.commit("rsv_missing", tokens=1)
    assert len(fake.service.calls_of("Commit")) == 1


async def test_async_fail_closed_within_the_deadline(dead_target: str) -> None:
    async with AsyncQuotaClient(dead_target, deadline=0.5) as client:
        started = time.monotonic()
        with pytest.raises(QuotaUnavailable):
            async with client.reserve("u1", "blog_writer", tokens=1):
                pytest.fail("the block must not run")
        assert time.monotonic() - started < 0.5 + 0.4


async def test_async_fail_open_is_unverified(dead_target: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="quota_client")
    async with (
        AsyncQuotaClient(dead_target, deadline=0.3, fail_mode="open") as client,
        client.reserve("u1", "blog_writer", tokens=10) as r,
    ):
        assert r.unverified
        assert (await r.commit(tokens=9)).unverified
    assert any("unverified commit not recorded" in rec.getMessage() for rec in caplog.records)


async def test_async_decorator(fake: FakeServer) -> None:
    async with AsyncQuotaClient(fake.target) as client:

        @client.guard("blog_writer", subject="user", estimate=lambda user, n: {"tokens": n})
        async def work(user: str, n: int) -> int:
            return n

        assert await work("u5", 40) == 40
        with pytest.raises(TypeError, match="async def"):
            client.guard("blog_writer", tokens=1)(lambda subject: None)
    assert fake.service.used["u5"] == 40
