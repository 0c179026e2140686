"""What durability costs, side by side in one run: ``python -m bench.durability`` (``make bench-durability``).

Three quota-service servers (ledger off, so only the store differs), each on a redis-server of
its own with an append-only file in a temporary directory:

* ``everysec``: ``--appendfsync everysec`` (the embedded default: a power cut may lose the last
  second of acknowledged writes);
* ``always``: ``--appendfsync always`` (every write fsynced before its reply);
* ``wait1``: everysec, plus a replica, and the service started with ``--redis-wait-replicas 1``
  (every money write waits until the replica has it).

The load generator drives reserve + commit (``bench.loadgen --commit``) at each
``--concurrency``, the servers taking turns for ``--rounds`` rounds. Reported: requests/s and
p50 / p99 per server, and each one's ratio to ``everysec``. Ratios, not absolute times: the
machine is shared, and its disk's fsync is what ``always`` pays for.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from bench.run import ROOT, Children, run_cell, run_main, start_server
from quota_service.store.embedded import EmbeddedRedis

POLICIES = ROOT / "policies"
NAMES = ("everysec", "always", "wait1")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.durability", description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--subjects", type=int, default=20000)
    parser.add_argument("--tokens", type=float, default=1.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    args.concurrencies = [int(c) for c in args.concurrency.split(",") if c]
    args.channels = 1
    args.pool_sizes = {"hot": args.subjects}
    return args


def _wait_synced(replica: EmbeddedRedis) -> None:
    with redis.Redis.from_url(replica.url, decode_responses=True) as client:
        deadline = time.monotonic() + 30
        while client.info("replication")["master_link_status"] != "up":
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not sync within 30 s")
            time.sleep(0.1)


def bench(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="quota-bench-durability-") as tmp:
        base = Path(tmp)
        children = Children(base)
        stores: list[EmbeddedRedis] = []
        try:
            everysec = EmbeddedRedis(data_dir=base / "everysec", extra_args=("--repl-diskless-sync-delay", "0"))
            always = EmbeddedRedis(data_dir=base / "always", appendfsync="always")
            for store in (everysec, always):
                store.start()
                stores.append(store)
            port = everysec.url.rsplit(":", 1)[1].split("/")[0]
            replica = EmbeddedRedis(
                data_dir=base / "replica", persistence=False, extra_args=("--replicaof", "127.0.0.1", port)
            )
            replica.start()
            stores.append(replica)
            _wait_synced(replica)
            off = ("--ledger-url", "none")
            servers = {
                "everysec": start_server(children, "quota", everysec.url, POLICIES, name="everysec", extra_args=off),
                "always": start_server(children, "quota", always.url, POLICIES, name="always", extra_args=off),
                "wait1": start_server(
                    children,
                    "quota",
                    everysec.url,
                    POLICIES,
                    name="wait1",
                    extra_args=(*off, "--redis-wait-replicas", "1", "--redis-wait-ms", "100"),
                ),
            }
            pids = {"everysec": everysec.pid, "always": always.pid, "wait1": everysec.pid}
            cells: list[dict[str, Any]] = []
            for round_ in range(args.rounds):
                for c in args.concurrencies:
                    for name, server in servers.items():
                        cell = run_cell(
                            children, server, pids[name], concurrency=c, args=args, prime=False, commit=True
                        )
                        cell.update(server_name=name, round=round_)
                        cells.append(cell)
                        print(
                            f"round {round_ + 1} c={c:<3} {name:<9} {cell['rps']:8.0f} req/s  "
                            f"p50 {cell['p50_ms']:6.2f} ms  p99 {cell['p99_ms']:6.2f} ms",
                            file=sys.stderr,
                            flush=True,
                        )
        finally:
            children.stop_all()
            for store in reversed(stores):
                store.stop()
    table: dict[str, Any] = {}
    for c in args.concurrencies:
        row: dict[str, Any] = {}
        for name in NAMES:
            mine = [x for x in cells if x["concurrency"] == c and x["server_name"] == name]
            row[name] = {key: statistics.median(x[key] for x in mine) for key in ("rps", "p50_ms", "p99_ms")}
        for name in NAMES[1:]:
            row[f"{name}_over_everysec"] = row[name]["rps"] / row["everysec"]["rps"] if row["everysec"]["rps"] else 0.0
        table[str(c)] = row
    if args.json:
        print(json.dumps(table, indent=2))
    else:
        print("reserve + commit, median of the rounds:")
        for c, row in table.items():
            for name in NAMES:
                cell = row[name]
                print(
                    f"  c={c:<3} {name:<9} {cell['rps']:8.0f} req/s  p50 {cell['p50_ms']:6.2f} ms  "
                    f"p99 {cell['p99_ms']:6.2f} ms"
                )
            for name in NAMES[1:]:
                print(f"  c={c:<3} {name} / everysec: {row[f'{name}_over_everysec']:.2f}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main("bench.durability", lambda: bench(args))


if __name__ == "__main__":
    sys.exit(main())
