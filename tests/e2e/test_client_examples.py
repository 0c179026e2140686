"""The runnable examples in examples/, run as a user would (a subprocess with QUOTA_TARGET
pointing at the real server), their output asserted and checked against Redis."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
from support.server_process import ServerProcess

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def run_example(name: str, target: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QUOTA_TARGET": target}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def number(pattern: str, text: str) -> int:
    """The first group of the line matching ``pattern`` in ``text``, as an int."""
    found = re.search(pattern, text, re.M)
    assert found, f"no line matches {pattern!r} in:\n{text}"
    return int(found.group(1))


def used(redis_url: str, subject: str, metric: str) -> tuple[int, int]:
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        [key] = list(r.scan_iter(match=f"q:{{{subject}}}:{metric}:day:*"))
        fields = r.hgetall(key)
    return int(float(fields.get("used", 0))), int(float(fields.get("held", 0)))


def test_chat_completion_example(quota_server: ServerProcess) -> None:
    subject = f"example-{uuid.uuid4().hex[:10]}"
    done = run_example("chat_completion.py", quota_server.target, "--subject", subject)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    estimate = number(r"^estimate: (\d+) tokens$", out)
    assert re.search(r"^decision: ALLOW \(reservation rsv_\S+\)$", out, re.M), out
    committed = number(r"^committed: (\d+) tokens \(estimate was \d+\)$", out)
    assert 0 < committed < estimate
    assert f"tokens today: used={committed} held=0 max=1000" in out
    assert used(quota_server.redis_url, subject, "tokens") == (committed, 0)

    # Keep asking with a big answer budget: the 80 % notice comes first, then the block.
    outputs = [
        run_example("chat_completion.py", quota_server.target, "--subject", subject, "--max-tokens", "900"),
        run_example("chat_completion.py", quota_server.target, "--subject", subject, "--max-tokens", "900"),
    ]
    assert outputs[0].returncode == 0 and "warning: " in outputs[0].stdout, outputs[0].stdout
    assert "decision: WARN" in outputs[0].stdout
    assert outputs[1].returncode == 2, outputs[1].stdout
    assert re.search(
        r"^denied: (LIMIT_EXCEEDED|BLOCK_THRESHOLD|HARD_STOP): .+ \(retry after \d+s\)$", outputs[1].stdout, re.M
    )


def test_image_generation_example(quota_server: ServerProcess) -> None:
    subject = f"example-{uuid.uuid4().hex[:10]}"
    first = run_example("image_generation.py", quota_server.target, "--subject", subject, "--count", "3")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "decision: ALLOW: reserved 3 image(s)" in first.stdout
    assert "committed: 2 image(s) (estimate was 3)" in first.stdout  # the stand-in drops one
    assert "images today: used=2 held=0 max=5" in first.stdout
    assert used(quota_server.redis_url, subject, "images") == (2, 0)

    failed = run_example("image_generation.py", quota_server.target, "--subject", subject, "--fail")
    assert failed.returncode == 0 and "reservation released" in failed.stdout, failed.stdout
    assert used(quota_server.redis_url, subject, "images") == (2, 0)

    second = run_example("image_generation.py", quota_server.target, "--subject", subject, "--count", "3")
    assert "decision: WARN" in second.stdout and "warning: " in second.stdout, second.stdout  # 5 of 5: >= 80 %
    third = run_example("image_generation.py", quota_server.target, "--subject", subject, "--count", "3")
    assert third.returncode == 2 and "denied: " in third.stdout, third.stdout
    assert used(quota_server.redis_url, subject, "images") == (4, 0)


def test_async_example(quota_server: ServerProcess) -> None:
    subject = f"example-{uuid.uuid4().hex[:10]}"
    done = run_example("async_chat.py", quota_server.target, "--subject", subject)
    assert done.returncode == 0, done.stdout + done.stderr
    guarded = number(r"^guarded call: ALLOW, committed (\d+) of \d+ tokens$", done.stdout)
    decorated = number(r"^decorated call: committed (\d+) tokens$", done.stdout)
    assert f"tokens today: used={guarded + decorated} held=0 max=1000" in done.stdout
    assert used(quota_server.redis_url, subject, "tokens") == (guarded + decorated, 0)


def test_examples_fail_closed_when_the_service_is_down() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    done = run_example("chat_completion.py", dead)
    assert done.returncode == 3 and done.stdout.startswith("estimate: ")
    assert "unavailable: quota-service unavailable" in done.stdout
