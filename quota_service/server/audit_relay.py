"""The audit relay: every admin change in the Redis audit log becomes one event in the ledger.

The audit stream (``audit:{__audit__}``, what ``ListAudit`` reads) is the outbox: an admin
write appends its entry there (:class:`quota_service.admin.Admin`), and this relay copies
the entries, oldest first, into the ledger as ADMIN_CHANGE / STOP_CHANGED events
(:func:`quota_service.ledger.admin_events.audit_event`, id derived from the entry id).

* **No loss, no duplicate.** The relay reads the entries after its cursor (``relay_cursors``
  row ``audit`` in the ledger), stores their events (idempotent on id), then moves the
  cursor forward. A relay killed in between stores the same ids again (ignored); a ledger
  outage leaves the entries in Redis (the stream keeps about 100,000) until it returns.
  Several replicas may relay at once: the ids collide, the cursor only moves forward.
* **Prompt.** :meth:`AuditRelay.wake` (the admin core calls it after each entry) runs a
  pass at once; otherwise every ``poll_seconds`` (entries written by other replicas).
* **An entry that never reached the stream** (Redis down while a policy reload was audited)
  is written straight to the ledger with a minted id, best effort (:meth:`AuditRelay.record`).
* Never on the request path: one background task; a first start relays the whole stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from quota_service.admin import AuditRecord
from quota_service.background import survived
from quota_service.errors import StoreDataError, StoreUnavailable
from quota_service.ledger.admin_events import audit_event
from quota_service.ledger.errors import LedgerError
from quota_service.ledger.events import Event
from quota_service.ledger.store import Ledger
from quota_service.store.admin_store import AUDIT_KEY, audit_record
from quota_service.store.redis_store import RedisCounterStore, bounded_call

__all__ = ["AUDIT_SOURCE", "AuditRelay", "stream_id_newer"]

log = logging.getLogger(__name__)

#: The ``relay_cursors`` row of this relay.
AUDIT_SOURCE = "audit"
BATCH = 500


def _stream_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def stream_id_newer(candidate: str, stored: str) -> bool:
    """Whether stream id ``candidate`` comes after ``stored`` (``<ms>-<seq>``, compared as numbers)."""
    try:
        return _stream_id(candidate) > _stream_id(stored)
    except ValueError:
        return True  # a damaged cursor is replaced


def _event(entry_id: str, fields: dict[str, Any]) -> Event | None:
    try:
        record = audit_record(entry_id, fields)
        return audit_event(
            entry_id=record.entry_id,
            at_ms=record.at_ms,
            actor=record.actor,
            action=record.action,
            target=record.target,
            subject=record.subject,
            before=record.before,
            after=record.after,
            reason=record.reason,
        )
    except ValueError as exc:
        log.error("audit relay: entry %s cannot be an event, skipped: %s", entry_id, exc)
        return None


#: The longest stop() waits for its cancelled tasks (seconds).
STOP_SECONDS = 5.0


class AuditRelay:
    """See the module docstring. ``on_stored`` is called after events are stored (the event
    feed's and the webhook deliverer's wake-ups)."""

    def __init__(
        self,
        *,
        counters: RedisCounterStore,
        ledger: Ledger,
        on_stored: Callable[[], None] = lambda: None,
        poll_seconds: float = 1.0,
    ) -> None:
        self._client = counters.client
        self._timeout = counters.timeout_seconds
        self._ledger = ledger
        self._on_stored = on_stored
        self._poll = poll_seconds
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._direct: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        self._wake.set()

    def record(self, entry: AuditRecord) -> None:
        """The admin core's audit sink: relay now; an entry not in the stream goes straight in."""
        if entry.entry_id:
            self.wake()
            return
        event = audit_event(
            entry_id="",
            at_ms=entry.at_ms,
            actor=entry.actor,
            action=entry.action,
            target=entry.target,
            subject=entry.subject,
            before=entry.before,
            after=entry.after,
            reason=entry.reason,
        )
        task = asyncio.get_running_loop().create_task(self._insert_direct(event))
        self._direct.add(task)
        task.add_done_callback(self._direct.discard)

    async def _insert_direct(self, event: Event) -> None:
        try:
            await self._ledger.insert([event])
            self._on_stored()
        except LedgerError as exc:
            log.error("audit relay: event %s (audit entry not stored) lost: %s", event.id, exc)
        except Exception as exc:
            survived("audit relay direct insert", exc)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="audit relay")

    async def stop(self) -> None:
        """Cancel the relay and any direct insert; wait for them at most
        :data:`STOP_SECONDS` (a ledger call that never returns must not hold up a shutdown;
        whatever was not relayed stays in the stream for the next start)."""
        tasks = [t for t in (self._task, *self._direct) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_SECONDS)
            if pending:
                log.warning(
                    "audit relay: %d task(s) did not stop within %.0f s; left behind", len(pending), STOP_SECONDS
                )
        self._task = None

    async def _read(self, after: str) -> list[Any]:
        client = self._client

        async def read() -> list[Any]:
            low = f"({after}" if after else "-"
            return list(await client.xrange(AUDIT_KEY, min=low, max="+", count=BATCH) or [])

        return await bounded_call("xrange", self._timeout, read, request_deadline=False)

    async def relay_once(self) -> int:
        """Move the entries after the cursor into the ledger, one page; how many entries read."""
        cursor = await self._ledger.relay_cursor(AUDIT_SOURCE)
        page = await self._read(cursor)
        if not page:
            return 0
        found = [_event(str(entry_id), dict(fields)) for entry_id, fields in page]
        stored = await self._ledger.insert([e for e in found if e is not None])
        await self._ledger.advance_relay_cursor(AUDIT_SOURCE, str(page[-1][0]), newer=stream_id_newer)
        if stored:
            self._on_stored()
        return len(page)

    async def drain(self) -> None:
        """Relay until nothing is left (tests, shutdown)."""
        while await self.relay_once() == BATCH:
            pass

    async def _run(self) -> None:
        delay = self._poll
        while True:
            self._wake.clear()
            try:
                read = await self.relay_once()
                delay = self._poll
                if read == BATCH:
                    continue
            except (LedgerError, StoreUnavailable, StoreDataError) as exc:
                log.warning("audit relay: %s; retrying in %.1f s", exc, delay)
                delay = min(delay * 2, 30.0)
            except Exception as exc:
                survived("audit relay", exc)
                delay = min(delay * 2, 30.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
