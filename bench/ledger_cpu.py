"""CPU per reserve + commit with the ledger off and on, in one process: ``python -m bench.ledger_cpu``.

The served comparison (``bench.ledger``) measures requests/s, which on a shared 2-core machine
swings by a quarter between runs. This one counts what the ledger costs the service itself:
the whole money path in process (``Quotas`` on a ``RedisCounterStore`` over a private
redis-server) at ``--concurrency`` concurrent callers, ``--pairs`` reserve + commit pairs,
with no outbox and no relay, then with the outbox and a running usage relay into a SQLite
ledger (drained before the clock stops), alternating for ``--rounds`` rounds. Reported: the
process CPU (user + system) per pair, each round and the medians, and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from quota_service.ledger import ledger_from_url
from quota_service.policy.validation import build_request
from quota_service.quotas import Quotas
from quota_service.reload import LivePolicy
from quota_service.server.usage_relay import UsageRelay
from quota_service.store.embedded import EmbeddedRedis
from quota_service.store.redis_store import RedisCounterStore

POLICIES = Path(__file__).resolve().parents[1] / "policies"


async def one_run(url: str, workdir: Path, *, ledger_on: bool, pairs: int, concurrency: int, run: int) -> float:
    """Process CPU microseconds per reserve + commit pair."""
    store = RedisCounterStore.from_url(url, timeout_seconds=5.0, outbox=ledger_on)
    ledger = ledger_from_url(f"sqlite:///{workdir / f'ledger-{run}.db'}") if ledger_on else None
    relay: UsageRelay | None = None
    if ledger is not None:
        await ledger.migrate()
        relay = UsageRelay(store=store, ledger=ledger)
        await relay.start()
    quotas = Quotas(policy=LivePolicy(POLICIES), store=store)
    numbers = iter(range(pairs))

    async def caller() -> None:
        for n in numbers:
            request = build_request(
                subject=f"cpu-{run}-{n % 3000}",
                feature="blog_writer",
                provider="openai",
                model="gpt-4o-mini",
                usage={"tokens": 1},
                request_id=f"{run}-{n}",
            )
            answer = await quotas.check_and_reserve(request)
            if answer.reservation_id:
                await quotas.commit(answer.reservation_id, {"tokens": 1})

    started = time.process_time()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    if relay is not None:
        while await relay.relay_once():  # every record stored: its cost is counted
            pass
    cpu = time.process_time() - started
    if relay is not None:
        await relay.stop()
    await store.close()
    if ledger is not None:
        await ledger.close()
    return cpu / pairs * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="quota-bench-ledger-cpu-") as tmp:
        server = EmbeddedRedis(data_dir=Path(tmp) / "redis", persistence=False)
        server.start()
        try:
            results: dict[bool, list[float]] = {False: [], True: []}
            run = 0
            for _ in range(args.rounds):
                for ledger_on in (False, True):
                    run += 1
                    us = asyncio.run(
                        one_run(
                            server.url,
                            Path(tmp),
                            ledger_on=ledger_on,
                            pairs=args.pairs,
                            concurrency=args.concurrency,
                            run=run,
                        )
                    )
                    results[ledger_on].append(us)
                    print(f"ledger {'on ' if ledger_on else 'off'}: {us:7.1f} us CPU per reserve + commit", flush=True)
        finally:
            server.stop()
    off, on = statistics.median(results[False]), statistics.median(results[True])
    print(f"median: off {off:.1f} us, on {on:.1f} us per pair; on / off = {on / off:.2f} (target <= 1.10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
