"""Python CPU per CheckAndReserve, in process: ``python -m bench.profile``.

Builds :class:`~quota_service.quotas.Quotas` over the shipped ``policies/`` and either a
:class:`~quota_service.store.memory_store.MemoryCounterStore` (``--store memory``: the
Python of the quota path alone) or a
:class:`~quota_service.store.redis_store.RedisCounterStore` on a private ``redis-server``
it starts on a free 127.0.0.1 port (``--store redis``: plus redis-py and the store's
Python side; Redis' own CPU is another process and not counted), then runs ``--requests``
CheckAndReserve calls round robin over ``--subjects`` subjects, ``--concurrency`` at a time
(``asyncio.gather`` in chunks), each with its own ``request_id`` (so each records its
answer for replays, as a retrying client's call does).

It prints the process CPU (``time.process_time``) per request, measured without the
profiler, and with ``--profile`` a second run under cProfile: the top entries by
cumulative and by total time. The requests are validated (``build_request``) before the
clock starts, and each chunk's reservations are released after it, untimed: what is
measured is ``Quotas.check_and_reserve`` and what it calls.

A warm-up pass (one request per subject) comes first, so each subject's config is cached
and its counters exist, as for a subject that was seen before.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from quota_service.policy.domain import Decision
from quota_service.policy.validation import QuotaRequest, build_request
from quota_service.quotas import Quotas
from quota_service.reload import LivePolicy
from quota_service.store.base import CounterStore
from quota_service.store.embedded import EmbeddedRedis
from quota_service.store.memory_store import MemoryCounterStore
from quota_service.store.redis_store import RedisCounterStore

POLICIES = Path(__file__).resolve().parents[1] / "policies"
#: Small enough that every call stays far below free_alpha's caps (1,000 tokens a day).
TOKENS_PER_REQUEST = 5


def requests_for(count: int, subjects: int, run: str) -> list[QuotaRequest]:
    return [
        build_request(
            subject=f"prof-{i % subjects:05d}",
            feature="blog_writer",
            provider="openai",
            model="gpt-4o-mini",
            usage={"tokens": TOKENS_PER_REQUEST},
            request_id=f"{run}-{i}",
        )
        for i in range(count)
    ]


class Meter:
    """CPU and wall time spent inside the timed sections only (and the profiler, if any,
    enabled only there)."""

    def __init__(self, profiler: cProfile.Profile | None = None) -> None:
        self.cpu = 0.0
        self.wall = 0.0
        self.redis_cpu = 0.0  # redis-server's CPU seconds in the timed sections (Redis store)
        self.profiler = profiler


async def drive(quotas: Quotas, requests: Sequence[QuotaRequest], concurrency: int, meter: Meter) -> int:
    """Run ``requests`` ``concurrency`` at a time; the number denied. Only the
    CheckAndReserve calls are timed: each chunk's reservations are then released, untimed,
    so the store holds at most one chunk's reservations open (the memory store's expiry
    sweep scans every open reservation of a scope, the company-wide one included: left
    open, 20,000 reservations would make the test double's sweep the whole profile)."""
    denied = 0
    for start in range(0, len(requests), concurrency):
        chunk = requests[start : start + concurrency]
        if meter.profiler:
            meter.profiler.enable()
        redis_cpu = await _redis_cpu(quotas.store)
        wall, cpu = time.perf_counter(), time.process_time()
        answers = await asyncio.gather(*(quotas.check_and_reserve(r) for r in chunk))
        meter.cpu += time.process_time() - cpu
        meter.wall += time.perf_counter() - wall
        meter.redis_cpu += await _redis_cpu(quotas.store) - redis_cpu
        if meter.profiler:
            meter.profiler.disable()
        denied += sum(1 for a in answers if a.outcome.decision is Decision.DENY)
        await asyncio.gather(*(quotas.release(a.reservation_id) for a in answers if a.reservation_id))
    return denied


async def run(store: CounterStore, args: argparse.Namespace) -> None:
    quotas = Quotas(policy=LivePolicy(POLICIES), store=store)
    tag = f"{time.time_ns():x}"
    await drive(quotas, requests_for(args.subjects, args.subjects, f"{tag}-warm"), args.concurrency, Meter())

    meter = Meter()
    denied = await drive(quotas, requests_for(args.requests, args.subjects, f"{tag}-timed"), args.concurrency, meter)
    print(
        f"store={args.store} requests={args.requests} subjects={args.subjects} concurrency={args.concurrency}: "
        f"{meter.cpu / args.requests * 1e6:.1f} us CPU per request "
        + (f"(+ {meter.redis_cpu / args.requests * 1e6:.1f} us in redis-server) " if meter.redis_cpu else "")
        + f"({args.requests / meter.wall:,.0f} req/s wall, {denied} denied)"
    )
    if denied:
        print(f"warning: {denied} requests were denied (the caps were reached): not the normal path")

    if args.profile:
        meter = Meter(cProfile.Profile())
        await drive(quotas, requests_for(args.requests, args.subjects, f"{tag}-profiled"), args.concurrency, meter)
        for order in ("cumulative", "tottime"):
            out = io.StringIO()
            pstats.Stats(meter.profiler, stream=out).sort_stats(order).print_stats(args.top)
            print(f"\n=== cProfile, top {args.top} by {order} ({args.requests} requests) ===")
            print(_trim(out.getvalue()))


async def _redis_cpu(store: CounterStore) -> float:
    """redis-server's own CPU seconds so far (INFO cpu; one round trip, outside the timed
    section), 0.0 for the memory store."""
    if not isinstance(store, RedisCounterStore):
        return 0.0
    info = await store.client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _trim(text: str) -> str:
    """pstats' table without its preamble of blank lines."""
    return "\n".join(line for line in text.splitlines() if line.strip()).rstrip()


async def _memory(args: argparse.Namespace) -> None:
    await run(MemoryCounterStore(timeout_seconds=5.0), args)


async def _redis(url: str, args: argparse.Namespace) -> None:
    store = RedisCounterStore.from_url(url, timeout_seconds=5.0)
    try:
        await run(store, args)
    finally:
        await store.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--subjects", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--store", choices=("memory", "redis"), default="memory")
    parser.add_argument("--profile", action="store_true", help="also run once under cProfile and print the top")
    parser.add_argument("--top", type=int, default=25, help="entries per cProfile table")
    args = parser.parse_args(argv)
    if args.store == "memory":
        asyncio.run(_memory(args))
        return 0
    with tempfile.TemporaryDirectory(prefix="quota-bench-profile-") as directory:
        server = EmbeddedRedis(data_dir=directory, persistence=False)
        server.start()
        try:
            asyncio.run(_redis(server.url, args))
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
