"""A port already in use, end to end: a second ``quota-service serve`` on a port another
server (or any other socket) listens on exits 2 with one clear line, before it starts
anything; ``--reuse-port`` (env ``QUOTA_REUSE_PORT``) on every server shares the port on
purpose."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.server_process import ROOT, SHIPPED_POLICIES, ServerProcess

pytestmark = pytest.mark.e2e


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``quota-service serve`` with the shipped policies, expected to exit on its own."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("QUOTA_")}
    return subprocess.run(
        [sys.executable, "-m", "quota_service.cli", "serve", "--policies", str(SHIPPED_POLICIES), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**environment, **(env or {})},
    )


@pytest.fixture
def first(redis_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(redis_url=redis_url, workdir=tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def listening_socket(family: socket.AddressFamily, host: str) -> socket.socket:
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.bind((host, 0))
    holder.listen(8)
    return holder


def assert_refused(done: subprocess.CompletedProcess[str], address: str) -> None:
    assert done.returncode == 2, done
    assert done.stderr == f"quota-service: {address} is already in use\n"  # one line, nothing else
    assert done.stdout == ""


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_second_serve_on_a_served_port_exits_2(
    first: ServerProcess, redis_url: str, tmp_path: Path, host: str
) -> None:
    address = f"{host}:{first.port}"
    done = serve("--redis-url", redis_url, "--listen", address, "--admin-token", "t")
    assert_refused(done, address)
    # The first server still answers every call: nothing was split off.
    with grpc.insecure_channel(first.target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_port_in_use_is_refused_before_the_embedded_redis_starts(first: ServerProcess, tmp_path: Path) -> None:
    data_dir = tmp_path / "never-created"
    done = serve("--listen", first.target, "--data-dir", str(data_dir))  # no --redis-url: embedded Redis
    assert_refused(done, first.target)
    assert not data_dir.exists()  # the embedded Redis was never started


def test_ipv6_loopback_in_use_is_named_with_brackets(redis_url: str) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    try:
        holder = listening_socket(socket.AF_INET6, "::1")
    except OSError:
        pytest.skip("no IPv6 loopback on this host")
    with holder:
        address = f"[::1]:{holder.getsockname()[1]}"
        done = serve("--redis-url", redis_url, "--listen", address, "--insecure-admin")
    assert_refused(done, address)


def test_a_wildcard_listen_address_sees_a_loopback_listener(redis_url: str) -> None:
    with listening_socket(socket.AF_INET, "127.0.0.1") as holder:
        address = f"0.0.0.0:{holder.getsockname()[1]}"
        done = serve("--redis-url", redis_url, "--listen", address, "--admin-token", "t")
    assert_refused(done, address)


def test_reuse_port_on_both_servers_shares_the_port(redis_url: str, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = ServerProcess(redis_url=redis_url, workdir=tmp_path / "a", extra_args=("--reuse-port",))
    # The second asks through the environment.
    two = ServerProcess(redis_url=redis_url, workdir=tmp_path / "b", env={"QUOTA_REUSE_PORT": "1"})
    one.start()
    try:
        two.port = one.port
        two.start()
        try:
            assert two.port == one.port
            assert one.process is not None and one.process.poll() is None
            # Both serve: with the first gone, the port still answers, from the second.
            one.stop()
            two.wait_healthy(10)
            assert "listening on 127.0.0.1:" in two.log()
        finally:
            two.stop()
    finally:
        one.stop()


def test_reuse_port_on_the_second_only_is_refused(first: ServerProcess, redis_url: str) -> None:
    # The first did not ask to share its port: the kernel refuses, and so does serve.
    done = serve("--redis-url", redis_url, "--listen", first.target, "--admin-token", "t", "--reuse-port")
    assert done.returncode == 2, done
    assert f"quota-service: {first.target} is already in use" in done.stderr
    assert "Traceback" not in done.stderr
