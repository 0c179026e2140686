"""The usage ledger's cost, side by side in one run: ``python -m bench.ledger`` (``make bench-ledger``).

Two quota-service servers on one redis-server of their own (127.0.0.1, a free port): one
with ``--ledger-url none`` (no outbox, no relay) and one with the default SQLite ledger in
its data dir (plus one on ``--ledger-url URL`` when given, e.g. a PostgreSQL). The load
generator drives the whole money path, CheckAndReserve then Commit of each granted call
(``bench.loadgen --commit``: one usage record per call), at each ``--concurrency``, the
servers taking turns for ``--rounds`` rounds (so machine noise hits all alike). Reported:

* requests/s and p50 / p99 of the reserve + commit pair, per server, and the ratio of each
  ledger server to the ledger-off one (the issue's target: within 10 %, a ratio >= 0.90);
* **drain**: for the SQLite ledger, how long the COMMITTED records took from the Lua step
  (``at_ms``) to their row (``recorded_at_ms``): p50 / p99 / max (target: p99 < 2 s), and
  how many records are stored against how many commits were answered;
* what waited in the outbox at the end (entries).

Ratios, not absolute times: the machine is shared and noisy. Never a timed test.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from bench.loadgen import percentile
from bench.run import ROOT, Children, run_cell, run_main, start_redis, start_server
from quota_service.store import keys

POLICIES = ROOT / "policies"
#: COMMITTED records' kind in the ledger.
COMMITTED = 1
TARGET_RATIO = 0.90
TARGET_DRAIN_P99_S = 2.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger", description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,32", help="comma-separated (default 1,32)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per cell")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--subjects", type=int, default=20000, help="round robin (free_alpha: 95 calls each a day)")
    parser.add_argument("--tokens", type=float, default=1.0)
    parser.add_argument("--ledger-url", default="", help="a third server on this ledger (e.g. postgresql://...)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    args.concurrencies = [int(c) for c in args.concurrency.split(",") if c]
    args.channels = 1
    args.pool_sizes = {"hot": args.subjects}
    return args


def drain_stats(ledger_file: Path, since_ms: int) -> dict[str, float]:
    """Lag (seconds) of the COMMITTED records stored since ``since_ms``, from the Lua step to the row."""
    with sqlite3.connect(ledger_file) as db:
        rows = db.execute(
            "SELECT recorded_at_ms - at_ms FROM events WHERE kind = ? AND at_ms >= ?", (COMMITTED, since_ms)
        ).fetchall()
    lags = sorted(max(0, r[0]) / 1000 for r in rows)
    return {
        "records": len(lags),
        "p50_s": percentile(lags, 0.50),
        "p99_s": percentile(lags, 0.99),
        "max_s": lags[-1] if lags else 0.0,
    }


def bench(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="quota-bench-ledger-") as tmp:
        children = Children(Path(tmp))
        try:
            redis_process, url = start_redis(children)
            servers = {
                "off": start_server(
                    children, "quota", url, POLICIES, name="ledger-off", extra_args=("--ledger-url", "none")
                ),
                "sqlite": start_server(children, "quota", url, POLICIES, name="ledger-sqlite"),
            }
            if args.ledger_url:
                servers["url"] = start_server(
                    children, "quota", url, POLICIES, name="ledger-url", extra_args=("--ledger-url", args.ledger_url)
                )
            started_ms = int(time.time() * 1000)
            cells: list[dict[str, Any]] = []
            for round_ in range(args.rounds):
                for c in args.concurrencies:
                    for name, server in servers.items():
                        cell = run_cell(
                            children, server, redis_process.pid, concurrency=c, args=args, prime=False, commit=True
                        )
                        cell.update(server_name=name, round=round_)
                        cells.append(cell)
                        print(
                            f"round {round_ + 1} c={c:<3} {name:<7} {cell['rps']:8.0f} req/s  "
                            f"p50 {cell['p50_ms']:6.2f} ms  p99 {cell['p99_ms']:6.2f} ms",
                            file=sys.stderr,
                            flush=True,
                        )
            time.sleep(3.0)  # the relay's last passes
            ledger_file = Path(tmp) / "ledger-sqlite-data" / "ledger.db"
            drain = drain_stats(ledger_file, started_ms)
            raw = redis.Redis.from_url(url, decode_responses=True)
            try:
                waiting = int(raw.xlen(keys.outbox_key(keys.SINGLE_TAG)))
            finally:
                raw.close()
            answered = sum(
                c["outcomes"].get("ALLOW", 0) + c["outcomes"].get("WARN", 0)
                for c in cells
                if c["server_name"] == "sqlite"
            )
        finally:
            children.stop_all()
    report = summarize(cells, args.concurrencies, list(servers))
    report["drain_sqlite"] = {**drain, "granted_calls_measured": answered, "outbox_left": waiting}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report))
    return 0


def summarize(cells: list[dict[str, Any]], concurrencies: Sequence[int], names: Sequence[str]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for c in concurrencies:
        row: dict[str, Any] = {}
        for name in names:
            mine = [x for x in cells if x["concurrency"] == c and x["server_name"] == name]
            row[name] = {
                "rps": statistics.median(x["rps"] for x in mine),
                "p50_ms": statistics.median(x["p50_ms"] for x in mine),
                "p99_ms": statistics.median(x["p99_ms"] for x in mine),
            }
        for name in names:
            if name != "off":
                row[f"{name}_over_off"] = row[name]["rps"] / row["off"]["rps"] if row["off"]["rps"] else 0.0
                row[f"{name}_p50_over_off"] = (
                    row[name]["p50_ms"] / row["off"]["p50_ms"] if row["off"]["p50_ms"] else 0.0
                )
        table[str(c)] = row
    return {"by_concurrency": table}


def render(report: dict[str, Any]) -> str:
    lines = ["reserve + commit, median of the rounds (ledger servers against the ledger-off one):"]
    for c, row in report["by_concurrency"].items():
        for name, cell in row.items():
            if isinstance(cell, dict):
                lines.append(
                    f"  c={c:<3} {name:<7} {cell['rps']:8.0f} req/s  "
                    f"p50 {cell['p50_ms']:6.2f} ms  p99 {cell['p99_ms']:6.2f} ms"
                )
        for name, value in row.items():
            if name.endswith("_over_off") and not name.endswith("p50_over_off"):
                met = "MET" if value >= TARGET_RATIO else "NOT MET"
                lines.append(f"  c={c:<3} {name}: {value:.2f} (target >= {TARGET_RATIO:.2f}: {met})")
    drain = report["drain_sqlite"]
    met = "MET" if drain["p99_s"] < TARGET_DRAIN_P99_S else "NOT MET"
    lines.append(
        f"drain (SQLite): {drain['records']} COMMITTED records for {drain['granted_calls_measured']} measured grants "
        f"(and the warm-ups); lag p50 {drain['p50_s']:.3f} s, p99 {drain['p99_s']:.3f} s "
        f"(target < {TARGET_DRAIN_P99_S:g} s: {met}), max {drain['max_s']:.3f} s; "
        f"left in the outbox: {drain['outbox_left']}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main("bench.ledger", lambda: bench(args))


if __name__ == "__main__":
    sys.exit(main())
