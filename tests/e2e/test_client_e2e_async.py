"""The asyncio client against the real server: the same guarantees as the sync client."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis
from support.server_process import ServerProcess

from quota_client import AsyncQuotaClient, Decision, QuotaDenied, QuotaUnavailable, QuotaWarning, Reason

pytestmark = pytest.mark.e2e

CHAT = {"provider": "openai", "model": "gpt-4o-mini"}


def new_subject() -> str:
    return f"e2e-aclient-{uuid.uuid4().hex[:12]}"


def counter(redis_url: str, subject: str, metric: str = "tokens", window: str = "day") -> tuple[int, int]:
    """``(used, held)`` of the subject's counter (``q:{subject}:<metric>:<window>:<id>``)."""
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        keys = list(r.scan_iter(match=f"q:{{{subject}}}:{metric}:{window}:*"))
        if not keys:
            return 0, 0
        assert len(keys) == 1, keys
        fields = r.hgetall(keys[0])
    return int(float(fields.get("used", 0))), int(float(fields.get("held", 0)))


async def test_async_reserve_commit_release(quota_server: ServerProcess) -> None:
    subject = new_subject()
    async with AsyncQuotaClient(quota_server.target, deadline=5.0, attempt_timeout=2.0) as client:
        async with client.reserve(subject, "blog_writer", tokens=300, **CHAT) as r:
            assert r.decision is Decision.ALLOW and r.reservation_id
            assert counter(quota_server.redis_url, subject) == (0, 300)
            await r.commit(tokens=123)
        assert counter(quota_server.redis_url, subject) == (123, 0)

        with pytest.raises(ConnectionError):
            async with client.reserve(subject, "blog_writer", tokens=200, **CHAT):
                assert counter(quota_server.redis_url, subject) == (123, 200)
                raise ConnectionError("provider reset the connection")
        assert counter(quota_server.redis_url, subject) == (123, 0)

        async with client.reserve(subject, "basic_seo", tokens=50, **CHAT):
            pass  # no commit: the estimate is committed
        assert counter(quota_server.redis_url, subject) == (173, 0)

        usage = await client.get_usage(subject)
        tokens = usage.limit("tokens", "day")
        assert tokens is not None and (tokens.used, tokens.held) == (173, 0)


async def test_async_cancellation_inside_the_guard_releases(quota_server: ServerProcess) -> None:
    subject = new_subject()
    async with AsyncQuotaClient(quota_server.target) as client:

        async def slow_call() -> None:
            async with client.reserve(subject, "blog_writer", tokens=300, **CHAT):
                await asyncio.sleep(30)

        task = asyncio.create_task(slow_call())
        for _ in range(100):
            await asyncio.sleep(0.02)
            if counter(quota_server.redis_url, subject) == (0, 300):
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert counter(quota_server.redis_url, subject) == (0, 0)


async def test_async_deny_and_warn(quota_server: ServerProcess) -> None:
    subject = new_subject()
    seen: list[QuotaWarning] = []

    async def hook(warning: QuotaWarning) -> None:
        seen.append(warning)

    async with AsyncQuotaClient(quota_server.target, on_warning=hook) as client:
        async with client.reserve(subject, "blog_writer", tokens=850, **CHAT) as r:
            assert r.decision is Decision.WARN
            await r.commit(tokens=955)
        assert seen == [r.warning]
        with pytest.raises(QuotaDenied) as denied:
            async with client.reserve(subject, "blog_writer", tokens=1, **CHAT):
                pytest.fail("the block must not run")
    assert denied.value.reason is Reason.BLOCK_THRESHOLD
    assert denied.value.limit is not None and denied.value.limit.max == 1000
    assert counter(quota_server.redis_url, subject) == (955, 0)


async def test_async_decorator(quota_server: ServerProcess) -> None:
    subject = new_subject()
    async with AsyncQuotaClient(quota_server.target) as client:

        @client.guard("blog_writer", tokens=100, actual=lambda n: {"tokens": n}, **CHAT)
        async def write(subject: str) -> int:
            await asyncio.sleep(0)
            return 64

        assert await write(subject) == 64
    assert counter(quota_server.redis_url, subject) == (64, 0)


async def test_async_server_stopped_fail_closed_and_open(quota_server: ServerProcess) -> None:
    subject = new_subject()
    quota_server.stop()
    async with AsyncQuotaClient(quota_server.target, deadline=1.0) as closed:
        started = time.monotonic()
        with pytest.raises(QuotaUnavailable):
            async with closed.reserve(subject, "blog_writer", tokens=10, **CHAT):
                pytest.fail("the block must not run")
        assert time.monotonic() - started < 1.0 + 0.25
    async with (
        AsyncQuotaClient(quota_server.target, deadline=1.0, fail_mode="open") as open_client,
        open_client.reserve(subject, "blog_writer", tokens=10, **CHAT) as r,
    ):
        assert r.unverified
        assert (await r.commit(tokens=9)).unverified
