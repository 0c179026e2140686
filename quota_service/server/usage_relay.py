"""The usage relay: every record in the Redis outboxes reaches the ledger, once; and the reaper.

The Lua step that changes a subject's counters appends the usage record (or threshold
crossing) describing the change to its slot's outbox stream in the same atomic step
(:mod:`quota_service.ledger.outbox`). Every replica runs one relay:

* **Drain.** Each outbox is read through one Redis consumer group (``ledger``): the replicas
  share the work, each entry is delivered to one of them. A batch is stored with one
  idempotent insert (one row per event id), then acknowledged and deleted in one step
  (``outbox_done.lua``). A relay killed after the insert re-reads the same entries from its
  pending list (or another replica claims them after :data:`CLAIM_IDLE_MS`): the same ids,
  stored once. While the ledger store is down, entries wait in Redis; past the store's
  ``outbox_cap`` new reservations are refused (:class:`~quota_service.errors.OutboxFull`), so
  nothing is ever spent unrecorded, and each pass logs the backlog.
* **Prompt.** Polled every ``poll_seconds`` (0.25 s): records reach the ledger well within a
  second under load (metric ``quota_outbox_lag_seconds``). A pass costs a ledger transaction
  whatever it stores, so polling faster buys little latency for a lot of CPU.
* **Reap.** Every ``reap_seconds`` (1 s) the reaper settles at their estimate the reservations
  whose TTL has passed (``reap.lua`` over the slot's due index), so an abandoned reservation
  is recorded EXPIRED within about a second of its TTL, whether or not its subject comes back.
* **Redis Cluster.** One outbox and due index per hash slot: a replica drains and reaps at
  once the slots it wrote to in the last seconds, and every ``scan_seconds`` (5 s) looks at
  all 16,384 (pipelined ``XLEN`` / ``ZCOUNT``, :data:`SCAN_CHUNK` slots at a time) for what
  other replicas left behind.
* **Records without a store step** (a denial the engine decides alone: an emergency stop, a
  feature outside the tier, the store unreachable) are handed over in memory
  (:meth:`UsageRelay.record`) and stored with the next batch: a replica killed within that
  quarter of a second loses them (no money moved; the metric ``quota_records_dropped_total``
  counts those over the in-memory cap).
* **No ledger** (``--ledger-url none``): the store appends nothing; the relay only reaps.
* ``on_new`` is called with the denials and threshold crossings a pass stored for the first
  time, and the records handed over in memory (the rules that act on threshold crossings);
  its failures are logged, never fatal. The usage records themselves go from outbox entry
  to ledger row without becoming an :class:`Event` (:func:`~quota_service.ledger.outbox.entry_record`,
  :meth:`Ledger.insert_rows`): the relay's work per record is a few tens of microseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from quota_service.background import survived
from quota_service.errors import StoreDataError, StoreUnavailable
from quota_service.ledger.errors import LedgerError
from quota_service.ledger.events import Event
from quota_service.ledger.outbox import EntryError, entry_record
from quota_service.ledger.store import EventRow, Ledger
from quota_service.metrics import OUTBOX_LAG, OUTBOX_PENDING, OUTBOX_RELAYED, REAPED, RECORDS_DROPPED
from quota_service.store import keys
from quota_service.store.redis_store import RedisCounterStore, bounded_call

__all__ = ["CLAIM_IDLE_MS", "GROUP", "UsageRelay"]

log = logging.getLogger(__name__)

#: The consumer group every replica's relay reads the outboxes through.
GROUP = "ledger"
#: Entries read (and stored in one insert) per batch.
BATCH = 500
#: A pending entry idle this long (its relay died before storing it) is claimed by another.
CLAIM_IDLE_MS = 10_000
#: Records handed over in memory that may wait for the next batch.
DIRECT_CAP = 100_000
#: A slot written to within this many seconds is drained and reaped at each pass (cluster).
RECENT_SECONDS = 3.0
#: The longest stop() waits for the relay to finish its pass (seconds).
STOP_SECONDS = 5.0
#: Slots asked per pipeline by the cluster's full scan (see ``_tags_with``).
SCAN_CHUNK = 512
#: Entries that cannot be events are kept here (same slot as the outbox), at most this many.
DEAD_LETTERS = 10_000


def _dead_key(tag: str) -> str:
    return f"{keys.outbox_key(tag)}:dead"


def _entries(reply: Any) -> list[tuple[str, dict[str, str] | None]]:
    """The entries of an XREADGROUP reply for one stream (RESP2 list or RESP3 dict)."""
    if not reply:
        return []
    streams = list(reply.values()) if isinstance(reply, dict) else [item[1] for item in reply]
    out: list[tuple[str, dict[str, str] | None]] = []
    for stream in streams:
        if isinstance(stream, list) and stream and isinstance(stream[0], list) and len(stream) == 1:
            stream = stream[0]  # RESP3: [[entries]]
        for entry_id, fields in stream:
            out.append((str(entry_id), dict(fields) if fields else None))
    return out


class UsageRelay:
    """See the module docstring."""

    def __init__(
        self,
        *,
        store: RedisCounterStore,
        ledger: Ledger | None,
        on_stored: Callable[[], None] = lambda: None,
        on_new: Callable[[Sequence[Event]], Awaitable[None]] | None = None,
        poll_seconds: float = 0.25,
        reap_seconds: float = 1.0,
        scan_seconds: float = 5.0,
        claim_idle_ms: int = CLAIM_IDLE_MS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._client = store.client
        self._timeout = max(store.timeout_seconds, 1.0)  # background calls: not the request budget
        self._ledger = ledger
        self._on_stored = on_stored
        #: Called with the events a pass stored for the first time (settable after construction).
        self.on_new = on_new
        self._poll = poll_seconds
        self._reap_every = reap_seconds
        self._scan_every = scan_seconds
        self._claim_idle_ms = claim_idle_ms
        self._clock = clock
        self._cluster = isinstance(self._client, RedisCluster)
        self._consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._groups: set[str] = set()  # outboxes whose group this relay has made sure of
        # outboxes where this relay may hold entries it read and did not store (at start, after
        # a failed pass, after claiming): their pending list is read before new entries
        self._unsure: set[str] = set()
        self._recent: dict[str, float] = {}  # cluster: slot tag -> when this replica last wrote to it
        self._direct: deque[Event] = deque()
        self._task: asyncio.Task[None] | None = None
        self._last_reap = 0.0
        self._last_scan = 0.0
        self._backlog_logged = 0.0
        if self._cluster:
            store.on_outbox = self._touched

    # -- what others call -----------------------------------------------------------------

    def record(self, event: Event) -> None:
        """A record with no store step (see the module docstring): stored with the next batch."""
        if len(self._direct) >= DIRECT_CAP:
            RECORDS_DROPPED.inc()
            return
        self._direct.append(event)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="usage relay")

    async def stop(self) -> None:
        """Stop the loop (at most :data:`STOP_SECONDS`), then store what is in memory, best effort."""
        if self._task is not None:
            self._task.cancel()
            _, pending = await asyncio.wait([self._task], timeout=STOP_SECONDS)
            if pending:
                log.warning("usage relay: did not stop within %.0f s; left behind", STOP_SECONDS)
            self._task = None
        with contextlib.suppress(LedgerError, TimeoutError):
            async with asyncio.timeout(STOP_SECONDS):
                await self._flush_direct()

    # -- one pass -------------------------------------------------------------------------

    def _touched(self, tag: str) -> None:
        self._recent[tag] = time.monotonic()

    def _recent_tags(self) -> list[str]:
        horizon = time.monotonic() - RECENT_SECONDS
        for tag in [t for t, at in self._recent.items() if at < horizon]:
            del self._recent[tag]
        return list(self._recent)

    async def relay_once(self, *, everything: bool = False) -> int:
        """Store what waits: the in-memory records, then each outbox due (all of them with
        ``everything``, or on a single Redis). How many outbox entries were stored. Without a
        ledger there is nothing to relay (the store appends nothing)."""
        if self._ledger is None:
            return 0
        await self._flush_direct()
        if not self._cluster:
            tags = [keys.SINGLE_TAG]
        elif everything:
            tags = await self._tags_with(lambda pipe, tag: pipe.xlen(keys.outbox_key(tag)))
        else:
            tags = self._recent_tags()
        total = 0
        for tag in tags:
            total += await self._drain(tag, claim=everything)
        return total

    async def reap_once(self, *, everything: bool = False) -> int:
        """Settle the reservations past their TTL (see the module docstring); how many scopes."""
        now_ms = int(self._clock() * 1000)
        if not self._cluster:
            tags = [keys.SINGLE_TAG]
        elif everything:
            tags = await self._tags_with(lambda pipe, tag: pipe.zcount(keys.due_key(tag), "-inf", now_ms))
        else:
            tags = self._recent_tags()
        swept = 0
        for tag in tags:
            while True:
                done, still_due = await self._store.reap(tag, now_ms)
                swept += done
                if not done or not still_due:
                    break
        if swept:
            REAPED.inc(swept)
        return swept

    async def drain(self) -> None:
        """Store everything waiting now, reaping first (tests, shutdown)."""
        await self.reap_once(everything=True)
        await self.relay_once(everything=True)

    async def _tags_with(self, command: Callable[[Any, str], Any]) -> list[str]:
        """Cluster: the slot tags for which ``command`` (XLEN / ZCOUNT) answers above 0. Asked
        in pipelines of :data:`SCAN_CHUNK` slots: one pipeline of all 16,384 would hold the
        event loop for a few hundred milliseconds (packing and parsing them), longer than a
        request's budget, so requests served meanwhile would miss their deadlines."""
        found: list[str] = []
        every = keys.all_slot_tags()
        for first in range(0, len(every), SCAN_CHUNK):
            tags = every[first : first + SCAN_CHUNK]

            async def scan(tags: tuple[str, ...] = tags) -> list[Any]:
                pipe = self._client.pipeline()
                for tag in tags:
                    command(pipe, tag)
                return list(await pipe.execute())

            counts = await bounded_call("outbox scan", self._timeout * 4, scan, request_deadline=False)
            found += [tag for tag, count in zip(tags, counts, strict=True) if int(count or 0) > 0]
            await asyncio.sleep(0)  # the requests waiting meanwhile go first
        return found

    async def _ensure_group(self, key: str) -> None:
        if key in self._groups:
            return

        async def create() -> None:
            try:
                await self._client.xgroup_create(key, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

        await bounded_call("xgroup create", self._timeout, create, key=key, request_deadline=False)
        self._groups.add(key)

    async def _read(self, key: str, start: str) -> list[tuple[str, dict[str, str] | None]]:
        async def read() -> Any:
            try:
                return await self._client.xreadgroup(GROUP, self._consumer, {key: start}, count=BATCH)
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    self._groups.discard(key)
                    return None
                raise

        reply = await bounded_call("xreadgroup", self._timeout, read, key=key, request_deadline=False)
        if reply is None and key not in self._groups:
            await self._ensure_group(key)
            reply = await bounded_call("xreadgroup", self._timeout, read, key=key, request_deadline=False)
        return _entries(reply)

    async def _drain(self, tag: str, *, claim: bool) -> int:
        key = keys.outbox_key(tag)
        if key not in self._groups:
            await self._ensure_group(key)
            self._unsure.add(key)  # a restarted replica: its own pending entries come first
        if claim:
            await self._claim(key)
            self._unsure.add(key)
        stored = 0
        length: int | None = None
        # this relay's pending entries first (a failed insert, a claim), then new ones
        starts = ("0", ">") if key in self._unsure else (">",)
        self._unsure.add(key)  # until this drain ends without an error
        for start in starts:
            while True:
                page = await self._read(key, start)
                if not page:
                    break
                length = await self._store_page(tag, page)
                stored += len(page)
                if len(page) < BATCH:
                    break
        self._unsure.discard(key)
        if length is not None or claim:
            await self._report_backlog(key, length)
        return stored

    async def _claim(self, key: str) -> None:
        """Take over the entries another relay read and never stored (it died)."""

        async def claim() -> Any:
            return await self._client.xautoclaim(
                key, GROUP, self._consumer, self._claim_idle_ms, start_id="0-0", count=BATCH * 4, justid=True
            )

        await bounded_call("xautoclaim", self._timeout, claim, key=key, request_deadline=False)

    async def _store_page(self, tag: str, page: Sequence[tuple[str, dict[str, str] | None]]) -> int:
        """Store one page, then acknowledge and delete it; how many entries the outbox holds after."""
        rows: list[EventRow] = []
        told: list[Event] = []  # the denials and crossings: what the rules that act read
        dead: list[tuple[str, dict[str, str]]] = []
        for entry_id, fields in page:
            if fields is None:  # deleted meanwhile (by a relay that stored it): just acknowledge
                continue
            try:
                row, event = entry_record(fields)
            except EntryError as exc:
                log.error(
                    "usage relay: outbox entry %s of %s cannot be an event (%s), kept aside: %r",
                    entry_id,
                    tag,
                    exc,
                    fields,
                )
                dead.append((entry_id, fields))
                continue
            rows.append(row)
            if event is not None:
                told.append(event)
        with contextlib.suppress(ValueError):  # the page's oldest entry: its id is when it was added
            OUTBOX_LAG.observe(max(0, int(time.time() * 1000) - int(page[0][0].split("-", 1)[0])) / 1000)
        assert self._ledger is not None
        new_ids = await self._ledger.insert_rows(rows) if rows else []
        if dead:
            await self._keep_dead(tag, dead)
        length = await self._store.outbox_done(tag, GROUP, [entry_id for entry_id, _ in page])
        OUTBOX_RELAYED.inc(len(page))
        if new_ids:
            self._on_stored()
            if told:
                await self._tell_new(told, new_ids)
        return length

    async def _tell_new(self, events: Sequence[Event], new_ids: Sequence[str]) -> None:
        if self.on_new is None:
            return
        fresh = set(new_ids)
        try:
            await self.on_new([e for e in events if e.id in fresh])
        except Exception as exc:
            survived("usage relay: acting on new events", exc)

    async def _keep_dead(self, tag: str, dead: Sequence[tuple[str, dict[str, str]]]) -> None:
        async def keep() -> None:
            for entry_id, fields in dead:
                kept: dict[Any, Any] = {**fields, "entry": entry_id}
                await self._client.xadd(_dead_key(tag), kept, maxlen=DEAD_LETTERS, approximate=True)

        await bounded_call("xadd dead letter", self._timeout, keep, request_deadline=False)

    async def _flush_direct(self) -> None:
        if not self._direct or self._ledger is None:
            return
        batch = list(self._direct)
        new_ids = await self._ledger.insert_new(batch)
        for _ in batch:
            self._direct.popleft()
        if new_ids:
            self._on_stored()
            await self._tell_new(batch, new_ids)

    async def _report_backlog(self, key: str, length: int | None) -> None:
        """Export (and past half the cap, log) what waits in an outbox (``length``: as the last
        acknowledgement answered, else asked now)."""
        if length is None:
            length = int(
                await bounded_call("xlen", self._timeout, lambda: self._client.xlen(key), request_deadline=False)
            )
        OUTBOX_PENDING.set(length)
        cap = self._store.outbox_cap
        if cap and length >= cap // 2 and time.monotonic() - self._backlog_logged > 30:
            self._backlog_logged = time.monotonic()
            log.error(
                "usage outbox %s holds %d records (cap %d): the ledger store is not keeping up or down; "
                "at the cap new reservations are refused",
                key,
                length,
                cap,
            )

    # -- the loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self._poll
        while True:
            try:
                now = time.monotonic()
                scan = self._cluster and now - self._last_scan >= self._scan_every
                if now - self._last_reap >= self._reap_every:
                    self._last_reap = now
                    await self.reap_once(everything=scan)
                if not self._cluster and now - self._last_scan >= self._scan_every:
                    scan = True
                if scan:
                    self._last_scan = now
                await self.relay_once(everything=scan)
                delay = self._poll
            except (LedgerError, StoreUnavailable, StoreDataError) as exc:
                log.warning("usage relay: %s; retrying in %.1f s", exc, delay)
                delay = min(max(delay * 2, 0.5), 10.0)
            except Exception as exc:
                survived("usage relay", exc)
                delay = min(max(delay * 2, 0.5), 10.0)
            await asyncio.sleep(delay)
