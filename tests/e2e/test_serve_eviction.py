"""serve refuses a Redis that may evict keys (issue 7, defect 4), unless told to accept it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support.server_process import ROOT, SHIPPED_POLICIES, ServerProcess

from quota_service.store.embedded import EmbeddedRedis

pytestmark = pytest.mark.e2e


@pytest.fixture
def evicting_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(data_dir=tmp_path / "redis", persistence=False)
    server.start()
    with redis.Redis.from_url(server.url) as client:
        client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        yield server
    finally:
        server.stop()


def test_serve_refuses_a_redis_that_may_evict_keys(evicting_redis: EmbeddedRedis, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "quota_service.cli",
            "serve",
            "--policies",
            str(SHIPPED_POLICIES),
            "--redis-url",
            evicting_redis.url,
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("quota-service: Redis may evict keys: maxmemory-policy is 'allkeys-lru' on Redis;")
    assert "--allow-eviction" in last


def test_allow_eviction_starts_with_a_warning(evicting_redis: EmbeddedRedis, tmp_path: Path) -> None:
    server = ServerProcess(redis_url=evicting_redis.url, workdir=tmp_path, extra_args=("--allow-eviction",))
    server.start()
    try:
        assert "WARNING quota_service: Redis may evict keys" in server.log()
    finally:
        server.stop()
