"""Group commit: calls that arrive while one is in flight go out together in the next one.

Used for the company-wide (global) reserve step, which every request makes against the
same hot keys. With nothing in flight a submission leaves at once (no added latency at
low load); under load, one round trip carries every step queued meanwhile, up to
``max_batch``, in the order submitted. Results come back to each caller; a failure of the
batch call is every caller in that batch's failure.

Bounded, in length and in time:

* at most ``max_queued`` items wait for a batch; a submission beyond that is shed at once
  with :class:`~quota_service.errors.StoreUnavailable` (counted in
  ``quota_group_commit_shed_total``): under a stalled store, a request gets its
  ``on_store_error`` answer rather than a place in an ever longer queue;
* a caller waits no longer than its request's deadline
  (:func:`quota_service.deadline.remaining`), then gets :class:`StoreUnavailable`.

A caller that gives up (its deadline, or cancellation) does not take the others down: an
item still queued is dropped (never sent: nothing happened), an item already in flight runs
to its end with its batch and its result is discarded (its outcome is unknown to that
caller). The batches run outside any request's deadline (a batch carries many requests):
each batch call is bounded by the store's own per-call timeout.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from quota_service import deadline
from quota_service.errors import StoreUnavailable
from quota_service.metrics import GROUP_COMMIT_SHED

Item = TypeVar("Item")
Result = TypeVar("Result")

#: Items that may wait for a batch at once (64 batches of 64 by default).
MAX_QUEUED = 4096


@dataclass(eq=False, slots=True)
class _Waiting(Generic[Item, Result]):
    item: Item
    future: asyncio.Future[Result]


class GroupCommit(Generic[Item, Result]):
    def __init__(
        self,
        run_batch: Callable[[Sequence[Item]], Awaitable[Sequence[Result]]],
        *,
        max_batch: int = 64,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if max_queued < 1:
            raise ValueError("max_queued must be at least 1")
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._max_queued = max_queued
        self._queue: collections.deque[_Waiting[Item, Result]] = collections.deque()
        self._draining: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        """Items waiting for a batch (not those in flight)."""
        return len(self._queue)

    async def submit(self, item: Item) -> Result:
        """``item``'s result, from the next batch. Raises :class:`StoreUnavailable` when the
        queue is full, or when the request's deadline passes first; whatever the batch call
        raised otherwise."""
        left = deadline.remaining()
        if left is not None and left <= 0:
            raise StoreUnavailable("no time left before the request's deadline to send it")
        if len(self._queue) >= self._max_queued:
            GROUP_COMMIT_SHED.inc()
            raise StoreUnavailable(f"the store is not keeping up: {len(self._queue)} calls already wait; shed")
        waiting: _Waiting[Item, Result] = _Waiting(item, asyncio.get_running_loop().create_future())
        self._queue.append(waiting)
        if self._draining is None or self._draining.done():
            # An empty context: the batches belong to no single request, so no request's
            # deadline bounds them (each batch call has the store's own timeout).
            self._draining = asyncio.create_task(self._drain(), context=contextvars.Context())
        try:
            async with asyncio.timeout(left):
                return await waiting.future  # cancelled with the caller: a queued item is then skipped
        except TimeoutError:
            raise StoreUnavailable(f"no answer within the request's deadline ({left:.3f}s)") from None
        finally:
            if not waiting.future.done() or waiting.future.cancelled():
                self._forget(waiting)

    def _forget(self, waiting: _Waiting[Item, Result]) -> None:
        """Drop an item whose caller gave up, if it has not been sent yet."""
        waiting.future.cancel()
        with contextlib.suppress(ValueError):  # in flight, or already answered: its batch goes on
            self._queue.remove(waiting)

    def _next_batch(self) -> list[_Waiting[Item, Result]]:
        batch: list[_Waiting[Item, Result]] = []
        while self._queue and len(batch) < self._max_batch:
            waiting = self._queue.popleft()
            if not waiting.future.done():
                batch.append(waiting)
        return batch

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._next_batch()
                if not batch:
                    continue
                try:
                    results = await self._run_batch([w.item for w in batch])
                    if len(results) != len(batch):
                        raise RuntimeError(f"a batch of {len(batch)} answered {len(results)} results")
                except Exception as exc:  # every waiter of this batch learns of it
                    for waiting in batch:
                        if not waiting.future.done():
                            waiting.future.set_exception(exc)
                    continue
                except BaseException:
                    _abandon(batch)
                    raise
                for waiting, result in zip(batch, results, strict=True):
                    if not waiting.future.done():
                        waiting.future.set_result(result)
        except BaseException:
            # Cancelled (shutdown): nobody would send what is still queued.
            _abandon(self._queue)
            self._queue.clear()
            raise


def _abandon(waiting: Sequence[_Waiting[Item, Result]] | collections.deque[_Waiting[Item, Result]]) -> None:
    for entry in waiting:
        if not entry.future.done():
            entry.future.set_exception(StoreUnavailable("the group commit stopped (shutting down)"))
