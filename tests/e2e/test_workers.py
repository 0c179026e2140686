"""``quota-service serve --workers 2`` end to end: one supervisor, two worker processes on one
port (SO_REUSEPORT), the real redis-server, the shipped policies.

Which worker answered is read from the supervisor's one metrics endpoint
(``quota_worker_rpcs_total{worker,pid}``: each live worker's own RPC count, from
prometheus-client's multiprocess files), not from a debug RPC."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import psutil
import pytest
from support.server_process import ServerProcess

from quota.v1 import quota_pb2, quota_pb2_grpc
from quota_client import AsyncQuotaClient, Decision, QuotaClient
from quota_service.store.embedded import free_port

pytestmark = pytest.mark.e2e

#: Own TCP connection per channel (grpc shares subchannels between equal channels otherwise).
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]

_C = TypeVar("_C", bound=QuotaClient)


def request(who: str, tokens: float = 10) -> quota_pb2.CheckAndReserveRequest:
    return quota_pb2.CheckAndReserveRequest(
        subject=who, feature="blog_writer", provider="openai", model="gpt-4o-mini", usage={"tokens": tokens}
    )


class Workers:
    def __init__(self, server: ServerProcess, metrics_port: int) -> None:
        self.server = server
        self.metrics_port = metrics_port

    @property
    def supervisor_pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.supervisor_pid}/task/{self.supervisor_pid}/children")
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    def worker_pids(self) -> list[int]:
        return [pid for pid in self.children() if "quota_service.cli" in _cmdline(pid)]

    def rpcs_by_pid(self) -> dict[int, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        found: dict[int, float] = {}
        for line in text.splitlines():
            match = re.match(r'quota_worker_rpcs_total\{pid="(\d+)",worker="(\d+)"\} (\S+)', line)
            if match:
                found[int(match.group(1))] = float(match.group(3))
        return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) is not a process left running.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def _start(redis_url: str, tmp_path: Path, *extra: str) -> Workers:
    metrics_port = free_port()
    server = ServerProcess(
        redis_url=redis_url,
        workdir=tmp_path,
        extra_args=("--workers", "2", "--metrics-port", str(metrics_port), "--no-watch", *extra),
    )
    server.start(timeout=60)
    return Workers(server, metrics_port)


@pytest.fixture
def workers(redis_url: str, tmp_path: Path) -> Iterator[Workers]:
    running = _start(redis_url, tmp_path)
    try:
        yield running
    finally:
        running.server.stop()


async def _calls_over_channels(target: str, channels: int, calls_each: int) -> list[quota_pb2.CheckAndReserveResponse]:
    opened = [grpc.aio.insecure_channel(target, options=OWN_CONNECTION) for _ in range(channels)]
    try:
        stubs = [quota_pb2_grpc.QuotaServiceStub(ch) for ch in opened]
        calls = (
            stub.CheckAndReserve(request(f"user-{uuid.uuid4().hex[:10]}"), timeout=10)
            for stub in stubs
            for _ in range(calls_each)
        )
        return list(await asyncio.gather(*calls))
    finally:
        for ch in opened:
            await ch.close()


def test_connections_reach_both_workers(workers: Workers) -> None:
    pids = workers.worker_pids()
    assert len(pids) == 2, workers.server.log()
    answers = asyncio.run(_calls_over_channels(workers.server.target, channels=16, calls_each=2))
    assert all(a.decision == quota_pb2.ALLOW for a in answers)
    counts = workers.rpcs_by_pid()
    assert set(counts) == set(pids)
    assert all(counts[pid] > 0 for pid in pids), counts  # the kernel spread 16 connections over both
    assert sum(counts.values()) >= len(answers)
    log = workers.server.log()
    assert "worker=1 " in log and "worker=2 " in log


def test_200_concurrent_calls_over_two_workers_grant_exactly_95(workers: Workers) -> None:
    who = f"user-{uuid.uuid4().hex[:10]}"

    async def burst() -> list[quota_pb2.CheckAndReserveResponse]:
        opened = [grpc.aio.insecure_channel(workers.server.target, options=OWN_CONNECTION) for _ in range(20)]
        try:
            stubs = [quota_pb2_grpc.QuotaServiceStub(ch) for ch in opened]
            calls = (stubs[i % 20].CheckAndReserve(request(who), timeout=30) for i in range(200))
            return list(await asyncio.gather(*calls))
        finally:
            for ch in opened:
                await ch.close()

    answers = asyncio.run(burst())
    granted = [a for a in answers if a.decision in (quota_pb2.ALLOW, quota_pb2.WARN)]
    denied = [a for a in answers if a.decision == quota_pb2.DENY]
    assert len(granted) == 95 and len(denied) == 105
    assert len({a.reservation_id for a in granted}) == 95
    assert {a.reason for a in denied} == {quota_pb2.BLOCK_THRESHOLD}
    counts = workers.rpcs_by_pid()
    assert len([n for n in counts.values() if n > 0]) == 2, counts  # both workers took part


def test_a_killed_worker_is_restarted_and_serves_again(workers: Workers) -> None:
    before = workers.worker_pids()
    assert len(before) == 2
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 10
    replacement: set[int] = set()
    while time.monotonic() < deadline:
        now = workers.worker_pids()
        replacement = set(now) - set(before)
        if len(now) == 2 and replacement:
            break
        time.sleep(0.05)
    assert replacement, workers.server.log()
    (new_pid,) = replacement
    # Serving again: fresh connections reach the new worker within a few seconds.
    while time.monotonic() < deadline and workers.rpcs_by_pid().get(new_pid, 0) == 0:
        answers = asyncio.run(_calls_over_channels(workers.server.target, channels=8, calls_each=1))
        assert all(a.decision == quota_pb2.ALLOW for a in answers)
    assert workers.rpcs_by_pid().get(new_pid, 0) > 0, workers.server.log()
    assert re.search(rf"worker=\d \(pid {victim}\) exited with signal SIGKILL", workers.server.log())


def test_sigterm_drains_every_worker_and_the_one_embedded_redis(redis_url: str, tmp_path: Path) -> None:
    # No --redis-url (the later, empty one wins): the supervisor starts the embedded Redis, once.
    running = _start(redis_url, tmp_path, "--redis-url", "")
    try:
        children = running.children()
        workers_ = running.worker_pids()
        redis_servers = [pid for pid in children if "redis-server" in _cmdline(pid)]
        assert len(workers_) == 2 and len(redis_servers) == 1, [_cmdline(p) for p in children]
        assert all("--redis-url redis://127.0.0.1:" in _cmdline(pid) for pid in workers_)
        with grpc.insecure_channel(running.server.target) as channel:
            reply = quota_pb2_grpc.QuotaServiceStub(channel).CheckAndReserve(request("drain-me"), timeout=10)
            assert reply.decision == quota_pb2.ALLOW
    finally:
        code = running.server.stop(signal.SIGTERM, timeout=40)
    assert code == 0, running.server.log()
    assert not [pid for pid in (*children,) if _alive(pid)]
    log = running.server.log()
    assert log.count("quota_service: stopped") == 2 and "supervisor quota_service.supervisor: stopped" in log


def test_a_port_in_use_is_refused_before_any_worker_starts(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "quota_service.cli", "serve", "--workers", "2", "--listen", f"127.0.0.1:{port}"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 2
    assert f"127.0.0.1:{port} is already in use" in result.stderr
    assert "started (pid" not in result.stderr and not (tmp_path / "data").exists()


# -- the client's own channels (channels=N) against two workers -----------------------------


def _client_ports(target: str) -> set[int]:
    """Local ports of this process's connections to ``target``."""
    port = int(target.rsplit(":", 1)[1])
    return {
        c.laddr.port
        for c in psutil.Process().net_connections("tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    }


def _workers_holding(workers: Workers, client_ports: set[int]) -> set[int]:
    """The worker pids that accepted one of these client connections."""
    return {
        pid
        for pid in workers.worker_pids()
        for c in psutil.Process(pid).net_connections("tcp")
        if c.raddr and c.raddr.port in client_ports
    }


def _growth(before: dict[int, float], after: dict[int, float]) -> dict[int, float]:
    return {pid: after.get(pid, 0) - before.get(pid, 0) for pid in after}


def _open_spread_client(workers: Workers, make: Callable[[], _C], warm: Callable[[_C], None]) -> tuple[_C, set[int]]:
    """A client with ``channels=8`` whose connections reached both workers. The kernel puts
    all 8 on one of 2 workers 1 time in 128 (that is its hash, not the client): then the
    client is replaced, at most twice, so that the test checks the client, not the odds."""
    for _ in range(3):
        client = make()
        warm(client)  # one call per channel: all 8 connect
        ports = _client_ports(workers.server.target)
        assert len(ports) == 8, ports  # 8 channels are 8 distinct TCP connections
        if len(_workers_holding(workers, ports)) == 2:
            return client, ports
        client.close()
    raise AssertionError("8 connections landed on one worker 3 times over")


def test_a_sync_client_with_8_channels_spreads_200_calls_over_both_workers(workers: Workers) -> None:
    def warm(client: QuotaClient) -> None:
        for _ in range(8):
            client.get_usage("warm-up")

    client, _ = _open_spread_client(workers, lambda: QuotaClient(workers.server.target, channels=8), warm)
    try:
        before = workers.rpcs_by_pid()
        answers = [
            client.check_and_reserve(f"user-{uuid.uuid4().hex[:10]}", "blog_writer", tokens=10) for _ in range(200)
        ]
        growth = _growth(before, workers.rpcs_by_pid())
    finally:
        client.close()
    assert all(a.decision is Decision.ALLOW and not a.unverified for a in answers)
    assert sum(growth.values()) == 200 and all(n > 0 for n in growth.values()), growth
    assert all(n % 25 == 0 for n in growth.values()), growth  # round robin: 25 calls per connection


def test_an_async_client_with_8_channels_spreads_200_calls_over_both_workers(workers: Workers) -> None:
    async def run() -> dict[int, float]:
        for _ in range(3):
            client = AsyncQuotaClient(workers.server.target, channels=8)
            for _ in range(8):
                await client.get_usage("warm-up")
            ports = _client_ports(workers.server.target)
            assert len(ports) == 8, ports
            if len(_workers_holding(workers, ports)) == 2:
                break
            await client.close()  # the kernel's 1-in-128 draw: see _open_spread_client
        else:
            raise AssertionError("8 connections landed on one worker 3 times over")
        async with client:
            before = workers.rpcs_by_pid()
            answers = await asyncio.gather(
                *(
                    client.check_and_reserve(f"user-{uuid.uuid4().hex[:10]}", "blog_writer", tokens=10)
                    for _ in range(200)
                )
            )
            assert all(a.decision is Decision.ALLOW and not a.unverified for a in answers)
            return _growth(before, workers.rpcs_by_pid())

    growth = asyncio.run(run())
    assert sum(growth.values()) == 200 and all(n > 0 for n in growth.values()), growth
    assert all(n % 25 == 0 for n in growth.values()), growth


def test_a_client_with_1_channel_keeps_one_connection_and_one_worker(workers: Workers) -> None:
    before = workers.rpcs_by_pid()
    with QuotaClient(workers.server.target, channels=1) as client:
        for _ in range(50):
            client.get_usage("one-channel")
        assert len(_client_ports(workers.server.target)) == 1
    growth = _growth(before, workers.rpcs_by_pid())
    assert sorted(growth.values()) == [0, 50], growth
