"""What ``quota-service simulate`` costs: ``python -m bench.simulate`` (``make bench-simulate``).

Seeds a SQLite ledger (migrated by the real :class:`~quota_service.ledger.store.Ledger`,
rows bulk-inserted in the ledger's schema) with ``--records`` usage records over
``--days`` days for ``--subjects`` subjects (a third assigned ``basic_alpha`` and a third
``pro_alpha`` by ADMIN_CHANGE records, the rest on the default ``free_alpha``; about 90 %
COMMITTED, 3 % RELEASED, 2 % EXPIRED, 5 % DENIED), then runs the real command
(``python -m quota_service.cli simulate``, a fresh process, startup included) of the shipped
``policies/`` against a candidate that halves ``free_alpha``'s daily tokens, and prints
records/s. The issue's target: 1,000,000 records in under 60 s (``--records 1000000``, the
default). Seeding is not timed. Never a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.run import ROOT
from quota_service.ledger.store import ledger_from_url

POLICIES = ROOT / "policies"
TARGET_SECONDS = 60.0
DAY_MS = 86_400_000
START_MS = 1_764_547_200_000  # 2025-12-01T00:00:00Z
#: ``openai/gpt-4o-mini`` at $0.60 per 1M tokens (policies/alpha.yaml): micro-dollars per token.
MICROS_PER_TOKEN = 0.6
_COLUMNS = (
    "id, seq, kind, at_ms, subject, tier, feature, provider, model, request_id, reservation_id, estimate, actual, "
    "cost_micros, decision, reason, limit_status, threshold, policy_version, actor, detail, recorded_at_ms"
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.simulate", description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="usage records seeded (default 1,000,000)")
    parser.add_argument("--subjects", type=int, default=5000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", default="", help="seed into this file (kept) instead of a temporary one")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def _tier(n: int) -> str:
    return ("free_alpha", "basic_alpha", "pro_alpha")[n % 3]


def _rows(args: argparse.Namespace) -> Iterator[tuple[Any, ...]]:
    rng = random.Random(args.seed)
    seq = 0
    span_ms = args.days * DAY_MS
    for n in range(args.subjects):
        if _tier(n) != "free_alpha":
            seq += 1
            detail = json.dumps({"action": "SetTier", "after": {"tier": _tier(n)}, "before": {"tier": None}})
            yield (
                f"adm_{n}",
                seq,
                8,
                START_MS - 1000,
                f"user-{n}",
                _tier(n),
                "",
                "",
                "",
                "",
                "",
                "{}",
                "{}",
                0,
                0,
                "",
                None,
                0,
                "",
                "bench",
                detail,
                START_MS,
            )
    times = sorted(START_MS + rng.randrange(span_ms) for _ in range(args.records))
    for i, at in enumerate(times):
        n = rng.randrange(args.subjects)
        tier = _tier(n)
        tokens = rng.randint(50, 300) if tier == "free_alpha" else rng.randint(50, 400)
        cost = int(tokens * MICROS_PER_TOKEN + 0.999999)
        estimate = json.dumps({"cost_usd": cost, "tokens": tokens}, separators=(",", ":"))
        roll = rng.random()
        seq += 1
        common = (f"user-{n}", tier, "blog_writer", "openai", "gpt-4o-mini", f"req-{i}")
        if roll < 0.05:
            yield (
                f"den_rsv{i}",
                seq,
                5,
                at,
                *common,
                "",
                estimate,
                "{}",
                0,
                3,
                "LIMIT_EXCEEDED",
                None,
                0,
                "",
                "",
                json.dumps({"would_be_reservation_id": f"rsv{i}"}),
                at,
            )
            continue
        settled_at = at + rng.randint(200, 20_000)
        detail = json.dumps({"reserved_at_ms": at, "expires_at_ms": at + 300_000}, separators=(",", ":"))
        if roll < 0.08:
            kind, prefix, actual, charged = 2, "rel", "{}", 0
        elif roll < 0.10:
            kind, prefix, actual, charged, settled_at = 3, "exp", estimate, cost, at + 300_000
        else:
            used = max(1, int(tokens * rng.uniform(0.5, 1.0)))
            charged = int(used * MICROS_PER_TOKEN + 0.999999)
            kind, prefix = 1, "com"
            actual = json.dumps({"cost_usd": charged, "tokens": used}, separators=(",", ":"))
        yield (
            f"{prefix}_rsv{i}",
            seq,
            kind,
            settled_at,
            *common,
            f"rsv{i}",
            estimate,
            actual,
            charged,
            1,
            "",
            None,
            0,
            "",
            "",
            detail,
            settled_at,
        )


def seed(path: Path, args: argparse.Namespace) -> int:
    ledger = ledger_from_url(f"sqlite:///{path}")
    assert ledger is not None

    async def migrate() -> None:
        try:
            await ledger.migrate()
        finally:
            await ledger.close()

    asyncio.run(migrate())
    placeholders = ", ".join("?" * len(_COLUMNS.split(",")))
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA synchronous=OFF")
        db.executemany(f"INSERT INTO events ({_COLUMNS}) VALUES ({placeholders})", _rows(args))
        return int(db.execute("SELECT count(*) FROM events").fetchone()[0])


def candidate(directory: Path) -> Path:
    text = (POLICIES / "alpha.yaml").read_text()
    marker = "  free_alpha:"
    head, _, tail = text.partition(marker)
    tail = tail.replace("tokens: {day: 1000}", "tokens: {day: 500}", 1)
    out = directory / "candidate.yaml"
    out.write_text(head + marker + tail)
    return out


def bench(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-simulate-") as tmp:
        path = Path(args.keep) if args.keep else Path(tmp) / "ledger.db"
        if path.exists():
            path.unlink()
        started = time.perf_counter()
        rows = seed(path, args)
        seeded_s = time.perf_counter() - started
        print(f"seeded {rows:,} rows in {seeded_s:.1f} s ({path})", file=sys.stderr)
        command = [
            sys.executable, "-m", "quota_service.cli", "simulate", "--live", str(POLICIES),
            "--policy", str(candidate(Path(tmp))), "--ledger", f"sqlite:///{path}", "--json",
        ]  # fmt: skip
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
        elapsed = time.perf_counter() - started
    if done.returncode not in (0, 2):
        print(done.stderr, file=sys.stderr)
        return 1
    report = json.loads(done.stdout)
    result = {
        "records": args.records,
        "rows_read": report["rows"],
        "requests_replayed": report["requests"],
        "answers_changed": report["changed"],
        "seconds": round(elapsed, 2),
        "records_per_second": round(report["rows"] / elapsed),
        "target_seconds": TARGET_SECONDS,
        "within_target": elapsed < TARGET_SECONDS * args.records / 1_000_000,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"simulate: {result['rows_read']:,} rows ({result['requests_replayed']:,} requests, "
            f"{result['answers_changed']:,} answers change) in {elapsed:.1f} s: "
            f"{result['records_per_second']:,} records/s (target: 1,000,000 in < {TARGET_SECONDS:.0f} s: "
            f"{'met' if result['within_target'] else 'MISSED'})"
        )
    return 0 if result["within_target"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    return bench(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
