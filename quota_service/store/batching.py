"""Group commit: calls that arrive while one is in flight go out together in the next one.

Used for the company-wide (global) reserve step, which every request makes against the
same hot keys. With nothing in flight a submission leaves at once (no added latency at
low load); under load, one round trip carries every step queued meanwhile, up to
``max_batch``. Results come back to each caller in order; a failure of the batch call is
every caller's failure. A caller that gives up (cancellation, deadline) does not take the
others down: its item still runs, exactly as it would have had the caller waited.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommit(Generic[Item, Result]):
    def __init__(
        self, run_batch: Callable[[Sequence[Item]], Awaitable[Sequence[Result]]], *, max_batch: int = 64
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._queue: list[tuple[Item, asyncio.Future[Result]]] = []
        self._draining: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            try:
                results = await self._run_batch([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"a batch of {len(batch)} answered {len(results)} results")
            except BaseException as exc:  # every waiter learns of it; cancellation included
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
