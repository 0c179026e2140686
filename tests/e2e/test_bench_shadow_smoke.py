"""``make bench-shadow`` end to end, very short: both servers start, every cell is measured,
the shadow server decided the shadow policy, and the report is complete. No timing
assertions: a shared machine makes them meaningless."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e

SHORT = ["--duration", "0.3", "--warmup", "0.1", "--rounds", "1", "--concurrency", "2", "--subjects", "50", "--json"]


def test_bench_shadow_measures_both_servers_and_the_shadow_decides() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.shadow", *SHORT], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    report = json.loads(result.stdout)
    row = report["by_concurrency"]["2"]
    assert row["live"]["rps"] > 0 and row["shadow"]["rps"] > 0 and row["shadow_over_live"] > 0
    assert set(row["live"]["outcomes"]) <= {"ALLOW", "WARN"}  # the live answers: the live policy's
    metrics = report["shadow_metrics"]
    assert metrics["quota_shadow_decisions_total"] > 0
    # 50 subjects, cap 3 in the shadow: most calls past a subject's second diverge.
    assert sum(v for k, v in metrics.items() if k.startswith("quota_shadow_divergences_total{")) > 0
