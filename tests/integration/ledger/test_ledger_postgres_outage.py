"""PostgreSQL stopped under the ledger: a clear, fast LedgerUnavailable, nothing half-written,
and the same Ledger works again once the server is back (its pooled connections are checked)."""

from __future__ import annotations

import asyncio
import time

import pytest
from support.postgres import LocalPostgres

from quota_service.ledger import Event, EventKind, LedgerUnavailable, ledger_from_url, record_id
from quota_service.ledger.metrics import LEDGER_ERRORS

pytestmark = pytest.mark.postgres


def records(start: int, count: int) -> list[Event]:
    return [
        Event(id=record_id(EventKind.COMMITTED, f"rsv_dTE.{n:032x}"), kind=EventKind.COMMITTED, at_ms=1_000 + n)
        for n in range(start, start + count)
    ]


async def test_insert_while_postgres_is_down_raises_then_recovers(
    postgres_server: LocalPostgres, postgres_url: str
) -> None:
    ledger = ledger_from_url(postgres_url, timeout_seconds=2.0)
    assert ledger is not None
    try:
        await ledger.migrate()
        assert await ledger.insert(records(0, 10)) == 10  # the pool now holds live connections
        before = LEDGER_ERRORS.labels("insert", "unavailable")._value.get()

        postgres_server.stop_server()
        waiting = records(10, 10)  # what a relay would keep in its outbox meanwhile
        down_since = time.monotonic()
        attempts = 0
        while time.monotonic() - down_since < 3.0:  # a few seconds of outage, retried as a relay would
            began = time.monotonic()
            with pytest.raises(LedgerUnavailable, match="unavailable") as excinfo:
                await ledger.insert(waiting)
            assert time.monotonic() - began < 3.0, "a down ledger must fail within its timeout, not hang"
            attempts += 1
            await asyncio.sleep(0.1)  # a relay's backoff between attempts
        assert attempts >= 2
        assert "insert" in str(excinfo.value)
        with pytest.raises(LedgerUnavailable):
            await ledger.ping()
        with pytest.raises(LedgerUnavailable):
            await ledger.list_events()
        assert LEDGER_ERRORS.labels("insert", "unavailable")._value.get() >= before + attempts

        postgres_server.start_server()
        await ledger.ping()
        # The retried batch lands exactly once, however many attempts failed.
        assert await ledger.insert(waiting) == 10
        assert await ledger.insert(waiting) == 0
        assert await ledger.count() == 20
    finally:
        if not postgres_server.running:
            postgres_server.start_server()
        await ledger.close()


async def test_down_at_start_is_unavailable_not_a_crash(postgres_server: LocalPostgres, postgres_url: str) -> None:
    ledger = ledger_from_url(postgres_url, timeout_seconds=2.0)
    assert ledger is not None
    postgres_server.stop_server()
    try:
        with pytest.raises(LedgerUnavailable):
            await ledger.migrate()
        postgres_server.start_server()
        await ledger.migrate()
        assert await ledger.insert(records(0, 3)) == 3
    finally:
        if not postgres_server.running:
            postgres_server.start_server()
        await ledger.close()
