"""How many bytes of Redis memory one request leaves behind: ``python -m bench.memory``.

Drives the whole quota path in process (:class:`~quota_service.quotas.Quotas` with the
shipped ``policies/`` on a :class:`~quota_service.store.redis_store.RedisCounterStore`)
against its own ``redis-server`` on a free 127.0.0.1 port (no persistence; never the shared
one), and reports Redis' ``used_memory`` growth:

* **per open reservation**: after ``--requests`` CheckAndReserve calls (each with its own
  ``request_id``, round robin over ``--subjects`` subjects), before any Commit;
* **per settled request**: after committing every one of them and waiting
  ``--settle-seconds`` (default 10 s), i.e. what a request costs for as long as its
  answer is kept for replays (its reservation's lifetime plus the store's grace), once its
  usage record has left the outbox for the ledger (the outbox is emptied as the usage relay
  empties it); and **per record waiting in the outbox** (while the ledger is down).

Every request estimates ``TOKENS_PER_REQUEST`` tokens; with ``--vary-asks`` request ``i``
estimates ``10 + i % 97`` (as real token estimates vary from call to call: what is
shared between requests must not depend on it). Give it enough ``--subjects`` to stay
below free_alpha's 1,000 tokens a day (300 subjects for 3,000 requests).

A warm-up request per subject is made and settled first, so the baseline already holds the
per-subject keys every later request shares (counters, the subject's shared texts): what
is measured is what each further request adds.

The measure is ``used_memory`` (what Redis' allocator handed out, not RSS), taken with
every connection but the measuring one closed: Redis grows and shrinks connection buffers
(16 KB and more each) with the traffic, which would drown what it keeps. So measured, it
is deterministic to a few bytes per request between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import redis.asyncio

from quota_service.policy.domain import Decision
from quota_service.policy.validation import build_request
from quota_service.quotas import Quotas
from quota_service.reload import LivePolicy
from quota_service.store import keys
from quota_service.store.embedded import EmbeddedRedis
from quota_service.store.redis_store import RedisCounterStore

T = TypeVar("T")

POLICIES = Path(__file__).resolve().parents[1] / "policies"
#: Small enough that 3,000 requests over 30 subjects stay far below free_alpha's caps.
TOKENS_PER_REQUEST = 5
#: Requests in flight at once.
BURST = 100


@dataclass(frozen=True, slots=True)
class MemoryReport:
    requests: int
    subjects: int
    settle_seconds: float
    bytes_per_open_reservation: float
    bytes_per_settled_request: float
    keys_per_settled_request: float
    bytes_per_waiting_record: float
    denied: int
    vary_asks: bool = False


async def retained_memory(client: redis.asyncio.Redis) -> int:
    """Bytes Redis keeps for data: ``used_memory`` with no connection but ``client``'s open
    (waits until the others are gone: their buffers are the traffic's, not the data's)."""
    while int((await client.info("clients"))["connected_clients"]) > 1:  # noqa: ASYNC110 (Redis' state)
        await asyncio.sleep(0.01)
    return int((await client.info("memory"))["used_memory"])


async def measure(
    url: str,
    *,
    requests: int,
    subjects: int,
    settle_seconds: float,
    policies: Path = POLICIES,
    vary_asks: bool = False,
) -> MemoryReport:
    """Reserve ``requests`` (with request ids) round robin over ``subjects``, commit them all,
    and report the ``used_memory`` growth per open reservation and per settled request.
    ``vary_asks``: request ``i`` estimates :func:`tokens_of` ``i`` tokens, not a constant.

    Each phase runs on its own store (its connections closed before Redis is measured)."""
    raw = redis.asyncio.Redis.from_url(url, decode_responses=True)
    policy = LivePolicy(policies)
    names = [f"mem-{i:03d}" for i in range(subjects)]
    run = f"{time.time_ns():x}"

    async def phase(work: Callable[[Quotas], Awaitable[T]]) -> T:
        store = RedisCounterStore.from_url(url, timeout_seconds=5.0)
        try:
            return await work(Quotas(policy=policy, store=store))
        finally:
            await store.close()

    async def reserve(quotas: Quotas, index: int) -> tuple[str, int]:
        tokens = tokens_of(index) if vary_asks and index >= 0 else TOKENS_PER_REQUEST
        request = build_request(
            subject=names[index % subjects],
            feature="blog_writer",
            provider="openai",
            model="gpt-4o-mini",
            usage={"tokens": tokens},
            request_id=f"{run}-{index}",
        )
        answer = await quotas.check_and_reserve(request)
        return (answer.reservation_id if answer.outcome.decision is not Decision.DENY else "", tokens)

    async def reserve_all(quotas: Quotas, indexes: Sequence[int]) -> list[tuple[str, int]]:
        reserved: list[tuple[str, int]] = []
        for start in range(0, len(indexes), BURST):
            reserved += await asyncio.gather(*(reserve(quotas, i) for i in indexes[start : start + BURST]))
        return reserved

    async def commit_all(quotas: Quotas, reserved: Sequence[tuple[str, int]]) -> None:
        for start in range(0, len(reserved), BURST):
            chunk = [(rid, used) for rid, used in reserved[start : start + BURST] if rid]
            await asyncio.gather(*(quotas.commit(rid, {"tokens": used}) for rid, used in chunk))

    async def warm_up(quotas: Quotas) -> None:  # one request per subject, settled
        await commit_all(quotas, await reserve_all(quotas, [-1 - i for i in range(subjects)]))

    async def drain_outbox() -> int:  # what the usage relay does once the ledger has the records
        key = keys.outbox_key(keys.SINGLE_TAG)
        entries = int(await raw.xlen(key))
        await raw.xtrim(key, maxlen=0, approximate=False)
        return entries

    try:
        await phase(warm_up)
        await drain_outbox()
        baseline = await retained_memory(raw)
        keys_before = int(await raw.dbsize())

        reserved = await phase(lambda quotas: reserve_all(quotas, range(requests)))
        opened = await retained_memory(raw)

        await phase(lambda quotas: commit_all(quotas, reserved))
        if settle_seconds > 0:
            await asyncio.sleep(settle_seconds)
        pending = await retained_memory(raw)
        records = await drain_outbox()
        settled = await retained_memory(raw)
        keys_after = int(await raw.dbsize())
        granted = sum(1 for rid, _ in reserved if rid)
        return MemoryReport(
            requests=requests,
            subjects=subjects,
            settle_seconds=settle_seconds,
            bytes_per_open_reservation=(opened - baseline) / max(granted, 1),
            bytes_per_settled_request=(settled - baseline) / requests,
            keys_per_settled_request=(keys_after - keys_before) / requests,
            bytes_per_waiting_record=(pending - settled) / max(records, 1),
            denied=requests - granted,
            vary_asks=vary_asks,
        )
    finally:
        await raw.aclose()


def tokens_of(index: int) -> int:
    """The token estimate of request ``index`` with ``--vary-asks``."""
    return 10 + index % 97


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--subjects", type=int, default=30)
    parser.add_argument("--settle-seconds", type=float, default=10.0, help="wait after the last commit (seconds)")
    parser.add_argument(
        "--vary-asks", action="store_true", help="each request a different token estimate (10 + i %% 97)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="quota-bench-memory-") as directory:
        server = EmbeddedRedis(data_dir=directory, persistence=False)
        server.start()
        try:
            report = asyncio.run(
                measure(
                    server.url,
                    requests=args.requests,
                    subjects=args.subjects,
                    settle_seconds=args.settle_seconds,
                    vary_asks=args.vary_asks,
                )
            )
        finally:
            server.stop()
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print(
            f"{report.requests} requests over {report.subjects} subjects"
            f"{' (varying asks)' if report.vary_asks else ''} "
            f"(used_memory, {report.settle_seconds:g} s after the last commit):\n"
            f"  per open reservation: {report.bytes_per_open_reservation:8.0f} bytes\n"
            f"  per settled request:  {report.bytes_per_settled_request:8.0f} bytes "
            f"({report.keys_per_settled_request:.2f} keys), its usage record stored in the ledger\n"
            f"  per usage record waiting in the outbox: {report.bytes_per_waiting_record:8.0f} bytes"
        )
        if report.denied:
            print(f"  warning: {report.denied} requests were denied (the measure counts them as settled)")
    return 1 if report.denied else 0


if __name__ == "__main__":
    sys.exit(main())
