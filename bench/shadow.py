"""What a shadow policy costs the live answer, side by side in one run: ``python -m bench.shadow``
(``make bench-shadow``).

Two quota-service servers on one redis-server of their own (127.0.0.1, a free port), both
with the shipped ``policies/`` and the default SQLite ledger: **live** serves the policy
alone, **shadow** also decides ``--shadow-policies`` on every CheckAndReserve: the shipped
policy with free_alpha's tokens/day cap cut to ``--shadow-cap`` (default 3), so that, with
the default 1 token per call, most calls diverge (ALLOW->WARN, ALLOW->DENY) and the
divergence counting and sampling paths run too, not only the agreeing decision. The load
generator drives CheckAndReserve (``bench.loadgen``: a fresh request_id per call, round robin
over ``--subjects``) at each ``--concurrency``, the two servers taking turns for ``--rounds``
rounds (so machine noise hits both alike). Redis is flushed before every cell (keeping
the store identity, or the servers would rightly fail closed).

Reported per concurrency (median of the rounds): requests/s and p50 / p99 of each, the
ratio shadow / live of requests/s (the issue's target: the live answer is never slowed by
more than 10 %: a ratio >= 0.90), of p50 and of the server's CPU per request (what the
shadow work costs, less sensitive to other tenants than requests/s), and how many requests the shadow policy
decided and found diverging over the whole run (``quota_shadow_*_total`` from the shadow
server's /metrics): proof the shadow work was done, not skipped.

Ratios, not absolute times: the machine is shared and noisy. Never a timed test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from bench.run import ROOT, Children, flush_keeping_identity, run_cell, run_main, start_redis, start_server
from quota_service.store.embedded import free_port

POLICIES = ROOT / "policies"
TARGET_RATIO = 0.90
FREE_TOKENS = "      tokens: {day: 1000}\n      images: {day: 5}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.shadow", description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,32", help="comma-separated (default 1,32)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per cell")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--subjects", type=int, default=2000, help="round robin")
    parser.add_argument("--tokens", type=float, default=1.0)
    parser.add_argument("--shadow-cap", type=int, default=3, help="free_alpha's tokens/day in the shadow policy")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    args.concurrencies = [int(c) for c in args.concurrency.split(",") if c]
    args.channels = 1
    args.pool_sizes = {"hot": args.subjects}
    return args


def shadow_policy(directory: Path, cap: int) -> Path:
    text = (POLICIES / "alpha.yaml").read_text()
    if text.count(FREE_TOKENS) != 1:
        raise SystemExit("bench.shadow: policies/alpha.yaml no longer has free_alpha's tokens line")
    directory.mkdir()
    path = directory / "alpha.yaml"
    path.write_text(text.replace(FREE_TOKENS, FREE_TOKENS.replace("1000", str(cap))))
    return path


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("quota_shadow_"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def bench(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="quota-bench-shadow-") as tmp:
        children = Children(Path(tmp))
        try:
            redis_process, url = start_redis(children)
            metrics_port = free_port()
            candidate = shadow_policy(Path(tmp) / "shadow-policies", args.shadow_cap)
            servers = {
                "live": start_server(children, "quota", url, POLICIES, name="live"),
                "shadow": start_server(
                    children,
                    "quota",
                    url,
                    POLICIES,
                    name="shadow",
                    extra_args=("--shadow-policies", str(candidate), "--metrics-port", str(metrics_port)),
                ),
            }
            raw = redis.Redis.from_url(url)
            cells: list[dict[str, Any]] = []
            try:
                for round_ in range(args.rounds):
                    for c in args.concurrencies:
                        for name, server in servers.items():
                            flush_keeping_identity(raw, db_only=True)
                            cell = run_cell(children, server, redis_process.pid, concurrency=c, args=args, prime=False)
                            cell.update(server_name=name, round=round_)
                            cells.append(cell)
                            print(
                                f"round {round_ + 1} c={c:<3} {name:<6} {cell['rps']:8.0f} req/s  "
                                f"p50 {cell['p50_ms']:6.2f} ms  p99 {cell['p99_ms']:6.2f} ms",
                                file=sys.stderr,
                                flush=True,
                            )
            finally:
                raw.close()
            shadowed = scrape(metrics_port)
        finally:
            children.stop_all()
    report = summarize(cells, args.concurrencies)
    report["shadow_metrics"] = shadowed
    report["shadow_cap"] = args.shadow_cap
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def summarize(cells: list[dict[str, Any]], concurrencies: Sequence[int]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for c in concurrencies:
        row: dict[str, Any] = {}
        for name in ("live", "shadow"):
            mine = [x for x in cells if x["concurrency"] == c and x["server_name"] == name]
            row[name] = {
                "rps": statistics.median(x["rps"] for x in mine),
                "p50_ms": statistics.median(x["p50_ms"] for x in mine),
                "p99_ms": statistics.median(x["p99_ms"] for x in mine),
                "server_cpu_pct": statistics.median(x["server_cpu_pct"] for x in mine),
                "outcomes": dict(sum((Counter(x["outcomes"]) for x in mine), Counter())),
            }
        for cell, mine in ((row["live"], "live"), (row["shadow"], "shadow")):
            per_request = [
                x["server_cpu_pct"] * 1e4 / x["rps"]
                for x in cells
                if x["concurrency"] == c and x["server_name"] == mine and x["rps"]
            ]
            cell["server_cpu_us_per_request"] = statistics.median(per_request) if per_request else 0.0
        live, shadow = row["live"], row["shadow"]
        row["shadow_over_live"] = shadow["rps"] / live["rps"] if live["rps"] else 0.0
        row["shadow_cpu_over_live"] = (
            shadow["server_cpu_us_per_request"] / live["server_cpu_us_per_request"]
            if live["server_cpu_us_per_request"]
            else 0.0
        )
        row["shadow_p50_over_live"] = shadow["p50_ms"] / live["p50_ms"] if live["p50_ms"] else 0.0
        table[str(c)] = row
    return {"by_concurrency": table}


def render(report: dict[str, Any]) -> str:
    lines = ["CheckAndReserve, median of the rounds (live + shadow policy against live alone):"]
    for c, row in report["by_concurrency"].items():
        for name in ("live", "shadow"):
            cell = row[name]
            lines.append(
                f"  c={c:<3} {name:<6} {cell['rps']:8.0f} req/s  p50 {cell['p50_ms']:6.2f} ms  "
                f"p99 {cell['p99_ms']:6.2f} ms  server CPU {cell['server_cpu_pct']:5.1f} % "
                f"({cell['server_cpu_us_per_request']:.0f} us/request)  "
                f"answers {', '.join(f'{k} {v}' for k, v in sorted(cell['outcomes'].items()))}"
            )
        ratio = row["shadow_over_live"]
        met = "MET" if ratio >= TARGET_RATIO else "NOT MET"
        lines.append(
            f"  c={c:<3} shadow/live: {ratio:.2f} req/s (target >= {TARGET_RATIO:.2f}: {met}), "
            f"p50 {row['shadow_p50_over_live']:.2f}x, server CPU per request {row['shadow_cpu_over_live']:.2f}x"
        )
    metrics = report["shadow_metrics"]
    decided = metrics.get("quota_shadow_decisions_total", 0.0)
    diverged = sum(v for k, v in metrics.items() if k.startswith("quota_shadow_divergences_total{"))
    lines.append(
        f"shadow server: {decided:.0f} requests decided by the shadow policy (tokens/day {report['shadow_cap']}), "
        f"{diverged:.0f} diverged (warm-ups included)"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main("bench.shadow", lambda: bench(args))


if __name__ == "__main__":
    sys.exit(main())
