"""``make bench`` end to end, very short: every system starts, answers ALLOW, and the report
is complete. No timing assertions: a shared machine makes them meaningless."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def test_bench_prints_a_complete_table(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--duration",
            "0.3",
            "--warmup",
            "0.1",
            "--rounds",
            "1",
            "--subjects",
            "200",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    report = result.stdout
    for label in ("floor (no-op gRPC)", "design floor (+1 EVALSHA)", "quota-service"):
        for concurrency in (1, 32):
            assert f"| {label} | {concurrency} |" in report, report
    assert "| quota-service / design floor |" in report
    assert "| design floor / floor |" in report
    assert "target: quota-service / design floor >= 0.80 at concurrency 32:" in report
    assert "cores" in report and "grpcio" in report and "Python" in report

    document = json.loads(out.read_text())
    for system in ("floor", "design", "quota"):
        for concurrency in ("1", "32"):
            cell = document["median"][system][concurrency]
            assert cell["rps"] > 0
            assert cell["deny"] == 0 and cell["errors"] == 0, cell
    assert set(document["ratios"]["quota_over_design"]) == {"1", "32"}
