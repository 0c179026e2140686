"""How fast each dashboard view answers with many subjects and a large ledger (issue 10).

``python -m bench.dashboard [--subjects 100000] [--rows 1000000] [--rounds 5] [--json]``

Starts a real redis-server (no persistence) and a real ``quota-service serve --http``, then
seeds:

* ``--subjects`` subjects with spend in Redis, through the real API (CheckAndReserve then
  Commit per subject over gRPC, ``--concurrency`` at a time), so TopUsage and the company
  counters see them exactly as in production;
* ``--rows`` usage records (COMMITTED, with some DENIED) spread over the last 30 days in the
  server's ledger (its SQLite file), through :meth:`Ledger.insert` in batches.

It waits until the server's analytics rollups (:mod:`quota_service.ledger.rollup`, kept every
5 s by a running server) hold the seeded records, and reports how long that took. Then it
times every view's calls over the JSON API, as the page makes them (one view = its calls in
parallel, like the page's ``Promise.all``), ``--rounds`` times, the first of them on a cold
GetAnalytics cache, and prints the median and the worst per view against the quality bar
(< 1 s each); and the analytics as "month" reads them at a month's end (the previous month
and today) and of any 30 days, through the same rollup functions. Not a test: it is not run by
``make test``; it needs a few GB of memory and minutes at the default sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.request import Request, urlopen

import grpc

from quota.v1 import quota_pb2, quota_pb2_grpc
from quota_service.ledger import ledger_from_url
from quota_service.ledger.events import Event, EventKind, new_event_id, record_id
from quota_service.policy.domain import Decision, Reason
from quota_service.store.embedded import EmbeddedRedis

ROOT = Path(__file__).resolve().parents[1]
ADMIN_TOKEN = "bench-admin-token"
TARGET_SECONDS = 1.0
BATCH = 10_000
TIERS = (
    ("free_alpha", "blog_writer", "openai", "gpt-4o-mini", 0.6),
    ("basic_alpha", "seo_analysis", "openai", "gpt-4o", 10.0),
    ("pro_alpha", "content_planning", "anthropic", "claude-sonnet", 15.0),
)


def start_server(workdir: Path, redis_url: str) -> tuple[subprocess.Popen[bytes], int, int]:
    port_file, http_file = workdir / "port", workdir / "http-port"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "quota_service.cli",
            "serve",
            "--policies",
            str(ROOT / "policies"),
            "--redis-url",
            redis_url,
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
            "--http",
            "127.0.0.1:0",
            "--http-port-file",
            str(http_file),
            "--admin-token",
            ADMIN_TOKEN,
            "--data-dir",
            str(workdir / "data"),
            "--no-watch",
            "--log-level",
            "WARNING",
        ],
        cwd=ROOT,
    )
    deadline = time.monotonic() + 30
    while not (port_file.exists() and http_file.exists() and port_file.read_text().strip()):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("quota-service did not start")
        time.sleep(0.05)
    return process, int(port_file.read_text()), int(http_file.read_text())


async def seed_subjects(port: int, subjects: int, concurrency: int) -> float:
    started = time.perf_counter()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = quota_pb2_grpc.QuotaServiceStub(channel)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(subjects):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                tokens = 1 + (i * 7919) % 900
                answer = await stub.CheckAndReserve(
                    quota_pb2.CheckAndReserveRequest(
                        subject=f"s{i}",
                        feature="blog_writer",
                        provider="openai",
                        model="gpt-4o-mini",
                        usage={"tokens": tokens},
                        request_id=f"seed-{i}",
                    ),
                    timeout=10,
                )
                if answer.reservation_id:
                    await stub.Commit(
                        quota_pb2.CommitRequest(reservation_id=answer.reservation_id, usage={"tokens": tokens}),
                        timeout=10,
                    )

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def seed_ledger(ledger_url: str, rows: int, subjects: int) -> float:
    ledger = ledger_from_url(ledger_url, timeout_seconds=30.0)
    assert ledger is not None
    await ledger.migrate()
    rng = random.Random(10)
    now = int(time.time() * 1000)
    started = time.perf_counter()
    try:
        for first in range(0, rows, BATCH):
            batch = []
            for n in range(first, min(rows, first + BATCH)):
                tier, feature, provider, model, per_million = TIERS[n % 3]
                at = now - rng.randrange(30 * 86_400_000)
                subject = f"s{rng.randrange(max(1, subjects))}"
                tokens = rng.randrange(1, 2000)
                if n % 20 == 0:
                    batch.append(
                        Event(
                            id=new_event_id(EventKind.DENIED, at),
                            kind=EventKind.DENIED,
                            at_ms=at,
                            subject=subject,
                            tier=tier,
                            feature=feature,
                            provider=provider,
                            model=model,
                            estimate={"tokens": tokens},
                            decision=Decision.DENY,
                            reason=Reason.LIMIT_EXCEEDED,
                        )
                    )
                    continue
                batch.append(
                    Event(
                        id=record_id(EventKind.COMMITTED, f"bench{n}"),
                        kind=EventKind.COMMITTED,
                        at_ms=at,
                        subject=subject,
                        tier=tier,
                        feature=feature,
                        provider=provider,
                        model=model,
                        reservation_id=f"bench{n}",
                        estimate={"tokens": tokens},
                        actual={"tokens": tokens},
                        cost_micros=int(tokens * per_million),
                        decision=Decision.ALLOW,
                    )
                )
            await ledger.insert(batch)
    finally:
        await ledger.close()
    return time.perf_counter() - started


def wait_for_rollups(ledger_file: Path, *, timeout: float = 600.0) -> float:
    """Seconds until the server's analytics rollups hold every seeded record and every closed
    day is reduced (what a running server keeps up as records arrive, 5 s behind at most)."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        with sqlite3.connect(ledger_file, timeout=30) as db:
            top = db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
            cursor = db.execute("SELECT position FROM relay_cursors WHERE source = 'rollup'").fetchone()
            days = db.execute("SELECT count(*) FROM rollup_closed_days WHERE NOT dirty").fetchone()[0]
        if cursor is not None and int(cursor[0]) >= top and days >= 29:
            return time.perf_counter() - started
        time.sleep(1.0)
    raise RuntimeError("the analytics rollups did not catch up")


async def time_month_end(ledger_url: str, rounds: int) -> dict[str, dict[str, float]]:
    """GetAnalytics' reads as "month" reads them at a month's end (on the first of a month
    "month" is one day): the previous calendar month's closed days (the seeded 30 days) plus
    today; and any 30 days (one row per day and value, no month's merge), through the same
    rollup functions, in this process, each round on a new connection (SQLite's cache cold)."""
    from datetime import UTC, datetime

    from quota_service.ledger import analytics, rollup

    now = datetime.now(UTC)
    previous = datetime(now.year - (now.month == 1), (now.month - 2) % 12 + 1, 1, tzinfo=UTC)
    today_end = (int(now.timestamp() * 1000) // 86_400_000 + 1) * 86_400_000
    periods = {
        "analytics-month-end": int(previous.timestamp() * 1000),
        "analytics-30-days": today_end - 30 * 86_400_000,
    }
    results = {}
    for name, since in periods.items():
        times = []
        for _ in range(rounds):
            ledger = ledger_from_url(ledger_url, timeout_seconds=30.0)
            assert ledger is not None
            try:
                started = time.perf_counter()
                await rollup.catch_up(ledger, UTC)
                analytics.group_spend(await rollup.spend(ledger, since_ms=since, until_ms=today_end))
                first, end = rollup.day_range(since, today_end, UTC)
                await rollup.distribution(ledger, rollup.METRICS, UTC, first_day=first, end_day=end)
                times.append(time.perf_counter() - started)
            finally:
                await ledger.close()
        results[name] = {"median_s": statistics.median(times), "max_s": max(times)}
    return results


def views(subject: str) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Each view's calls, as app.js makes them."""
    day_ago = str(int(time.time() * 1000) - 86_400_000)
    return {
        "overview": [
            ("GetCompanyUsage", {}),
            ("ListStops", {}),
            ("TopUsage", {"metric": "cost_usd", "window": "day", "n": 10}),
            ("TopUsage", {"metric": "cost_usd", "window": "month", "n": 10}),
            ("GetActivity", {"minutes": 60}),
        ],
        "subject": [("GetSubject", {"subject": subject}), ("ListEvents", {"subject": subject, "sinceMs": day_ago})],
        "policy": [("DescribePolicy", {})],
        "analytics-today": [("GetAnalytics", {"period": "today"})],
        "analytics-7d": [("GetAnalytics", {"period": "7d"})],
        "analytics-month": [("GetAnalytics", {"period": "month"})],
        "audit": [("ListAudit", {"limit": 200})],
    }


def call(http_port: int, method: str, body: dict[str, Any]) -> None:
    request = Request(
        f"http://127.0.0.1:{http_port}/quota.v1.AdminService/{method}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    with urlopen(request, timeout=120) as reply:
        reply.read()


def time_views(http_port: int, rounds: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    with ThreadPoolExecutor(8) as pool:
        for name, calls in views("s1").items():
            times = []
            for _ in range(rounds):
                started = time.perf_counter()
                list(pool.map(lambda c: call(http_port, *c), calls))
                times.append(time.perf_counter() - started)
            results[name] = {"median_s": statistics.median(times), "max_s": max(times)}
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.dashboard", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--subjects", type=int, default=100_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        workdir = Path(tmp)
        redis = EmbeddedRedis(data_dir=workdir / "redis", persistence=False)
        redis.start()
        process = None
        try:
            process, port, http_port = start_server(workdir, redis.url)
            seeded_subjects = asyncio.run(seed_subjects(port, args.subjects, args.concurrency))
            ledger_url = f"sqlite:///{workdir / 'data' / 'ledger.db'}"
            seeded_rows = asyncio.run(seed_ledger(ledger_url, args.rows, args.subjects))
            rolled_up = wait_for_rollups(workdir / "data" / "ledger.db")
            results = time_views(http_port, args.rounds)
            results.update(asyncio.run(time_month_end(ledger_url, args.rounds)))
        finally:
            if process is not None:
                process.terminate()
                process.wait(30)
            redis.stop()
    report = {
        "subjects": args.subjects,
        "ledger_rows": args.rows,
        "seed_seconds": {"subjects": round(seeded_subjects, 1), "ledger": round(seeded_rows, 1)},
        "rollups_caught_up_seconds": round(rolled_up, 1),
        "views": results,
        "target_s": TARGET_SECONDS,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"{args.subjects:,} subjects, {args.rows:,} ledger rows "
        f"(seeded in {seeded_subjects:.0f} s + {seeded_rows:.0f} s; the server's analytics rollups "
        f"caught up {rolled_up:.0f} s after)"
    )
    for name, t in results.items():
        verdict = "ok" if t["max_s"] < TARGET_SECONDS else "SLOW"
        print(f"  {name:20} median {t['median_s'] * 1000:8.1f} ms   worst {t['max_s'] * 1000:8.1f} ms   {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
