"""What a request leaves behind in Redis, measured black-box by ``python -m bench.memory``
(its own redis-server, the whole quota path with the shipped policies): at most 300 bytes
per settled request, kept for its lifetime plus the grace period, in one key; also when
every request estimates something else (what requests share must not depend on it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[3]
#: The target per settled request (DESIGN: store only what is read).
MAX_BYTES_PER_SETTLED_REQUEST = 300


def bench_memory(*args: str) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-m", "bench.memory", *args, "--settle-seconds", "0", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report: dict[str, float] = json.loads(result.stdout)
    print(f"\nbytes per settled request ({' '.join(args)}): {report['bytes_per_settled_request']:.0f}")
    return report


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server (jemalloc) on PATH")
def test_a_settled_request_keeps_at_most_300_bytes_in_one_key() -> None:
    report = bench_memory("--requests", "3000", "--subjects", "30")
    assert report["denied"] == 0
    assert report["keys_per_settled_request"] == 1.0  # its record, nothing else
    assert 0 < report["bytes_per_settled_request"] <= MAX_BYTES_PER_SETTLED_REQUEST
    assert report["bytes_per_open_reservation"] > report["bytes_per_settled_request"]  # shrunk at settlement


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server (jemalloc) on PATH")
def test_varying_estimates_still_keep_one_key_under_300_bytes() -> None:
    """Each request estimates other tokens (10 + i % 97; 300 subjects keep them under the
    free tier's caps): the shared plan text is the same for all, one record each."""
    report = bench_memory("--requests", "3000", "--subjects", "300", "--vary-asks")
    assert report["denied"] == 0 and report["vary_asks"]
    assert report["keys_per_settled_request"] == 1.0
    assert 0 < report["bytes_per_settled_request"] < MAX_BYTES_PER_SETTLED_REQUEST
