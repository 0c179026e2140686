"""GroupCommit: batching, order, splits, failure fan-out, callers that give up (deadline,
cancellation) without breaking the batch, and a bounded queue that sheds."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from prometheus_client import REGISTRY

from quota_service import deadline
from quota_service.deadline import request_deadline
from quota_service.errors import StoreUnavailable
from quota_service.store.batching import GroupCommit

pytestmark = pytest.mark.unit


class Batches:
    """A run_batch that records each batch and, when gated, waits for the test to let it go."""

    def __init__(self, *, gated: bool = False) -> None:
        self.seen: list[list[int]] = []
        self.deadlines: list[float | None] = []
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.started = asyncio.Event()
        self.fail_with: Exception | None = None

    async def __call__(self, items: Sequence[int]) -> Sequence[str]:
        self.seen.append(list(items))
        self.deadlines.append(deadline.remaining())
        self.started.set()
        await self.gate.wait()
        if self.fail_with is not None:
            error, self.fail_with = self.fail_with, None
            raise error
        return [f"r{item}" for item in items]


async def started(batches: Batches) -> None:
    await batches.started.wait()
    batches.started.clear()


async def test_a_lone_call_leaves_at_once_and_a_crowd_rides_the_next_batch_in_order() -> None:
    batches = Batches(gated=True)
    group: GroupCommit[int, str] = GroupCommit(batches, max_batch=64)
    first = asyncio.create_task(group.submit(0))
    await started(batches)
    rest = [asyncio.create_task(group.submit(n)) for n in range(1, 6)]
    await asyncio.sleep(0)
    assert group.queued == 5
    batches.gate.set()
    assert await first == "r0"
    assert [await task for task in rest] == ["r1", "r2", "r3", "r4", "r5"]
    assert batches.seen == [[0], [1, 2, 3, 4, 5]]


async def test_batches_are_split_at_max_batch() -> None:
    batches = Batches(gated=True)
    group: GroupCommit[int, str] = GroupCommit(batches, max_batch=2)
    tasks = [asyncio.create_task(group.submit(n)) for n in range(5)]
    await started(batches)
    batches.gate.set()
    assert await asyncio.gather(*tasks) == ["r0", "r1", "r2", "r3", "r4"]
    assert batches.seen == [[0, 1], [2, 3], [4]]


async def test_a_failed_batch_fails_its_callers_and_only_them() -> None:
    batches = Batches(gated=True)
    group: GroupCommit[int, str] = GroupCommit(batches, max_batch=2)
    tasks = [asyncio.create_task(group.submit(n)) for n in range(3)]
    await started(batches)
    batches.fail_with = StoreUnavailable("redis down")
    batches.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [type(r).__name__ for r in results[:2]] == ["StoreUnavailable", "StoreUnavailable"]
    assert results[2] == "r2"


async def test_a_caller_past_its_deadline_gives_up_and_its_queued_item_is_never_sent() -> None:
    batches = Batches(gated=True)
    group: GroupCommit[int, str] = GroupCommit(batches)
    in_flight = asyncio.create_task(group.submit(0))
    await started(batches)
    with request_deadline(0.01), pytest.raises(StoreUnavailable, match="deadline"):
        await group.submit(1)  # queued behind a stalled batch
    patient = asyncio.create_task(group.submit(2))
    await asyncio.sleep(0)
    assert group.queued == 1  # the one that gave up left the queue
    batches.gate.set()
    assert (await in_flight, await patient) == ("r0", "r2")
    assert batches.seen == [[0], [2]]


async def test_a_caller_giving_up_in_flight_does_not_break_its_batch() -> None:
    batches = Batches(gated=True)
    group: GroupCommit[int, str] = GroupCommit(batches)
    blocker = asyncio.create_task(group.submit(0))
    await started(batches)
    impatient = asyncio.create_task(group.submit(1))
    other = asyncio.create_task(group.submit(2))
    batches.gate.set()
    await started(batches)  # the batch [1, 2] is in flight: the gate stays open, so it finishes
    impatient.cancel()
    assert await other == "r2" and await blocker == "r0"
    with pytest.raises(asyncio.CancelledError):
        await impatient
    assert batches.seen == [[0], [1, 2]]


async def test_a_cancelled_queued_caller_is_dropped() -> None:
    batches = Batches(gated=True)
    group: GroupCommit[int, str] = GroupCommit(batches)
    first = asyncio.create_task(group.submit(0))
    await started(batches)
    dropped = asyncio.create_task(group.submit(1))
    kept = asyncio.create_task(group.submit(2))
    await asyncio.sleep(0)
    dropped.cancel()
    batches.gate.set()
    assert (await first, await kept) == ("r0", "r2")
    assert batches.seen == [[0], [2]]


async def test_a_full_queue_sheds_at_once() -> None:
    batches = Batches(gated=True)
    group: GroupCommit[int, str] = GroupCommit(batches, max_queued=2)
    before = REGISTRY.get_sample_value("quota_group_commit_shed_total") or 0.0
    first = asyncio.create_task(group.submit(0))
    await started(batches)
    queued = [asyncio.create_task(group.submit(n)) for n in (1, 2)]
    await asyncio.sleep(0)
    with pytest.raises(StoreUnavailable, match="shed"):
        await group.submit(3)
    assert REGISTRY.get_sample_value("quota_group_commit_shed_total") == before + 1
    batches.gate.set()
    assert [await t for t in (first, *queued)] == ["r0", "r1", "r2"]


async def test_batches_run_outside_any_callers_deadline() -> None:
    batches = Batches()
    group: GroupCommit[int, str] = GroupCommit(batches)
    with request_deadline(5.0):
        assert await group.submit(1) == "r1"
    assert batches.deadlines == [None]  # a batch carries many requests: the store's own timeout bounds it


async def test_no_time_left_is_refused_without_queueing() -> None:
    batches = Batches()
    group: GroupCommit[int, str] = GroupCommit(batches)
    with request_deadline(0), pytest.raises(StoreUnavailable):
        await group.submit(1)
    assert batches.seen == []
