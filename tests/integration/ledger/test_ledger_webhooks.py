"""Webhook delivery against a real local HTTP receiver, on SQLite and PostgreSQL ledgers.

The receiver verifies every request with the Standard Webhooks algorithm implemented here
from the specification (not with the signer under test), answers what each test scripts,
and records what it got. Tests wait on conditions (what arrived, what is stored); the
schedule and the clock are injected, so nothing waits minutes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from quota_service.clock import Clock, ManualClock, SystemClock
from quota_service.ledger import Event, EventKind, Ledger, LedgerConfigError, ledger_from_url, new_event_id
from quota_service.ledger.convert import event_from_json, event_to_json
from quota_service.ledger.webhooks import RETRY_SCHEDULE_SECONDS, WebhookDeliverer, WebhookEndpoint

SECRET = "whsec_" + base64.b64encode(b"quota-service webhook test key!!").decode()
ENV = {"QUOTA_WEBHOOK_SECRET": SECRET}
FAST = (0.05,) * 7  # the same number of retries as the real schedule, 50 ms apart


def verify_standard_webhook(secret: str, headers: dict[str, str], body: bytes, now: int) -> None:
    """Standard Webhooks verification, straight from the specification: the key is the
    base64 of the secret after ``whsec_``; the signed content is ``id.timestamp.body``;
    the header holds space-separated ``v1,<base64 HMAC-SHA256>`` signatures, one must match
    (constant-time); the timestamp must be within 5 minutes of now."""
    msg_id = headers["webhook-id"]
    timestamp = headers["webhook-timestamp"]
    assert abs(now - int(timestamp)) <= 300, "timestamp outside the tolerance"
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    offered = [s.split(",", 1) for s in headers["webhook-signature"].split(" ")]
    assert any(v == "v1" and hmac.compare_digest(sig.encode(), expected) for v, sig in offered), "bad signature"


def test_the_verifier_accepts_the_specifications_example() -> None:
    """The published Standard Webhooks test vector: the verifier above is the standard's."""
    verify_standard_webhook(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        {
            "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "webhook-timestamp": "1614265330",
            "webhook-signature": "v1,bm9wZQ== v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        },
        b'{"test": 2432232314}',
        1614265330,
    )
    with pytest.raises(AssertionError):
        verify_standard_webhook(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            {
                "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
                "webhook-timestamp": "1614265330",
                "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            },
            b'{"test": 2432232315}',
            1614265330,
        )


@dataclass
class Received:
    webhook_id: str
    timestamp: int
    body: bytes
    status: int


class Receiver:
    """A real aiohttp server on a free port of 127.0.0.1 that answers ``statuses`` in
    order (then 200), or hangs while ``hang`` is set, and verifies every request."""

    def __init__(self, clock: Clock, statuses: list[int] | None = None) -> None:
        self.clock = clock
        self.statuses = list(statuses or [])
        self.got: list[Received] = []
        self.problems: list[str] = []
        self.hang = False
        self.release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            assert request.content_type == "application/json"
            verify_standard_webhook(SECRET, headers, body, int(self.clock.now().timestamp()))
        except (AssertionError, KeyError, ValueError) as exc:
            self.problems.append(f"{exc!r} {headers}")
            return web.Response(status=400)
        if self.hang:
            await self.release.wait()
        status = self.statuses.pop(0) if self.statuses else 200
        self.got.append(Received(headers["webhook-id"], int(headers["webhook-timestamp"]), body, status))
        return web.Response(status=status, text="boom" if status >= 500 else "ok")

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hooks/quota", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/hooks/quota"
        return self

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def ids(self) -> list[str]:
        return [r.webhook_id for r in self.got]


async def eventually(condition: Callable[[], Awaitable[bool] | bool], within_seconds: float = 15.0) -> None:
    """Wait until ``condition`` holds (checked every 10 ms), failing after ``within_seconds``."""
    async with asyncio.timeout(within_seconds):
        while True:
            result = condition()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await asyncio.sleep(0.01)


@pytest.fixture
async def receivers() -> AsyncIterator[list[Receiver]]:
    started: list[Receiver] = []
    yield started
    for receiver in started:
        await receiver.stop()
    assert not [p for r in started for p in r.problems], "a request failed the Standard Webhooks verification"


def threshold_event(n: int, *, tier: str = "free_alpha", kind: EventKind = EventKind.THRESHOLD_CROSSED) -> Event:
    at_ms = 1_764_547_200_000 + n
    return Event(
        id=new_event_id(kind, at_ms), kind=kind, at_ms=at_ms, subject=f"u{n}", tier=tier, detail=json.dumps({"n": n})
    )


def sample(name: str, endpoint: WebhookEndpoint) -> float:
    return REGISTRY.get_sample_value(name, {"endpoint": endpoint.id}) or 0.0


def deliverer_for(ledger: Ledger, endpoints: list[WebhookEndpoint], **options: object) -> WebhookDeliverer:
    settings: dict[str, object] = {"schedule": FAST, "poll_interval_seconds": 0.05, "environ": ENV}
    settings.update(options)
    return WebhookDeliverer(ledger=ledger, endpoints=endpoints, **settings)  # type: ignore[arg-type]


async def test_a_failed_first_attempt_is_retried_with_the_same_webhook_id(
    ledger: Ledger, receivers: list[Receiver]
) -> None:
    receiver = await Receiver(SystemClock(), statuses=[500]).start()
    receivers.append(receiver)
    endpoint = WebhookEndpoint(url=receiver.url, secret_env="QUOTA_WEBHOOK_SECRET")
    deliverer = deliverer_for(ledger, [endpoint])
    await deliverer.start()
    try:
        event = threshold_event(1)
        await ledger.insert([event])
        deliverer.wake()
        await eventually(lambda: len(receiver.got) >= 2)
        first, second = receiver.got[:2]
        assert (first.status, second.status) == (500, 200)
        assert first.webhook_id == second.webhook_id == event.id
        assert first.body == second.body == event_to_json(event)
        assert event_from_json(second.body) == event
        assert json.loads(second.body)["kind"] == "THRESHOLD_CROSSED"
        assert second.timestamp >= first.timestamp

        async def recorded() -> bool:
            rows = await deliverer.deliveries(endpoint_id=endpoint.id)
            return len(rows) == 1 and rows[0].state == "delivered"

        await eventually(recorded)
        (row,) = await deliverer.deliveries(endpoint_id=endpoint.id)
        assert (row.event_id, row.attempts, row.last_status, row.last_error) == (event.id, 2, 200, "")
        assert sample("quota_webhook_delivered_total", endpoint) == 1
        assert sample("quota_webhook_failed_attempts_total", endpoint) == 1
        await deliverer.refresh_gauges()
        assert sample("quota_webhook_pending_deliveries", endpoint) == 0
    finally:
        await deliverer.stop()
    assert len(receiver.got) == 2  # delivered once it answered 200: no further attempt


async def test_endpoints_get_only_the_kinds_and_tiers_they_ask_for(ledger: Ledger, receivers: list[Receiver]) -> None:
    receiver = await Receiver(SystemClock()).start()
    receivers.append(receiver)
    picky = WebhookEndpoint(
        url=receiver.url,
        secret_env="QUOTA_WEBHOOK_SECRET",
        kinds=frozenset({EventKind.THRESHOLD_CROSSED, EventKind.STOP_CHANGED}),
        tiers=frozenset({"free_alpha"}),
    )
    deliverer = deliverer_for(ledger, [picky])
    await deliverer.start()
    try:
        wanted = [threshold_event(1), threshold_event(4, kind=EventKind.STOP_CHANGED)]
        unwanted = [
            threshold_event(2, tier="pro_alpha"),
            threshold_event(3, kind=EventKind.COMMITTED),
            threshold_event(5, tier="", kind=EventKind.STOP_CHANGED),
        ]
        await ledger.insert([wanted[0], *unwanted, wanted[1]])
        deliverer.wake()
        await eventually(lambda: len(receiver.got) == 2)
        await deliverer.match_new_events()  # everything stored has been matched by now
        rows = await deliverer.deliveries()
        assert sorted(r.event_id for r in rows) == sorted(e.id for e in wanted)
        assert sorted(receiver.ids()) == sorted(e.id for e in wanted)
    finally:
        await deliverer.stop()


async def test_a_restarted_deliverer_resumes_pending_deliveries(
    ledger_url: str, ledger: Ledger, receivers: list[Receiver]
) -> None:
    clock = ManualClock(datetime(2026, 12, 1, 12, 0, tzinfo=UTC))
    receiver = await Receiver(clock, statuses=[503]).start()
    receivers.append(receiver)
    endpoint = WebhookEndpoint(url=receiver.url, secret_env="QUOTA_WEBHOOK_SECRET")
    first = deliverer_for(ledger, [endpoint], clock=clock, schedule=RETRY_SCHEDULE_SECONDS)
    await first.start()
    early = threshold_event(1)
    try:
        await ledger.insert([early])
        first.wake()
        await eventually(lambda: len(receiver.got) == 1)

        async def failed_once() -> bool:
            rows = await first.deliveries()
            return len(rows) == 1 and rows[0].attempts == 1

        await eventually(failed_once)
    finally:
        await first.stop()
    (row,) = await first.deliveries()
    assert row.state == "pending" and row.last_status == 503 and "boom" in row.last_error
    assert row.next_attempt_at_ms == int(clock.now().timestamp() * 1000) + 5_000  # the schedule's first wait

    # While no deliverer runs, another event is stored; a new process (new Ledger, new
    # deliverer on the same database) must pick up both: the pending retry and the new one.
    late = threshold_event(2)
    await ledger.insert([late])
    reopened = ledger_from_url(ledger_url)
    assert reopened is not None
    second = deliverer_for(reopened, [endpoint], clock=clock, schedule=RETRY_SCHEDULE_SECONDS)
    await second.start()
    try:
        second.wake()
        await eventually(lambda: late.id in receiver.ids())
        assert receiver.ids().count(early.id) == 1  # not due yet: the clock has not moved
        clock.advance(5)
        second.wake()
        await eventually(lambda: receiver.ids().count(early.id) == 2)

        async def both_delivered() -> bool:
            return {(r.event_id, r.state) for r in await second.deliveries()} == {
                (early.id, "delivered"),
                (late.id, "delivered"),
            }

        await eventually(both_delivered)
        attempts = {r.event_id: r.attempts for r in await second.deliveries()}
        assert attempts == {early.id: 2, late.id: 1}
    finally:
        await second.stop()
        await reopened.close()


async def test_the_whole_schedule_then_dead_and_visible(ledger: Ledger, receivers: list[Receiver]) -> None:
    clock = ManualClock(datetime(2026, 12, 1, 12, 0, tzinfo=UTC))
    receiver = await Receiver(clock, statuses=[500] * 20).start()
    receivers.append(receiver)
    endpoint = WebhookEndpoint(url=receiver.url, secret_env="QUOTA_WEBHOOK_SECRET")
    deliverer = deliverer_for(ledger, [endpoint], clock=clock, schedule=RETRY_SCHEDULE_SECONDS)
    await deliverer.start()
    event = threshold_event(1)
    waits: list[int] = []
    try:
        await ledger.insert([event])
        deliverer.wake()
        for attempt in range(1, len(RETRY_SCHEDULE_SECONDS) + 2):
            await eventually(lambda attempt=attempt: len(receiver.got) == attempt)  # type: ignore[misc]

            async def recorded(attempt: int = attempt) -> bool:
                rows = await deliverer.deliveries()
                return rows[0].attempts == attempt

            await eventually(recorded)
            (row,) = await deliverer.deliveries()
            if row.state == "dead":
                break
            now_ms = int(clock.now().timestamp() * 1000)
            waits.append(row.next_attempt_at_ms - now_ms)
            clock.set(datetime.fromtimestamp(row.next_attempt_at_ms / 1000, UTC))
            deliverer.wake()
    finally:
        await deliverer.stop()
    assert waits == [int(s * 1000) for s in RETRY_SCHEDULE_SECONDS]  # 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h
    assert sum(RETRY_SCHEDULE_SECONDS) > 24 * 3600  # retried for at least a day
    (row,) = await deliverer.deliveries(state="dead")
    assert row.attempts == 8 and row.last_status == 500
    assert set(receiver.ids()) == {event.id}
    assert sample("quota_webhook_given_up_total", endpoint) == 1
    assert sample("quota_webhook_failed_attempts_total", endpoint) == 8
    await deliverer.refresh_gauges()
    assert sample("quota_webhook_dead_deliveries", endpoint) == 1
    assert sample("quota_webhook_pending_deliveries", endpoint) == 0


async def test_a_hanging_endpoint_times_out_without_holding_up_another(
    ledger: Ledger, receivers: list[Receiver]
) -> None:
    slow = await Receiver(SystemClock()).start()
    fast = await Receiver(SystemClock()).start()
    receivers.extend([slow, fast])
    slow.hang = True
    slow_endpoint = WebhookEndpoint(url=slow.url, secret_env="QUOTA_WEBHOOK_SECRET")
    fast_endpoint = WebhookEndpoint(url=fast.url, secret_env="QUOTA_WEBHOOK_SECRET")
    deliverer = deliverer_for(
        ledger, [slow_endpoint, fast_endpoint], request_timeout_seconds=0.5, schedule=(3600,) * 7, concurrency=4
    )
    await deliverer.start()
    try:
        await ledger.insert([threshold_event(n) for n in range(3)])
        deliverer.wake()
        await eventually(lambda: len(fast.got) == 3)  # while the slow endpoint's requests hang

        async def timed_out() -> bool:
            rows = await deliverer.deliveries(endpoint_id=slow_endpoint.id)
            return len(rows) == 3 and all(r.attempts == 1 for r in rows)

        await eventually(timed_out)
        rows = await deliverer.deliveries(endpoint_id=slow_endpoint.id)
        assert {(r.state, r.last_status, r.last_error) for r in rows} == {("pending", 0, "no answer within 0.5 s")}
    finally:
        await deliverer.stop()


async def test_an_unreachable_endpoint_is_a_failed_attempt(ledger: Ledger) -> None:
    from quota_service.store.embedded import free_port

    endpoint = WebhookEndpoint(url=f"http://127.0.0.1:{free_port()}/nobody", secret_env="QUOTA_WEBHOOK_SECRET")
    deliverer = deliverer_for(ledger, [endpoint], schedule=(3600,) * 7)
    await deliverer.start()
    try:
        await ledger.insert([threshold_event(1)])
        deliverer.wake()

        async def failed() -> bool:
            rows = await deliverer.deliveries()
            return len(rows) == 1 and rows[0].attempts == 1

        await eventually(failed)
        (row,) = await deliverer.deliveries()
        assert row.state == "pending" and row.last_status == 0 and "Connect" in row.last_error
    finally:
        await deliverer.stop()


def test_endpoint_configuration_errors(tmp_path: Path) -> None:
    ledger = ledger_from_url(f"sqlite:///{tmp_path / 'ledger.db'}")
    assert ledger is not None
    endpoint = WebhookEndpoint(url="https://backend.example/hooks/quota", secret_env="QUOTA_WEBHOOK_SECRET")
    with pytest.raises(LedgerConfigError, match="QUOTA_WEBHOOK_SECRET is not set"):
        WebhookDeliverer(ledger=ledger, endpoints=[endpoint], environ={})
    with pytest.raises(LedgerConfigError, match="whsec_") as excinfo:
        WebhookDeliverer(ledger=ledger, endpoints=[endpoint], environ={"QUOTA_WEBHOOK_SECRET": "whsec_not base64!"})
    assert "not base64!" not in str(excinfo.value)  # the secret is never echoed
    with pytest.raises(LedgerConfigError, match="twice"):
        WebhookDeliverer(ledger=ledger, endpoints=[endpoint, endpoint], environ=ENV)
    with pytest.raises(LedgerConfigError, match="http"):
        WebhookEndpoint(url="ftp://backend.example/x", secret_env="S")
    with pytest.raises(LedgerConfigError, match="environment variable name"):
        WebhookEndpoint(url="https://backend.example/x", secret_env="not a name")
