"""TopUsage from the top spenders' boards the scripts keep as used changes: the same answer as
the scan, without scanning every key; resets follow; a window with no board falls back."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from quota_service.policy.domain import CounterCharge, CounterRef
from quota_service.policy.windows import Window
from quota_service.store import keys
from quota_service.store.admin_store import RedisAdminStore
from quota_service.store.base import ReserveCommand
from quota_service.store.redis_store import RedisCounterStore

pytestmark = pytest.mark.redis

DAY = time.strftime("%Y-%m-%d", time.gmtime())
RESETS = int(time.time()) // 86400 * 86400 + 86400


@pytest.fixture
async def stores(redis_url: str) -> AsyncIterator[tuple[RedisCounterStore, RedisAdminStore, redis.asyncio.Redis]]:
    counters = RedisCounterStore.from_url(redis_url, timeout_seconds=5.0)
    raw = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield counters, RedisAdminStore(counters=counters), raw
    finally:
        await raw.aclose()
        await counters.close()


async def spend(counters: RedisCounterStore, who: str, units: int, n: int) -> None:
    ref = CounterRef(who, "tokens", Window.DAY, DAY, RESETS)
    command = ReserveCommand(
        subject=who,
        reservation_id=keys.new_reservation_id(who),
        request_id=f"r-{n}",
        subject_charges=(CounterCharge(ref, units, 10**9, 10**9),),
        global_charges=(),
        now_ms=int(time.time() * 1000),
        ttl_seconds=60,
        estimate={"tokens": units},
    )
    result = await counters.reserve(command)
    await counters.commit(result.reservation_id, {"tokens": units}, int(time.time() * 1000))


async def test_the_boards_answer_as_the_scan_does(
    stores: tuple[RedisCounterStore, RedisAdminStore, redis.asyncio.Redis],
) -> None:
    counters, admin, raw = stores
    for i in range(30):
        await spend(counters, f"s-{i:02d}", 10 * (i % 7) + 1, i)
    board = keys.board_key(keys.SINGLE_TAG, "tokens", "day", DAY)
    assert await raw.zcard(board) == 30
    from_boards = await admin.top_usage("tokens", Window.DAY, DAY, 5)
    by_scan = await admin._top_by_scan("tokens", Window.DAY, DAY, 5)
    assert from_boards == by_scan and len(from_boards) == 5
    assert [r.used for r in from_boards] == [61, 61, 61, 61, 51]  # ties ranked by subject, as the scan does
    # a reset follows on the board
    top = from_boards[0].subject
    await admin.reset_usage(top, "tokens", Window.DAY)
    assert top not in [r.subject for r in await admin.top_usage("tokens", Window.DAY, DAY, 5)]
    assert await raw.zscore(board, top) == 0
    # the scan reads no board: delete them and the answer is the same
    await raw.delete(board)
    assert await admin.top_usage("tokens", Window.DAY, DAY, 5) == await admin._top_by_scan("tokens", Window.DAY, DAY, 5)
