"""A monotonic clock tests move by hand (a module of its own: ``conftest`` is not importable
by name when several test directories have one)."""

from __future__ import annotations


class Monotonic:
    """A monotonic clock tests move by hand (the config cache's)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
