"""Live policies: load -> validate -> compile beside the running policy -> swap one reference.

A failed reload keeps the last good policy and records the error (``status()``, the log
and the ``quota_policy_reload_failures_total`` metric). Requests read :attr:`LivePolicy.current`
once and keep that object for their whole life, so a swap never changes a request midway.
Counters live in the store and are never touched by a reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from quota_service.clock import Clock, SystemClock
from quota_service.errors import PolicyError
from quota_service.policy.compiled import CompiledPolicy

log = logging.getLogger(__name__)

Loader = Callable[[str | Path], CompiledPolicy]


@dataclass(frozen=True, slots=True)
class PolicyStatus:
    version: str
    loaded_at: int  # unix seconds
    files: tuple[str, ...]
    last_error: str  # "" when the last reload succeeded
    last_error_at: int  # unix seconds; 0 when none
    tiers: tuple[str, ...]
    default_tier: str


class LivePolicy:
    """The policy in force and how it got there. Thread-safe: reloads are serialized."""

    def __init__(self, path: str | Path, *, loader: Loader | None = None, clock: Clock | None = None) -> None:
        if loader is None:
            from quota_service.policy.loader import load_policy

            loader = load_policy
        self.path = Path(path)
        self._loader = loader
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[CompiledPolicy], None]] = []
        # The first load must succeed: there is no last good policy to keep.
        self._current = loader(self.path)
        self._loaded_at = self._now()
        self._last_error = ""
        self._last_error_at = 0

    def _now(self) -> int:
        return int(self._clock.now().timestamp())

    @property
    def current(self) -> CompiledPolicy:
        return self._current

    def on_swap(self, listener: Callable[[CompiledPolicy], None]) -> None:
        """Call ``listener(new_policy)`` after every successful swap."""
        self._listeners.append(listener)

    def reload(self) -> bool:
        """Load the files again. Returns ``True`` when a new version was swapped in,
        ``False`` when the content is unchanged. Raises :class:`PolicyError` (after
        recording it) when the files are bad; the running policy stays."""
        with self._lock:
            try:
                fresh = self._loader(self.path)
            except PolicyError as exc:
                self._last_error = str(exc)
                self._last_error_at = self._now()
                _record_failure()
                log.error("policy reload failed, keeping version %s: %s", self._current.version, exc)
                raise
            self._last_error, self._last_error_at = "", 0
            if fresh.version == self._current.version:
                return False
            previous, self._current = self._current, fresh
            self._loaded_at = self._now()
            log.info("policy reloaded: version %s -> %s (%s)", previous.version, fresh.version, ", ".join(fresh.files))
        _record_swap()
        for listener in self._listeners:
            listener(fresh)
        return True

    async def watch(self, *, debounce_ms: int = 300, stop: asyncio.Event | None = None) -> None:
        """Reload whenever a policy file changes, until ``stop`` is set.

        Watches the directory (for a single file: its parent, filtered to that file), so
        editors that save by writing a temporary file and renaming it are seen. Changes are
        debounced; a file caught half-written fails validation, is reported, and the next
        write event (the editor finishing) reloads again.
        """
        from watchfiles import awatch

        directory = self.path if self.path.is_dir() else self.path.parent
        only = None if self.path.is_dir() else self.path.name

        def relevant(change: object, name: str) -> bool:
            base = Path(name).name
            if only is not None:
                return base == only
            return base.endswith((".yaml", ".yml")) and not base.startswith(".")

        log.info("watching %s for policy changes", directory)
        async for _changes in awatch(directory, watch_filter=relevant, debounce=debounce_ms, step=50, stop_event=stop):
            # A PolicyError is recorded and logged by reload(); the last good policy stays.
            with contextlib.suppress(PolicyError):
                await asyncio.to_thread(self.reload)

    def status(self) -> PolicyStatus:
        policy = self._current
        return PolicyStatus(
            version=policy.version,
            loaded_at=self._loaded_at,
            files=policy.files,
            last_error=self._last_error,
            last_error_at=self._last_error_at,
            tiers=tuple(sorted(policy.tiers)),
            default_tier=policy.default_tier,
        )


def _record_swap() -> None:
    from quota_service.metrics import POLICY_RELOADS

    POLICY_RELOADS.inc()


def _record_failure() -> None:
    from quota_service.metrics import POLICY_RELOAD_FAILURES

    POLICY_RELOAD_FAILURES.inc()
