"""``make bench-ledger`` and ``make bench-durability`` end to end, very short: every server
starts (a ledger-off one and a SQLite one; everysec, always and a replica-WAITing one), every
cell is measured with commits, and the reports are complete. No timing assertions: a shared
machine makes them meaningless."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e

SHORT = ["--duration", "0.3", "--warmup", "0.1", "--rounds", "1", "--concurrency", "2", "--subjects", "200", "--json"]


def run(module: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-m", module, *SHORT], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    report: dict[str, object] = json.loads(result.stdout)
    return report


def test_bench_ledger_measures_both_servers_and_the_drain() -> None:
    report = run("bench.ledger")
    row = report["by_concurrency"]["2"]  # type: ignore[index]
    assert row["off"]["rps"] > 0 and row["sqlite"]["rps"] > 0
    assert row["sqlite_over_off"] > 0
    drain = report["drain_sqlite"]
    assert drain["records"] > 0 and drain["outbox_left"] == 0  # type: ignore[index]


def test_bench_durability_measures_the_three_stores() -> None:
    row = run("bench.durability")["2"]  # type: ignore[index]
    for name in ("everysec", "always", "wait1"):
        assert row[name]["rps"] > 0, name
    assert row["always_over_everysec"] > 0 and row["wait1_over_everysec"] > 0
