"""Fixtures shared by the whole suite: real ``redis-server`` processes on free ports.

Never the shared Redis on 6379: every session starts its own servers and stops them at the
end, also when tests fail.

* ``redis_server`` (session): one :class:`EmbeddedRedis` without persistence.
* ``redis_url`` (function): its URL, after ``FLUSHALL``: every test starts from an empty Redis.
* ``redis_cluster`` (session): a real 3-master Redis Cluster (:class:`LocalRedisCluster`),
  with ``.url`` (``redis+cluster://127.0.0.1:<port>``) and ``.ports``. Tests using it are
  marked ``cluster``.
* ``redis_cluster_url`` (function): its URL, after ``FLUSHALL`` on every master.

Mark tests that need these with ``pytest.mark.redis`` / ``pytest.mark.cluster``.

* ``postgres_server`` (session): a real PostgreSQL cluster (:class:`LocalPostgres`) initialised
  from the system's binaries on a free port, never the shared server on 5432; skipped with the
  reason when the binaries are missing. Tests using it are marked ``postgres``.
* ``postgres_url`` (function): the URL of a new, empty database on it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support.postgres import LocalPostgres, find_postgres_bindir
from support.redis_cluster import LocalRedisCluster

from quota_service.store.embedded import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(data_dir=tmp_path_factory.mktemp("redis"), persistence=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    if not redis_server.running:  # a test that stopped it (outage tests) must not break the next
        redis_server.start()
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    cluster = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: LocalRedisCluster) -> str:
    redis_cluster.flushall()
    return redis_cluster.url


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    bindir = find_postgres_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found via pg_config, "
            "/usr/lib/postgresql/*/bin or PATH: apt-get install postgresql"
        )
    server = LocalPostgres(bindir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: LocalPostgres, request: pytest.FixtureRequest) -> str:
    if not postgres_server.running:  # an outage test that stopped it must not break the next
        postgres_server.start_server()
    postgres_server.databases += 1
    name = f"t{postgres_server.databases}"
    postgres_server.psql(f"CREATE DATABASE {name}")
    return postgres_server.url(name)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of this test's own (append-only file in its tmp dir), which the test
    may stop, restart or freeze with SIGSTOP: it is woken and stopped afterwards."""
    server = EmbeddedRedis(data_dir=tmp_path / "own-redis", persistence=True)
    server.start()
    try:
        yield server
    finally:
        if server.pid:
            os.kill(server.pid, signal.SIGCONT)  # in case the test left it frozen
        server.stop()
