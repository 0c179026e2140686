"""Pure parts of the client: backoff schedule, retry budget, amounts, metadata, options."""

from __future__ import annotations

import math
import random
from pathlib import Path

import grpc
import pytest

from quota_client import FailMode, QuotaClient, RetryPolicy, TlsConfig
from quota_client._wire import CallBudget, build_metadata, usage_map
from quota_client.options import ClientOptions

pytestmark = pytest.mark.unit


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_backoff_grows_exponentially_up_to_the_cap_without_jitter() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=0.5, multiplier=2.0, jitter=0.0)
    assert [policy.backoff(n) for n in range(1, 6)] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])


def test_backoff_jitter_stays_within_its_band() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=10.0, multiplier=2.0, jitter=0.5)
    rng = random.Random(7)
    for retry in range(1, 8):
        ceiling = 0.1 * 2 ** (retry - 1)
        draws = [policy.backoff(retry, rng) for _ in range(200)]
        assert all(ceiling * 0.5 <= d <= ceiling for d in draws)
        assert max(draws) - min(draws) > ceiling * 0.3  # it really is spread out


def test_backoff_of_a_huge_retry_number_is_the_cap() -> None:
    assert RetryPolicy(jitter=0).backoff(10_000) == RetryPolicy().max_backoff


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"initial_backoff": -1},
        {"initial_backoff": 2, "max_backoff": 1},
        {"multiplier": 0.5},
        {"jitter": 1.5},
    ],
)
def test_retry_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_budget_stops_after_max_attempts() -> None:
    clock = FakeClock()
    budget = CallBudget(ClientOptions(deadline=100, retry=RetryPolicy(max_attempts=3, jitter=0)), clock=clock)
    delays = []
    while True:
        budget.attempt()
        delay = budget.retry_delay()
        if delay is None:
            break
        delays.append(delay)
        clock.now += delay
    assert budget.attempts == 3
    assert delays == pytest.approx([0.05, 0.1])


def test_budget_never_sleeps_past_the_deadline_and_caps_attempt_timeouts() -> None:
    clock = FakeClock()
    options = ClientOptions(
        deadline=1.0,
        attempt_timeout=0.4,
        retry=RetryPolicy(max_attempts=100, initial_backoff=0.2, max_backoff=0.2, jitter=0),
    )
    budget = CallBudget(options, clock=clock)
    timeouts = []
    while True:
        timeout = budget.attempt()
        timeouts.append(timeout)
        clock.now += timeout  # every attempt times out
        delay = budget.retry_delay()
        if delay is None:
            break
        clock.now += delay
    assert timeouts[0] == pytest.approx(0.4)
    assert all(t <= 0.4 for t in timeouts)
    assert clock.now - 100.0 <= 1.0 + 1e-9
    assert budget.unavailable("X", grpc.StatusCode.DEADLINE_EXCEEDED, "slow").attempts == len(timeouts)


def test_usage_map_merges_keywords() -> None:
    assert usage_map(tokens=10, images=2, usage={"audio_seconds": 3}) == {
        "tokens": 10.0,
        "images": 2.0,
        "audio_seconds": 3.0,
    }
    assert usage_map() == {}


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"tokens": 1, "usage": {"tokens": 2}}, ValueError),
        ({"tokens": -1}, ValueError),
        ({"tokens": math.nan}, ValueError),
        ({"images": math.inf}, ValueError),
        ({"usage": {"tokens": "12"}}, TypeError),
        ({"usage": {"tokens": True}}, TypeError),
    ],
)
def test_usage_map_rejects_bad_amounts(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        usage_map(**kwargs)  # type: ignore[arg-type]


def test_metadata_carries_the_bearer_token_and_lower_cases_keys() -> None:
    assert build_metadata("s3cret", {"X-Team": "blog"}) == (
        ("x-team", "blog"),
        ("authorization", "Bearer s3cret"),
    )
    assert build_metadata(None, [("a", "1")]) == (("a", "1"),)
    assert build_metadata(None, None) == ()


def test_client_options_from_keywords() -> None:
    client = QuotaClient(
        "example:1",
        deadline=3,
        attempt_timeout=1,
        fail_mode="open",
        channel_options=[("grpc.max_reconnect_backoff_ms", 500)],
    )
    assert client.options.fail_mode is FailMode.OPEN
    assert dict(client.options.channel_options)["grpc.max_reconnect_backoff_ms"] == 500
    assert [k for k, _ in client.options.channel_options].count("grpc.max_reconnect_backoff_ms") == 1
    client.close()
    with pytest.raises(ValueError):
        QuotaClient("example:1", fail_mode="sideways")
    with pytest.raises(ValueError):
        QuotaClient("example:1", deadline=0)


def test_tls_config_needs_cert_and_key_together(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        TlsConfig(certificate_chain=b"cert")
    (tmp_path / "ca.pem").write_bytes(b"CA")
    assert TlsConfig.from_files(tmp_path / "ca.pem", server_name="quota").root_certificates == b"CA"
