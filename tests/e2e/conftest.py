"""End-to-end fixtures: the real ``quota-service serve`` process, on a free port, against
the session's real redis-server, with the shipped policies."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support.server_process import ServerProcess


@pytest.fixture
def quota_server(redis_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """A real server with the shipped policies on a freshly flushed Redis."""
    server = ServerProcess(redis_url=redis_url, workdir=tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def channel(quota_server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(quota_server.target) as ch:
        yield ch
