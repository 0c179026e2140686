"""The service killed (SIGKILL) in the middle of a burst: no counter is half-written, and the
reservations it left open expire and are settled at their estimates.

The invariant checked on every counter after the crash: ``held`` equals the sum of the asks
of the open reservation records that name it, and ``used`` is 0 (nothing was committed).
Each Lua script either wrote all of a reservation (counters, record, open set) or nothing.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import defaultdict
from pathlib import Path

import grpc
import pytest
import redis
from support.server_process import ServerProcess

from quota.v1 import quota_pb2, quota_pb2_grpc
from quota_service.store import keys

pytestmark = pytest.mark.e2e

SUBJECTS = [f"crash-{i}" for i in range(8)]


async def burst(target: str, calls: int, answered: asyncio.Event | None = None) -> list[object]:
    """``calls`` concurrent reservations; ``answered`` is set once a tenth of them are answered."""
    done = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = quota_pb2_grpc.QuotaServiceStub(channel)

        async def one(i: int) -> object:
            request = quota_pb2.CheckAndReserveRequest(
                subject=SUBJECTS[i % len(SUBJECTS)],
                feature="blog_writer",
                provider="openai",
                model="gpt-4o-mini",
                usage={"tokens": 7},
                request_id=f"req-{i}",
                reservation_ttl_seconds=2,
            )
            nonlocal done
            try:
                reply = await stub.CheckAndReserve(request, timeout=5)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            done += 1
            if answered is not None and done >= calls // 10:
                answered.set()
            return reply

        return list(await asyncio.gather(*(one(i) for i in range(calls))))


def counters_and_open_records(client: redis.Redis) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
    counters = {
        key: (int(v.get("used", 0)), int(v.get("held", 0)))
        for key in client.scan_iter("q:*")
        if (v := client.hgetall(key))
    }
    expected_held: dict[str, int] = defaultdict(int)
    for key in client.scan_iter("r:*"):
        if client.type(key) != "hash":
            continue  # a settled record (tombstone) holds nothing
        record = client.hgetall(key)
        if record.get("state") == "open":
            tag = key.split(":", 2)[1]
            for entry, ask in zip(record["layout"].split(), record["asks"].split(","), strict=True):
                expected_held[f"q:{tag}:{entry.partition('@')[0]}"] += int(ask)
    return counters, dict(expected_held)


def test_sigkill_mid_burst_leaves_whole_reservations_that_expire_at_their_estimate(
    redis_url: str, tmp_path: Path
) -> None:
    server = ServerProcess(redis_url=redis_url, workdir=tmp_path)
    server.start()

    async def kill_during_burst() -> list[object]:
        answered = asyncio.Event()
        calls = asyncio.create_task(burst(server.target, 400, answered))
        async with asyncio.timeout(10):  # the burst is under way: a tenth of it answered
            await answered.wait()
        assert server.process is not None
        server.process.send_signal(signal.SIGKILL)
        return await calls

    answers = asyncio.run(kill_during_burst())
    server.stop()
    granted = [a for a in answers if isinstance(a, quota_pb2.CheckAndReserveResponse) and a.reservation_id]
    failed = [a for a in answers if not isinstance(a, quota_pb2.CheckAndReserveResponse)]
    assert granted and failed, (len(granted), len(failed))  # the kill really landed mid-burst
    print(f"granted before the kill: {len(granted)}, cut off: {len(failed)}")

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        counters, expected_held = counters_and_open_records(client)
        assert counters, "nothing was reserved before the kill"
        for key, (used, held) in counters.items():
            assert used == 0, key
            assert held == expected_held.get(key, 0), key  # whole reservations only
        # Every reservation a client was told about exists, open, in Redis.
        records = set(client.scan_iter("r:{crash-*}:*"))
        granted_records = {keys.record_key(n.subject, n.name) for n in (keys.parse(a.reservation_id) for a in granted)}
        assert granted_records <= records

        # The service comes back; the orphans expire (TTL 2 s) and are settled at their estimate
        # by the first read after their expiry: read until nothing is held any more.
        server.start()
        with grpc.insecure_channel(server.target) as channel:
            stub = quota_pb2_grpc.QuotaServiceStub(channel)
            deadline = time.monotonic() + 15
            while True:
                usages = [stub.GetUsage(quota_pb2.GetUsageRequest(subject=who), timeout=5) for who in SUBJECTS]
                if all(limit.held == 0 for usage in usages for limit in usage.limits):
                    break
                assert time.monotonic() < deadline, "the orphans were not settled within 15 s"
                time.sleep(0.1)
        subject_counters = {k: v for k, v in counters.items() if "{crash-" in k}
        settled, _ = counters_and_open_records(client)
        for key, (_, held_before) in subject_counters.items():
            assert settled[key] == (held_before, 0), key  # held moved to used, nothing lost or refunded
    finally:
        client.close()
        server.stop()
