"""``make bench`` end to end, very short: every system starts (the limits baseline when the
bench extra is installed; quota-service with 1 and 2 workers), answers ALLOW for the hot and
the cold subject pool, the pinned rows are there, and the report is complete with its ratios
and targets. No timing assertions: a shared machine makes them meaningless."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e

HAS_LIMITS = importlib.util.find_spec("limits") is not None
HAS_TASKSET = shutil.which("taskset") is not None and sys.platform == "linux"


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
            "hot,cold",
            "--hot-subjects",
            "50",
            "--cold-subjects",
            "1000",
            "--channels",
            "4",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    report = result.stdout
    labels = ["design floor (+1 EVALSHA)", "quota-service", "quota-service, 2 workers"]
    if HAS_LIMITS:
        labels.append("limits library (3 hits)")
    for concurrency in (1, 32):
        assert f"| floor (no-op gRPC) | hot | {concurrency} |" in report, report
        for label in labels:
            for pool in ("hot", "cold"):
                assert f"| {label} | {pool} | {concurrency} |" in report, report
    if HAS_TASKSET:
        for label in ("design floor (+1 EVALSHA)", "quota-service", "quota-service, 2 workers"):
            for pool in ("hot", "cold"):
                assert f"| {label}, load generator on 1 core | {pool} | 32 |" in report, report
    assert "| quota-service / design floor (req/s) |" in report
    assert "| 2 workers / 1 worker (req/s) |" in report
    assert "| quota-service p50 / design floor p50 |" in report
    assert "target: quota-service / design floor (req/s) >= 1.00, hot at 32:" in report
    assert "target: quota-service / design floor (req/s) >= 1.00, cold at 32:" in report
    assert "target: quota-service p99 / design floor p99 <= 1.50, cold at 32:" in report
    if HAS_LIMITS:
        assert "target: quota-service / limits library (req/s) >= 1.50, hot at 32:" in report
    assert "cores" in report and "grpcio" in report and "Python" in report

    document = json.loads(out.read_text())
    systems = ["design", "quota", "quota2", *(["limits"] if HAS_LIMITS else [])]
    for system in systems:
        for pool in ("hot", "cold"):
            for concurrency in ("1", "32"):
                cell = document["median"][system][pool][concurrency]
                assert cell["rps"] > 0
                assert cell["deny"] == 0 and cell["errors"] == 0, cell
    assert set(document["ratios"]["quota_over_design"]) == {"hot@1", "hot@32", "cold@1", "cold@32"}
    assert all(isinstance(t["met"], bool) for t in document["targets"])
