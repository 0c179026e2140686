"""Fixtures of the client's unit tests: the in-process fake service (see
``fake_quota_service``) and a port nobody listens on."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from fake_quota_service import FakeServer, start_fake


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    running = start_fake()
    yield running
    running.server.stop(None).wait()


@pytest.fixture
def dead_target() -> str:
    """A local port nobody listens on: every call gets UNAVAILABLE (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"
