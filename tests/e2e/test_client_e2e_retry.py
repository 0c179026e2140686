"""A retry after the server already acted is counted once: the client talks to the real
server through a tiny gRPC proxy that forwards every call but holds back (or drops) the
first answer of one method, so the client's attempt fails *after* the server reserved or
committed. The retry carries the same ``request_id`` and must get the replay."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import pytest
import redis
from support.server_process import ServerProcess

from quota_client import AsyncQuotaClient, Decision, QuotaClient, RetryPolicy

pytestmark = pytest.mark.e2e

CHAT = {"provider": "openai", "model": "gpt-4o-mini"}
CHECK = "/quota.v1.QuotaService/CheckAndReserve"
COMMIT = "/quota.v1.QuotaService/Commit"


class FlakyProxy(grpc.GenericRpcHandler):
    """Forwards raw bytes to ``upstream``. The first ``times`` answers of ``method`` are
    delayed ``delay`` seconds after the upstream answered (``mode="delay"``: the client
    times out) or replaced by UNAVAILABLE (``mode="drop"``: the answer is lost)."""

    def __init__(self, upstream: str, *, method: str, mode: str, delay: float = 0.0, times: int = 1) -> None:
        self.channel = grpc.insecure_channel(upstream)
        self.method, self.mode, self.delay = method, mode, delay
        self.remaining = times
        self.forwarded: list[str] = []
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=[self])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method

        def forward(request: bytes, context: grpc.ServicerContext) -> bytes:
            metadata = tuple(context.invocation_metadata())
            try:
                answer = self.channel.unary_unary(method)(request, timeout=10, metadata=metadata)
            except grpc.RpcError as err:
                context.abort(err.code(), err.details() or "")
            with self.lock:
                self.forwarded.append(method)
                flaky = method == self.method and self.remaining > 0
                if flaky:
                    self.remaining -= 1
            if flaky and self.mode == "drop":
                context.abort(grpc.StatusCode.UNAVAILABLE, "proxy: answer dropped after the server acted")
            if flaky:
                time.sleep(self.delay)
            return answer

        return grpc.unary_unary_rpc_method_handler(forward)

    def close(self) -> None:
        self.server.stop(None).wait()
        self.channel.close()


@pytest.fixture
def proxy_factory(quota_server: ServerProcess) -> Iterator[Callable[..., FlakyProxy]]:
    """Makes :class:`FlakyProxy` objects in front of the test's server; closes them afterwards."""
    proxies: list[FlakyProxy] = []

    def make(*, method: str, mode: str, delay: float = 0.0, times: int = 1) -> FlakyProxy:
        proxy = FlakyProxy(quota_server.target, method=method, mode=mode, delay=delay, times=times)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


def tokens_and_reservations(redis_url: str, subject: str) -> tuple[int, int, int]:
    """``(used, held, reservation records)`` of the subject's tokens/day counter."""
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        [key] = list(r.scan_iter(match=f"q:{{{subject}}}:tokens:day:*"))
        fields = r.hgetall(key)
        records = len(list(r.scan_iter(match=f"r:{{{subject}}}:*")))
    return int(float(fields.get("used", 0))), int(float(fields.get("held", 0))), records


def test_deadline_exceeded_after_the_server_reserved_is_counted_once(
    quota_server: ServerProcess, proxy_factory: Callable[..., FlakyProxy]
) -> None:
    proxy = proxy_factory(method=CHECK, mode="delay", delay=1.0)
    subject = f"e2e-retry-{uuid.uuid4().hex[:12]}"
    retry = RetryPolicy(initial_backoff=0.05, max_backoff=0.2)
    with (
        QuotaClient(proxy.target, attempt_timeout=0.3, deadline=5.0, retry=retry) as client,
        client.reserve(subject, "blog_writer", tokens=300, **CHAT) as r,
    ):
        # The first attempt timed out (DEADLINE_EXCEEDED) after the server had reserved;
        # the retry with the same request_id got the first answer back.
        assert r.result.replayed
        assert r.decision is Decision.ALLOW
        assert tokens_and_reservations(quota_server.redis_url, subject) == (0, 300, 1)
        r.commit(tokens=120)
    assert proxy.forwarded.count(CHECK) == 2
    assert tokens_and_reservations(quota_server.redis_url, subject)[:2] == (120, 0)


def test_a_lost_answer_is_retried_and_counted_once(
    quota_server: ServerProcess, proxy_factory: Callable[..., FlakyProxy]
) -> None:
    proxy = proxy_factory(method=CHECK, mode="drop", times=2)
    subject = f"e2e-retry-{uuid.uuid4().hex[:12]}"
    with QuotaClient(proxy.target, retry=RetryPolicy(initial_backoff=0.01)) as client:
        result = client.check_and_reserve(subject, "blog_writer", tokens=300, **CHAT)
    assert result.replayed and proxy.forwarded.count(CHECK) == 3
    assert tokens_and_reservations(quota_server.redis_url, subject) == (0, 300, 1)


def test_a_lost_commit_answer_is_retried_and_counted_once(
    quota_server: ServerProcess, proxy_factory: Callable[..., FlakyProxy]
) -> None:
    proxy = proxy_factory(method=COMMIT, mode="drop")
    subject = f"e2e-retry-{uuid.uuid4().hex[:12]}"
    with QuotaClient(proxy.target, retry=RetryPolicy(initial_backoff=0.01)) as client:
        with client.reserve(subject, "blog_writer", tokens=300, **CHAT) as r:
            committed = r.commit(tokens=250)
        # The first Commit settled; its answer was lost; the retry found it settled.
        assert committed.already_settled
    assert proxy.forwarded.count(COMMIT) == 2
    assert tokens_and_reservations(quota_server.redis_url, subject)[:2] == (250, 0)


async def test_async_deadline_exceeded_after_the_server_reserved_is_counted_once(
    quota_server: ServerProcess, proxy_factory: Callable[..., FlakyProxy]
) -> None:
    proxy = proxy_factory(method=CHECK, mode="delay", delay=1.0)
    subject = f"e2e-retry-{uuid.uuid4().hex[:12]}"
    retry = RetryPolicy(initial_backoff=0.05, max_backoff=0.2)
    async with (
        AsyncQuotaClient(proxy.target, attempt_timeout=0.3, deadline=5.0, retry=retry) as client,
        client.reserve(subject, "blog_writer", tokens=300, **CHAT) as r,
    ):
        assert r.result.replayed
        await r.commit(tokens=120)
    assert proxy.forwarded.count(CHECK) == 2
    assert tokens_and_reservations(quota_server.redis_url, subject)[:2] == (120, 0)


async def test_async_cancelled_while_the_reserve_is_in_flight_releases_what_it_reserved(
    quota_server: ServerProcess, proxy_factory: Callable[..., FlakyProxy]
) -> None:
    """The server reserved; its answer is held back by the proxy; the caller is cancelled
    meanwhile. The guard never opened, yet nothing stays held: the call is let finish and
    its reservation released before the CancelledError goes on."""
    proxy = proxy_factory(method=CHECK, mode="delay", delay=0.3)
    subject = f"e2e-cancel-{uuid.uuid4().hex[:12]}"
    entered = asyncio.Event()
    async with AsyncQuotaClient(proxy.target, attempt_timeout=2.0, deadline=5.0) as client:

        async def call() -> None:
            async with client.reserve(subject, "blog_writer", tokens=300, **CHAT):
                entered.set()

        task = asyncio.create_task(call())
        for _ in range(200):  # until the server holds it (the answer is still on its way)
            await asyncio.sleep(0.01)
            with redis.Redis.from_url(quota_server.redis_url, decode_responses=True) as r:
                if list(r.scan_iter(match=f"q:{{{subject}}}:tokens:day:*")):
                    break
        assert tokens_and_reservations(quota_server.redis_url, subject)[1] == 300
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert not entered.is_set()
    assert proxy.forwarded.count(CHECK) == 1 and "/quota.v1.QuotaService/Release" in proxy.forwarded
    assert tokens_and_reservations(quota_server.redis_url, subject)[:2] == (0, 0)
