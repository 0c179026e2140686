"""ListEvents and WatchEvents through the real server, over the ledger a relay writes to.

The records are written by the test straight into the server's ledger file, as the relay of
another replica would: what is tested is the feed (paging, the live tail, resume without gap
or duplicate, filters, roles), not how records get there."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support.server_process import ServerProcess

from quota.v1 import admin_pb2_grpc, events_pb2
from quota_service.ledger.events import Event, EventKind, new_event_id
from quota_service.ledger.store import ledger_from_url
from quota_service.server.admin import WATCH_STARTED_HEADER

pytestmark = pytest.mark.e2e

VIEWER = "viewer-" + uuid.uuid4().hex


@pytest.fixture
def served(redis_url: str, tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    ledger_file = tmp_path / "ledger.db"
    server = ServerProcess(
        redis_url=redis_url,
        workdir=tmp_path,
        extra_args=("--ledger-url", f"sqlite:///{ledger_file}", "--viewer-token", VIEWER),
    )
    server.start()
    try:
        yield server, ledger_file
    finally:
        server.stop()


def write(ledger_file: Path, events: list[Event]) -> None:
    async def insert() -> None:
        ledger = ledger_from_url(f"sqlite:///{ledger_file}")
        assert ledger is not None
        try:
            await ledger.migrate()  # idempotent: the server already did it, or is doing it
            await ledger.insert(events)
        finally:
            await ledger.close()

    asyncio.run(insert())


def committed(subject: str, n: int) -> Event:
    at_ms = int(time.time() * 1000) + n  # distinct times: pages are ordered by (at_ms, id)
    return Event(
        id=new_event_id(EventKind.COMMITTED, at_ms),
        kind=EventKind.COMMITTED,
        at_ms=at_ms,
        subject=subject,
        tier="free_alpha",
        actual={"tokens": n},
        cost_micros=n,
    )


def test_list_events_pages_oldest_first_for_a_viewer(served: tuple[ServerProcess, Path]) -> None:
    server, ledger_file = served
    write(ledger_file, [committed("alice", n) for n in range(1, 8)] + [committed("bob", 100)])
    with grpc.insecure_channel(server.target) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        auth = (("authorization", f"Bearer {VIEWER}"),)
        seen: list[int] = []
        token = ""
        while True:
            page = admin.ListEvents(
                events_pb2.ListEventsRequest(subject="alice", page_size=3, page_token=token), metadata=auth, timeout=5
            )
            seen += [int(e.actual["tokens"]) for e in page.events]
            token = page.next_page_token
            if not token:
                break
        assert seen == [1, 2, 3, 4, 5, 6, 7]
        with pytest.raises(grpc.RpcError) as refused:
            admin.ListEvents(events_pb2.ListEventsRequest(kinds=[99]), metadata=auth, timeout=5)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_watch_events_tails_live_and_resumes_without_gap_or_duplicate(served: tuple[ServerProcess, Path]) -> None:
    server, ledger_file = served
    write(ledger_file, [committed("carol", 1)])  # before the watch: not sent (the tail starts now)
    with grpc.insecure_channel(server.target) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        auth = (("authorization", f"Bearer {VIEWER}"),)
        stream = admin.WatchEvents(events_pb2.WatchEventsRequest(subject="carol"), metadata=auth, timeout=30)
        received: list[events_pb2.Event] = []
        first_two = threading.Event()

        def read() -> None:
            for event in stream:
                received.append(event)
                if len(received) == 2:
                    first_two.set()
                    return

        # The server sends initial metadata once the tail's starting point is fixed.
        assert dict(stream.initial_metadata()).get(WATCH_STARTED_HEADER) == "1"
        reader = threading.Thread(target=read)
        reader.start()
        write(ledger_file, [committed("carol", 2), committed("dave", 50), committed("carol", 3)])
        assert first_two.wait(10), "the live tail did not deliver within 10 s"
        reader.join(5)
        stream.cancel()
        assert [int(e.actual["tokens"]) for e in received] == [2, 3]

        # Resume after the last one seen, while more arrived meanwhile: exactly the rest.
        write(ledger_file, [committed("carol", 4), committed("carol", 5)])
        resumed = admin.WatchEvents(
            events_pb2.WatchEventsRequest(subject="carol", after_id=received[-1].id), metadata=auth, timeout=30
        )
        rest = [int(next(resumed).actual["tokens"]) for _ in range(2)]
        resumed.cancel()
        assert rest == [4, 5]

        with pytest.raises(grpc.RpcError) as gone:
            next(admin.WatchEvents(events_pb2.WatchEventsRequest(after_id="com_unknown"), metadata=auth, timeout=5))
        assert gone.value.code() is grpc.StatusCode.NOT_FOUND


def test_the_feed_is_off_without_a_ledger(redis_url: str, tmp_path: Path) -> None:
    server = ServerProcess(redis_url=redis_url, workdir=tmp_path, extra_args=("--ledger-url", "none"))
    server.start()
    try:
        with grpc.insecure_channel(server.target) as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            auth = (("authorization", f"Bearer {server.admin_token}"),)
            with pytest.raises(grpc.RpcError) as off:
                admin.ListEvents(events_pb2.ListEventsRequest(), metadata=auth, timeout=5)
            assert off.value.code() is grpc.StatusCode.FAILED_PRECONDITION
            assert "ledger is off" in (off.value.details() or "")
    finally:
        server.stop()
