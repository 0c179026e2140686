"""The one feed every reader shares: ListEvents (pages) and WatchEvents (a live tail).

:class:`EventFeed` sits on the ledger store. Readers never talk to Redis: what they see is
what the relay has stored, in insertion order, exactly once (see
:meth:`quota_service.ledger.store.Ledger.events_after`).

WatchEvents semantics: with no ``after_id`` the tail starts *now* (the newest stored event
is not sent); with one, it resumes right after that event: no gap, no duplicate, whatever
arrived meanwhile. A resume from an id the ledger no longer holds is :class:`EventNotFound`
(the caller must start over and reconcile). The tail wakes when :meth:`EventFeed.notify`
is called (the relay does, after each insert) and polls every ``poll_seconds`` besides, so
a writer in another replica is seen within that time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

from quota_service.ledger.events import Event, EventKind
from quota_service.ledger.store import Ledger

__all__ = ["DEFAULT_POLL_SECONDS", "EventFeed"]

#: How often a live tail looks for events written by other replicas (seconds).
DEFAULT_POLL_SECONDS = 0.25
#: Events fetched per step of a live tail.
TAIL_BATCH = 200


class EventFeed:
    def __init__(self, *, ledger: Ledger, poll_seconds: float = DEFAULT_POLL_SECONDS) -> None:
        if poll_seconds <= 0:
            raise ValueError("poll_seconds must be positive")
        self._ledger = ledger
        self._poll_seconds = poll_seconds
        self._waiters: set[asyncio.Event] = set()  # one per live tail

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    def notify(self) -> None:
        """Something new was stored: wake every live tail now (no I/O)."""
        for waiter in self._waiters:
            waiter.set()

    async def list(
        self,
        *,
        subject: str = "",
        kinds: Iterable[EventKind] = (),
        since_ms: int = 0,
        until_ms: int = 0,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[Event], str]:
        """One page, oldest first, and the next page's token (``""``: the last page)."""
        return await self._ledger.list_events(
            subject=subject,
            kinds=tuple(kinds),
            since_ms=since_ms,
            until_ms=until_ms,
            page_size=page_size,
            page_token=page_token,
        )

    async def watch(
        self,
        *,
        subject: str = "",
        kinds: Iterable[EventKind] = (),
        after_id: str = "",
        on_start: Callable[[], Awaitable[None]] | None = None,
    ) -> AsyncIterator[Event]:
        """Every matching event stored after ``after_id`` (``""``: after the newest now),
        forever, in insertion order. Ends only when the consumer stops iterating.
        ``on_start`` is awaited once the starting point is fixed: every event stored from
        then on will be delivered (WatchEvents tells its caller so with initial metadata)."""
        wanted = tuple(kinds)
        position = await self._ledger.position_of(after_id) if after_id else await self._ledger.head_position()
        if on_start is not None:
            await on_start()
        changed = asyncio.Event()
        self._waiters.add(changed)
        try:
            while True:
                changed.clear()  # before reading: a notify during the read wakes the next wait
                page = await self._ledger.events_after(
                    after_position=position, subject=subject, kinds=wanted, limit=TAIL_BATCH
                )
                position = page.position
                for event in page.events:
                    yield event
                if len(page.events) == TAIL_BATCH:
                    continue  # more are waiting: no sleep
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_seconds):
                        await changed.wait()
        finally:
            self._waiters.discard(changed)
