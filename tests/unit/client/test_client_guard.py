"""The sync guard and plain calls against the in-process fake service (see conftest)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fake_quota_service import FakeServer

from quota_client import (
    CheckResult,
    Decision,
    LimitKind,
    QuotaClient,
    QuotaDenied,
    QuotaRequestError,
    QuotaUsageError,
    QuotaWarning,
    Reason,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def client(fake: FakeServer) -> Iterator[QuotaClient]:
    with QuotaClient(fake.target, deadline=2.0) as c:
        yield c


def test_plain_calls_return_typed_results(client: QuotaClient, fake: FakeServer) -> None:
    result = client.check_and_reserve("u1", "blog_writer", provider="openai", model="m", tokens=100)
    assert isinstance(result, CheckResult)
    assert result.decision is Decision.ALLOW and result.reason is Reason.WITHIN_LIMITS
    assert result.allowed and not result.unverified and not result.replayed
    assert result.reservation_id and len(result.request_id) == 32
    assert result.limits[0].kind is LimitKind.TIER and result.limits[0].held == 100
    assert result.raw is not None and result.raw.reservation_id == result.reservation_id

    committed = client.commit(result.reservation_id, tokens=60)
    assert not committed.already_settled and committed.limits[0].used == 60
    assert client.commit(result.reservation_id, tokens=60).already_settled
    assert client.release(result.reservation_id).already_settled

    usage = client.get_usage("u1")
    status = usage.limit("tokens", "day")
    assert usage.tier == "free_alpha" and status is not None
    assert (status.used, status.held) == (60, 0)
    assert usage.limit("images", "day") is None


def test_plain_check_returns_a_deny_instead_of_raising(client: QuotaClient) -> None:
    result = client.check_and_reserve("u1", "blog_writer", tokens=5000)
    assert result.decision is Decision.DENY and not result.allowed and not result.reservation_id


def test_guard_commits_the_actual_usage(client: QuotaClient, fake: FakeServer) -> None:
    with client.reserve("u1", "blog_writer", provider="openai", model="m", tokens=300) as r:
        assert r.state == "open" and r.decision is Decision.ALLOW and r.warning is None
        assert fake.service.held["u1"] == 300
        result = r.commit(tokens=123)
    assert result.limits[0].used == 123
    assert r.state == "committed" and r.commit_result is result
    assert (fake.service.used["u1"], fake.service.held["u1"]) == (123, 0)
    [request] = fake.service.calls_of("CheckAndReserve")
    assert request.request_id == r.request_id and dict(request.usage) == {"tokens": 300.0}


def test_an_exception_inside_the_guard_releases_and_propagates(client: QuotaClient, fake: FakeServer) -> None:
    with pytest.raises(RuntimeError, match="provider down"), client.reserve("u1", "blog_writer", tokens=300) as r:
        raise RuntimeError("provider down")
    assert r.state == "released"
    assert fake.service.held["u1"] == 0 and fake.service.used.get("u1", 0) == 0
    assert len(fake.service.calls_of("Release")) == 1


def test_leaving_without_commit_commits_the_estimate(client: QuotaClient, fake: FakeServer) -> None:
    with client.reserve("u1", "blog_writer", tokens=250) as r:
        pass
    assert r.state == "committed" and fake.service.used["u1"] == 250


def test_require_commit_commits_the_estimate_then_raises(client: QuotaClient, fake: FakeServer) -> None:
    with pytest.raises(QuotaUsageError, match="require_commit"):  # noqa: SIM117
        with client.reserve("u1", "blog_writer", tokens=250, require_commit=True):
            pass
    assert fake.service.used["u1"] == 250 and fake.service.held["u1"] == 0


def test_commit_twice_or_after_release_is_a_usage_error(client: QuotaClient, fake: FakeServer) -> None:
    with client.reserve("u1", "blog_writer", tokens=10) as r:
        r.commit(tokens=5)
        with pytest.raises(QuotaUsageError):
            r.commit(tokens=5)
        with pytest.raises(QuotaUsageError):
            r.release()
    with client.reserve("u1", "blog_writer", tokens=10) as r2:
        r2.release()
        with pytest.raises(QuotaUsageError):
            r2.commit()
    assert fake.service.used["u1"] == 5 and fake.service.held["u1"] == 0
    guard = client.reserve("u1", "blog_writer", tokens=10)
    with pytest.raises(QuotaUsageError):
        guard.commit()
    with pytest.raises(QuotaUsageError):
        _ = guard.result


def test_deny_raises_with_the_limit_and_never_runs_the_block(client: QuotaClient, fake: FakeServer) -> None:
    ran = False
    with pytest.raises(QuotaDenied) as denied, client.reserve("u1", "blog_writer", tokens=1001):
        ran = True
    assert not ran
    exc = denied.value
    assert exc.reason is Reason.LIMIT_EXCEEDED and exc.retry_after == 3600
    assert exc.limit is not None and (exc.limit.metric, exc.limit.window, exc.limit.max) == ("tokens", "day", 1000)
    assert exc.result.decision is Decision.DENY
    assert fake.service.held.get("u1", 0) == 0
    assert not fake.service.calls_of("Release") and not fake.service.calls_of("Commit")


def test_warn_proceeds_and_fires_on_warning(fake: FakeServer) -> None:
    seen: list[QuotaWarning] = []
    with QuotaClient(fake.target, on_warning=seen.append) as client:
        with client.reserve("u1", "blog_writer", tokens=850) as r:
            assert r.decision is Decision.WARN
            assert r.warning is not None and r.warning.limit is not None and r.warning.limit.ratio >= 0.8
            r.commit(tokens=800)
        assert seen == [r.warning]
        per_call: list[QuotaWarning] = []
        with client.reserve("u1", "blog_writer", tokens=10, on_warning=per_call.append):
            pass
        assert len(per_call) == 1 and len(seen) == 1


def test_a_failing_warning_hook_releases(client: QuotaClient, fake: FakeServer) -> None:
    def hook(warning: QuotaWarning) -> None:
        raise LookupError("notify failed")

    with pytest.raises(LookupError), client.reserve("u1", "blog_writer", tokens=900, on_warning=hook):
        pytest.fail("the block must not run")
    assert fake.service.held["u1"] == 0 and len(fake.service.calls_of("Release")) == 1


def test_invalid_argument_raises_a_request_error_without_retrying(client: QuotaClient, fake: FakeServer) -> None:
    with pytest.raises(QuotaRequestError) as err, client.reserve("", "blog_writer", tokens=1):
        pass
    assert err.value.code.name == "INVALID_ARGUMENT"
    assert len(fake.service.calls_of("CheckAndReserve")) == 1


def test_decorator_with_parameter_name_estimate_and_actual(client: QuotaClient, fake: FakeServer) -> None:
    @client.guard(
        "blog_writer",
        subject="user_id",
        provider="openai",
        model="m",
        estimate=lambda user_id, prompt, max_tokens=200: {"tokens": len(prompt) + max_tokens},
        actual=lambda reply: {"tokens": reply["total_tokens"]},
    )
    def write(user_id: str, prompt: str, max_tokens: int = 200) -> dict[str, int]:
        assert fake.service.held[user_id] == len(prompt) + max_tokens
        return {"total_tokens": 42}

    assert write("u7", "hello") == {"total_tokens": 42}
    assert write.__name__ == "write"
    assert fake.service.used["u7"] == 42 and fake.service.held["u7"] == 0


def test_decorator_with_fixed_estimate_and_callable_subject(client: QuotaClient, fake: FakeServer) -> None:
    @client.guard("blog_writer", subject=lambda req: req["user"], images=1)
    def draw(req: dict[str, str]) -> str:
        if req.get("fail"):
            raise ValueError("bad prompt")
        return "png"

    assert draw({"user": "u8"}) == "png"
    with pytest.raises(ValueError):
        draw({"user": "u8", "fail": "yes"})
    [first, second] = fake.service.calls_of("CheckAndReserve")
    assert dict(first.usage) == {"images": 1.0} and first.request_id != second.request_id
    assert len(fake.service.calls_of("Commit")) == 1 and len(fake.service.calls_of("Release")) == 1


def test_decorator_denied_does_not_call_the_function(client: QuotaClient) -> None:
    calls = []

    @client.guard("blog_writer", tokens=5000)
    def write(subject: str) -> None:
        calls.append(subject)

    with pytest.raises(QuotaDenied):
        write("u9")
    assert calls == []


def test_decorator_needs_a_subject(client: QuotaClient) -> None:
    with pytest.raises(TypeError, match="no parameter 'subject'"):

        @client.guard("blog_writer", tokens=1)
        def write(user: str) -> None: ...

    with pytest.raises(ValueError, match="not both"):
        client.guard("blog_writer", tokens=1, estimate=lambda subject: {"tokens": 1})


def test_decorator_refuses_an_async_function(client: QuotaClient, fake: FakeServer) -> None:
    # Around an `async def` the guard would settle before the call ran, and the call would
    # then run unguarded when awaited: AsyncQuotaClient.guard is the one for it.
    async def write(subject: str) -> None: ...

    with pytest.raises(TypeError, match=r"AsyncQuotaClient\.guard"):
        client.guard("blog_writer", tokens=1)(write)
    assert not fake.service.calls


def test_closed_client_refuses_calls(fake: FakeServer) -> None:
    client = QuotaClient(fake.target)
    client.check_and_reserve("u1", "blog_writer", tokens=1)
    client.close()
    client.close()
    assert client.closed
    with pytest.raises(QuotaUsageError, match="closed"):
        client.check_and_reserve("u1", "blog_writer", tokens=1)
