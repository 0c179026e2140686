"""Waiting on a condition instead of sleeping a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest


def wait_for(predicate: Callable[[], bool], since: float, seconds: float, *, poll: float = 0.005) -> float:
    """Seconds from ``since`` (a ``time.monotonic()`` instant) until ``predicate()`` held,
    checked every ``poll`` seconds; the test fails once ``seconds`` have passed without it."""
    while not predicate():
        if time.monotonic() - since > seconds:
            pytest.fail(f"not within {seconds} s")
        time.sleep(poll)
    return time.monotonic() - since
