"""What a request leaves behind in Redis, measured black-box by ``python -m bench.memory``
(its own redis-server, the whole quota path with the shipped policies): at most 300 bytes
per settled request, kept for its lifetime plus the grace period, in one key."""

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


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server (jemalloc) on PATH")
def test_a_settled_request_keeps_at_most_300_bytes_in_one_key() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.memory",
            *("--requests", "3000", "--subjects", "30", "--settle-seconds", "0", "--json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    print(f"\nbytes per settled request: {report['bytes_per_settled_request']:.0f}")
    assert report["denied"] == 0
    assert report["keys_per_settled_request"] == 1.0  # its record, nothing else
    assert 0 < report["bytes_per_settled_request"] <= MAX_BYTES_PER_SETTLED_REQUEST
    assert report["bytes_per_open_reservation"] > report["bytes_per_settled_request"]  # shrunk at settlement
