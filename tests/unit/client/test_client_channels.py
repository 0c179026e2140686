"""``channels=N``: N channels, each its own TCP connection, taken in turn; close closes all."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
import psutil
import pytest
from fake_quota_service import FakeServer

from quota_client import AsyncQuotaClient, QuotaClient, QuotaUnavailable, RetryPolicy, _wire
from quota_client._common import RoundRobin
from quota_client.options import CHANNEL_INDEX_ARG, DEFAULT_CHANNELS

pytestmark = pytest.mark.unit


class Tally(grpc.UnaryUnaryClientInterceptor, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Counts, per channel index, the attempts sent on that channel."""

    def __init__(self, index: int, seen: Counter[int]) -> None:
        self.index, self.seen = index, seen

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        self.seen[self.index] += 1
        return continuation(details, request)


class Spy:
    """Stands in for ``_wire.open_channel`` / ``open_async_channel``: records every channel's
    arguments and closes, and tallies the attempts sent on each."""

    def __init__(self) -> None:
        self.args: list[dict[str, object]] = []
        self.seen: Counter[int] = Counter()
        self.closed: list[int] = []

    def sync(self, target: str, credentials: object, options: list[tuple[str, str | int]]) -> grpc.Channel:
        index = len(self.args)
        self.args.append(dict(options))
        channel = grpc.intercept_channel(grpc.insecure_channel(target, options=options), Tally(index, self.seen))
        real_close = channel.close

        def close() -> None:
            self.closed.append(index)
            real_close()

        channel.close = close  # type: ignore[method-assign]
        return channel

    def aio(self, target: str, credentials: object, options: list[tuple[str, str | int]]) -> grpc.aio.Channel:
        index = len(self.args)
        self.args.append(dict(options))
        channel = grpc.aio.insecure_channel(target, options=options, interceptors=[Tally(index, self.seen)])
        real_close = channel.close

        async def close(grace: float | None = None) -> None:
            self.closed.append(index)
            await real_close(grace)

        channel.close = close  # type: ignore[method-assign]
        return channel


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    found = Spy()
    monkeypatch.setattr(_wire, "open_channel", found.sync)
    monkeypatch.setattr(_wire, "open_async_channel", found.aio)
    return found


def _connections_to(target: str) -> set[int]:
    port = int(target.rsplit(":", 1)[1])
    return {
        c.laddr.port
        for c in psutil.Process().net_connections("tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    }


def test_the_default_is_4_channels_and_nonsense_is_refused() -> None:
    assert DEFAULT_CHANNELS == 4 and QuotaClient().options.channels == 4
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError):
            QuotaClient(channels=bad)  # type: ignore[arg-type]


def test_each_channel_gets_distinct_args_and_the_common_ones(fake: FakeServer, spy: Spy) -> None:
    with QuotaClient(fake.target, channels=3, channel_options=[("grpc.max_reconnect_backoff_ms", 500)]) as client:
        client.get_usage("u")
    assert [a[CHANNEL_INDEX_ARG] for a in spy.args] == [0, 1, 2]
    assert all(a["grpc.use_local_subchannel_pool"] == 1 for a in spy.args)
    assert all(a["grpc.max_reconnect_backoff_ms"] == 500 for a in spy.args)
    assert len({tuple(sorted(a.items())) for a in spy.args}) == 3


def test_one_channel_keeps_the_old_args(fake: FakeServer, spy: Spy) -> None:
    with QuotaClient(fake.target, channels=1) as client:
        client.get_usage("u")
        client.get_usage("u")
    assert len(spy.args) == 1
    assert CHANNEL_INDEX_ARG not in spy.args[0] and "grpc.use_local_subchannel_pool" not in spy.args[0]
    assert spy.seen == Counter({0: 2})


def test_calls_take_the_channels_in_turn_and_close_closes_every_one(fake: FakeServer, spy: Spy) -> None:
    client = QuotaClient(fake.target, channels=4)
    for _ in range(10):
        client.get_usage("u")
    assert spy.seen == Counter({0: 3, 1: 3, 2: 2, 3: 2})
    client.close()
    assert sorted(spy.closed) == [0, 1, 2, 3]


async def test_async_calls_take_the_channels_in_turn_and_close_closes_every_one(fake: FakeServer, spy: Spy) -> None:
    async with AsyncQuotaClient(fake.target, channels=4) as client:
        for _ in range(8):
            await client.check_and_reserve("u", "blog_writer", tokens=1)
    assert spy.seen == Counter({0: 2, 1: 2, 2: 2, 3: 2})
    assert sorted(spy.closed) == [0, 1, 2, 3]
    assert len(spy.args) == 4 and [a[CHANNEL_INDEX_ARG] for a in spy.args] == [0, 1, 2, 3]


def test_each_retry_goes_out_on_the_next_channel(dead_target: str, spy: Spy) -> None:
    client = QuotaClient(
        dead_target, channels=3, deadline=5, retry=RetryPolicy(max_attempts=4, initial_backoff=0.001, max_backoff=0.001)
    )
    with pytest.raises(QuotaUnavailable) as failure:
        client.get_usage("u")
    assert failure.value.attempts == 4
    assert spy.seen == Counter({0: 2, 1: 1, 2: 1})
    client.close()


def test_the_channels_really_are_distinct_connections(fake: FakeServer) -> None:
    before = _connections_to(fake.target)
    with QuotaClient(fake.target, channels=8) as client:
        for _ in range(16):
            client.get_usage("u")
        assert len(_connections_to(fake.target) - before) == 8
    with QuotaClient(fake.target, channels=1) as client:
        for _ in range(16):
            client.get_usage("u")
        assert len(_connections_to(fake.target) - before) == 1


def test_round_robin_cycles_and_needs_an_item() -> None:
    turns = RoundRobin("abc")
    assert [turns.next() for _ in range(7)] == list("abcabca")
    with pytest.raises(ValueError):
        RoundRobin([])
