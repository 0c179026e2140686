"""The load generator: one process, one grpc.aio channel, N concurrent workers calling
CheckAndReserve in a closed loop for a fixed time after a warm-up.

``python -m bench.loadgen --target 127.0.0.1:PORT --concurrency 32 --warmup 1 --duration 5``
prints ``window-start`` and ``window-end`` when the measured window opens and closes, then
one JSON object on stdout: requests/s (completions inside the measured window),
p50/p99 latency (ms) of the calls started inside it, and the answers counted by decision
(ALLOW, WARN, DENY) and by gRPC error code.

Every call asks for ``--tokens`` tokens for subject ``bench-<i mod --subjects>`` (round
robin over a global call counter; ``--pick random``: drawn at random from the ``--subjects``,
so with many of them most are never seen) with a fresh ``request_id``. ``--channels N``:
N channels, each its own TCP connection (a local subchannel pool), the workers spread over
them, so a server of several processes sharing a port (SO_REUSEPORT) gets its connections
spread by the kernel; every system gets the same. ``--prime`` first sends one
``dry_run`` call per subject (not measured), so a server's per-subject caches are warm as
in a steady state. ``--commit``: each call is a CheckAndReserve and, when granted, the
Commit of its estimate (the whole money path, one usage record per call; latency and
requests/s are of the pair).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import grpc

from bench.workload import FEATURE, MODEL, PROVIDER, SUBJECT_PREFIX
from quota.v1 import quota_pb2, quota_pb2_grpc

#: No worker makes more calls than this in one run, however fast the server.
MAX_CALLS_PER_WORKER: Final = 5_000_000
CALL_TIMEOUT: Final = 5.0
DECISION_NAMES: Final = {
    quota_pb2.ALLOW: "ALLOW",
    quota_pb2.WARN: "WARN",
    quota_pb2.DENY: "DENY",
}


@dataclass(slots=True)
class WorkerResult:
    latencies: list[float] = field(default_factory=list)  # seconds, calls started in the window
    completed_in_window: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 1))))
    return sorted_values[rank - 1]


def _request(
    i: int, subjects: int, tokens: float, run_id: str, dry_run: bool, subject: int | None = None
) -> quota_pb2.CheckAndReserveRequest:
    return quota_pb2.CheckAndReserveRequest(
        subject=f"{SUBJECT_PREFIX}{i % subjects if subject is None else subject}",
        feature=FEATURE,
        provider=PROVIDER,
        model=MODEL,
        usage={"tokens": tokens},
        request_id="" if dry_run else f"{run_id}-{i}",
        dry_run=dry_run,
    )


async def _prime(
    stubs: Sequence[quota_pb2_grpc.QuotaServiceAsyncStub], subjects: int, tokens: float, run_id: str
) -> Counter[str]:
    """One dry run per subject and per stub (channel), 32 at a time; returns the answers by
    decision. Per channel: a server of several processes gets each subject on every
    connection, so whichever worker a connection reached is warm."""
    outcomes: Counter[str] = Counter()
    numbers: Iterator[tuple[int, int]] = iter([(k, i) for i in range(subjects) for k in range(len(stubs))])

    async def worker() -> None:
        for k, i in numbers:
            try:
                request = _request(i, subjects, tokens, run_id, True)
                reply = await stubs[k].CheckAndReserve(request, timeout=CALL_TIMEOUT)
                outcomes[DECISION_NAMES.get(reply.decision, "UNSPECIFIED")] += 1
            except grpc.aio.AioRpcError as exc:
                outcomes[f"error:{exc.code().name}"] += 1

    await asyncio.gather(*(worker() for _ in range(min(32, subjects * len(stubs)))))
    return outcomes


async def run(
    *,
    target: str,
    concurrency: int,
    warmup: float,
    duration: float,
    subjects: int,
    tokens: float,
    prime: bool,
    pick: str = "roundrobin",
    channels: int = 1,
    prime_all: bool = False,
    commit: bool = False,
) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:12]
    draw = random.Random(run_id).randrange if pick == "random" else None
    count = max(1, min(channels, concurrency))
    options = [("grpc.use_local_subchannel_pool", 1)] if count > 1 else []
    opened = [grpc.aio.insecure_channel(target, options=options) for _ in range(count)]
    try:
        for channel in opened:
            await asyncio.wait_for(channel.channel_ready(), timeout=10.0)
        stubs: list[quota_pb2_grpc.QuotaServiceAsyncStub] = [quota_pb2_grpc.QuotaServiceStub(ch) for ch in opened]
        primed: Counter[str] = Counter()
        if prime:
            primed = await _prime(stubs if prime_all else stubs[:1], subjects, tokens, run_id)
        calls = itertools.count()
        cpu_start = time.process_time()
        start = time.perf_counter()
        window_start = start + warmup
        window_end = window_start + duration

        async def worker(stub: quota_pb2_grpc.QuotaServiceAsyncStub) -> WorkerResult:
            result = WorkerResult()
            for _ in range(MAX_CALLS_PER_WORKER):
                n = next(calls)
                request = _request(n, subjects, tokens, run_id, False, draw(subjects) if draw else None)
                t0 = time.perf_counter()
                if t0 >= window_end:
                    break
                try:
                    reply = await stub.CheckAndReserve(request, timeout=CALL_TIMEOUT)
                    outcome = DECISION_NAMES.get(reply.decision, "UNSPECIFIED")
                    if commit and reply.reservation_id:
                        settle = quota_pb2.CommitRequest(reservation_id=reply.reservation_id, usage=request.usage)
                        await stub.Commit(settle, timeout=CALL_TIMEOUT)
                except grpc.aio.AioRpcError as exc:
                    outcome = f"error:{exc.code().name}"
                t1 = time.perf_counter()
                if window_start <= t1 <= window_end:
                    result.completed_in_window += 1
                if t0 >= window_start:
                    result.latencies.append(t1 - t0)
                    result.outcomes[outcome] += 1
            return result

        async def mark_window() -> None:
            """Tells the parent when the measured window opens and closes (it samples CPU then)."""
            await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
            print("window-start", flush=True)
            await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
            print("window-end", flush=True)

        marker = asyncio.create_task(mark_window())
        results = await asyncio.gather(*(worker(stubs[k % count]) for k in range(concurrency)))
        await marker
        cpu_seconds = time.process_time() - cpu_start
        wall = time.perf_counter() - start
    finally:
        for channel in opened:
            await channel.close(None)
    latencies = sorted(lat for r in results for lat in r.latencies)
    outcomes: Counter[str] = Counter()
    for r in results:
        outcomes.update(r.outcomes)
    completed = sum(r.completed_in_window for r in results)
    return {
        "target": target,
        "concurrency": concurrency,
        "warmup_s": warmup,
        "duration_s": duration,
        "calls": len(latencies),
        "rps": completed / duration,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "mean_ms": (sum(latencies) / len(latencies) * 1000) if latencies else 0.0,
        "outcomes": dict(sorted(outcomes.items())),
        "primed": dict(sorted(primed.items())),
        "client_cpu_pct": 100.0 * cpu_seconds / wall if wall > 0 else 0.0,
        "pid": os.getpid(),
        "pick": pick,
        "channels": count,
        "commit": commit,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="127.0.0.1:PORT")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--subjects", type=int, default=2000)
    parser.add_argument("--tokens", type=float, default=10.0)
    parser.add_argument("--prime", action="store_true", help="one dry run per subject before the warm-up")
    parser.add_argument(
        "--prime-all-channels", action="store_true", help="prime each subject on every channel (several workers)"
    )
    parser.add_argument("--pick", choices=("roundrobin", "random"), default="roundrobin", help="how subjects are drawn")
    parser.add_argument("--channels", type=int, default=1, help="channels (TCP connections), at most --concurrency")
    parser.add_argument("--commit", action="store_true", help="commit each granted reservation (reserve + commit)")
    args = parser.parse_args(argv)
    if not args.target.startswith("127.0.0.1:"):
        parser.error("the load generator only talks to 127.0.0.1")
    if not (1 <= args.concurrency <= 1024 and args.subjects >= 1 and 0 < args.duration <= 600 and args.warmup >= 0):
        parser.error("out of range: 1 <= concurrency <= 1024, subjects >= 1, 0 < duration <= 600, warmup >= 0")
    report = asyncio.run(
        run(
            target=args.target,
            concurrency=args.concurrency,
            warmup=args.warmup,
            duration=args.duration,
            subjects=args.subjects,
            tokens=args.tokens,
            prime=args.prime,
            pick=args.pick,
            channels=args.channels,
            prime_all=args.prime_all_channels,
            commit=args.commit,
        )
    )
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
