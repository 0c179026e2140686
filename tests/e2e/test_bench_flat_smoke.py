"""``make bench-flat`` end to end, very short and on tiny pools: quota-service starts (twice,
one per Redis database), the pools are prefilled, the overrides written, every cell answers
ALLOW, and the report is complete with its ratios and targets. No timing assertions: a
shared machine makes them meaningless."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def test_bench_flat_prints_a_complete_table(tmp_path: Path) -> None:
    out = tmp_path / "flat.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.flat",
            "--duration",
            "0.3",
            "--warmup",
            "0.1",
            "--rounds",
            "2",
            "--small",
            "100",
            "--large",
            "1000",
            "--overrides",
            "100",
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
    for label in ("100 subjects, 0 overrides", "1,000 subjects, 0 overrides", "1,000 subjects, 100 overrides"):
        assert f"| {label} | 32 |" in report, report
    assert "| 1,000 / 100 subjects | 32 |" in report, report
    assert "| 100 / 0 overrides | 32 |" in report, report
    assert "target: 1,000 / 100 subjects (req/s) at 32:" in report, report
    assert "target: 100 / 0 overrides (req/s) at 32:" in report, report
    assert "prefill (1,000 subjects" in report and "prefill (100 subjects" in report, report
    assert "overrides: 100 (tokens/day = 2,000) on every 10-th subject (10 % of the large pool)" in report, report
    assert "cores" in report and "grpcio" in report and "Python" in report

    document = json.loads(out.read_text())
    for cell in ("small", "large", "overrides"):
        median = document["median"][cell]["32"]
        assert median["rps"] > 0 and median["rounds"] == 2
        assert median["deny"] == 0 and median["errors"] == 0, median
        assert median["evalsha_per_request"] > 0, median
    assert set(document["ratios"]) >= {"large_over_small:rps", "overrides_over_none:rps"}
    assert [t["ratio"] for t in document["targets"]] == ["large_over_small", "overrides_over_none"]
    assert all(isinstance(t["met"], bool) for t in document["targets"])
    assert document["loads"]["prefill-large"]["keys"] == 1000 * len(document["loads"]["template"])
    assert document["loads"]["overrides"]["indexed"] == 100
