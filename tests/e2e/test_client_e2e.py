"""The Python client against the real server (shipped policies, real Redis): the guard's
reserve / commit / release, DENY and WARN, and both fail modes with the server stopped.

The shipped tier ``free_alpha``: 1,000 tokens/day, warn at 80 %, block at 95 %, features
``blog_writer`` and ``basic_seo``. Counters are read straight from Redis
(``q:{subject}:<metric>:<window>:<window_id>``, hash fields ``used`` / ``held``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from support.server_process import ServerProcess

from quota_client import (
    Decision,
    LimitKind,
    QuotaClient,
    QuotaDenied,
    QuotaRequestError,
    QuotaUnavailable,
    QuotaWarning,
    Reason,
)

pytestmark = pytest.mark.e2e

CHAT = {"provider": "openai", "model": "gpt-4o-mini"}


def new_subject() -> str:
    return f"e2e-client-{uuid.uuid4().hex[:12]}"


def counter(redis_url: str, subject: str, metric: str = "tokens", window: str = "day") -> tuple[int, int]:
    """``(used, held)`` of the subject's counter for ``metric`` in the current ``window``."""
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        keys = list(r.scan_iter(match=f"q:{{{subject}}}:{metric}:{window}:*"))
        if not keys:
            return 0, 0
        assert len(keys) == 1, keys
        fields = r.hgetall(keys[0])
    return int(float(fields.get("used", 0))), int(float(fields.get("held", 0)))


def reservation_records(redis_url: str, subject: str) -> int:
    with redis.Redis.from_url(redis_url) as r:
        return len(list(r.scan_iter(match=f"r:{{{subject}}}:*")))


@pytest.fixture
def client(quota_server: ServerProcess) -> Iterator[QuotaClient]:
    with QuotaClient(quota_server.target, deadline=5.0, attempt_timeout=2.0) as c:
        yield c


def test_reserve_then_commit_counts_the_actual_usage(client: QuotaClient, quota_server: ServerProcess) -> None:
    subject = new_subject()
    with client.reserve(subject, "blog_writer", tokens=300, **CHAT) as r:
        assert r.decision is Decision.ALLOW and r.reservation_id and not r.unverified
        assert r.result.tier == "free_alpha"
        assert counter(quota_server.redis_url, subject) == (0, 300)
        committed = r.commit(tokens=123)
    assert not committed.already_settled
    assert counter(quota_server.redis_url, subject) == (123, 0)

    usage = client.get_usage(subject)
    tokens = usage.limit("tokens", "day", LimitKind.TIER)
    assert usage.tier == "free_alpha" and tokens is not None
    assert (tokens.used, tokens.held, tokens.max) == (123, 0, 1000)

    # Commit and release are idempotent: a repeat changes nothing and says so.
    assert client.commit(r.reservation_id, tokens=999).already_settled
    assert client.release(r.reservation_id).already_settled
    assert counter(quota_server.redis_url, subject) == (123, 0)


def test_leaving_the_block_without_commit_commits_the_estimate(
    client: QuotaClient, quota_server: ServerProcess
) -> None:
    subject = new_subject()
    with client.reserve(subject, "basic_seo", tokens=200, **CHAT):
        pass
    assert counter(quota_server.redis_url, subject) == (200, 0)


def test_an_exception_inside_the_guard_releases(client: QuotaClient, quota_server: ServerProcess) -> None:
    subject = new_subject()
    with pytest.raises(TimeoutError), client.reserve(subject, "blog_writer", tokens=400, **CHAT) as r:
        assert counter(quota_server.redis_url, subject) == (0, 400)
        raise TimeoutError("provider timed out")
    assert r.state == "released"
    assert counter(quota_server.redis_url, subject) == (0, 0)


def test_deny_raises_with_the_limit_that_caused_it(client: QuotaClient, quota_server: ServerProcess) -> None:
    subject = new_subject()
    with client.reserve(subject, "blog_writer", tokens=900, **CHAT) as r:
        r.commit(tokens=960)  # an overshoot is charged, never lost
    assert counter(quota_server.redis_url, subject) == (960, 0)

    ran = False
    with pytest.raises(QuotaDenied) as denied, client.reserve(subject, "blog_writer", tokens=10, **CHAT):
        ran = True
    assert not ran
    exc = denied.value
    assert exc.reason is Reason.BLOCK_THRESHOLD, exc
    assert exc.limit is not None
    assert (exc.limit.metric, exc.limit.window, exc.limit.max, exc.limit.kind) == (
        "tokens",
        "day",
        1000,
        LimitKind.TIER,
    )
    assert 0 < exc.retry_after <= 86400
    assert exc.message
    assert counter(quota_server.redis_url, subject) == (960, 0)  # a DENY reserves nothing


def test_a_request_past_the_cap_is_denied(client: QuotaClient, quota_server: ServerProcess) -> None:
    subject = new_subject()
    with pytest.raises(QuotaDenied) as denied, client.reserve(subject, "blog_writer", tokens=1001, **CHAT):
        pass
    assert denied.value.reason in (Reason.LIMIT_EXCEEDED, Reason.HARD_STOP)
    assert denied.value.limit is not None and denied.value.limit.metric == "tokens"
    assert denied.value.limit.max == 1000
    assert counter(quota_server.redis_url, subject) == (0, 0)


def test_a_feature_outside_the_tier_is_denied(client: QuotaClient) -> None:
    with pytest.raises(QuotaDenied) as denied, client.reserve(new_subject(), "video_studio", tokens=10, **CHAT):
        pass
    assert denied.value.reason is Reason.FEATURE_NOT_ALLOWED


def test_warn_proceeds_and_fires_on_warning(quota_server: ServerProcess) -> None:
    subject = new_subject()
    seen: list[QuotaWarning] = []
    with QuotaClient(quota_server.target, on_warning=seen.append) as client:
        with client.reserve(subject, "blog_writer", tokens=850, **CHAT) as r:
            assert r.decision is Decision.WARN and r.warning is not None
            r.commit(tokens=840)
        assert seen == [r.warning]
        assert r.warning.limit is not None
        assert (r.warning.limit.metric, r.warning.limit.window) == ("tokens", "day")
        assert r.result.reason is Reason.WARN_THRESHOLD
        with client.reserve(subject, "blog_writer", tokens=50, **CHAT) as r2:
            assert r2.decision is Decision.WARN
        assert len(seen) == 2
    assert counter(quota_server.redis_url, subject) == (890, 0)


def test_invalid_argument_is_a_request_error(client: QuotaClient) -> None:
    with pytest.raises(QuotaRequestError) as err:
        client.check_and_reserve("", "blog_writer", tokens=1, **CHAT)
    assert err.value.code.name == "INVALID_ARGUMENT"


def test_the_decorator_guards_each_call(client: QuotaClient, quota_server: ServerProcess) -> None:
    subject = new_subject()

    @client.guard(
        "blog_writer",
        subject="user_id",
        estimate=lambda user_id, prompt: {"tokens": 100 + len(prompt)},
        actual=lambda reply: {"tokens": reply["total_tokens"]},
        **CHAT,
    )
    def write(user_id: str, prompt: str) -> dict[str, int]:
        return {"total_tokens": 77}

    write(subject, "x" * 20)
    write(subject, "y" * 20)
    assert counter(quota_server.redis_url, subject) == (154, 0)


def test_server_stopped_fail_closed_raises_within_the_deadline(quota_server: ServerProcess) -> None:
    subject = new_subject()
    with QuotaClient(quota_server.target) as client:  # the defaults: deadline 2 s, attempts of 0.5 s
        client.check_and_reserve(subject, "blog_writer", tokens=1, dry_run=True, **CHAT)  # channel is up
        quota_server.stop()
        started = time.monotonic()
        with pytest.raises(QuotaUnavailable) as raised, client.reserve(subject, "blog_writer", tokens=10, **CHAT):
            pytest.fail("the block must not run")
        elapsed = time.monotonic() - started
        print(f"fail-closed: QuotaUnavailable after {elapsed:.3f}s, {raised.value.attempts} attempts")
        assert elapsed < client.options.deadline + 0.25
        assert raised.value.attempts >= 2

        # The same client recovers once the server is back (same port, channel reconnects).
        quota_server.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                result = client.check_and_reserve(subject, "blog_writer", tokens=10, **CHAT)
                break
            except QuotaUnavailable:
                assert time.monotonic() < deadline, "the client did not reconnect"
        assert result.decision is Decision.ALLOW


def test_server_stopped_fail_open_proceeds_unverified(quota_server: ServerProcess) -> None:
    subject = new_subject()
    quota_server.stop()
    with QuotaClient(quota_server.target, deadline=1.0, fail_mode="open") as client:
        started = time.monotonic()
        with client.reserve(subject, "blog_writer", tokens=10, **CHAT) as r:
            assert r.unverified and r.reservation_id == ""
            result = r.commit(tokens=8)
        assert time.monotonic() - started < 1.0 + 0.25
        assert result.unverified
    quota_server.start()
    assert counter(quota_server.redis_url, subject) == (0, 0)  # nothing was recorded
