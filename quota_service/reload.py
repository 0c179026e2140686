"""Live policies: load -> validate -> compile beside the running policy -> swap one reference.

A failed reload keeps the last good policy and records the error (``status()``, the log
and the ``quota_policy_reload_failures_total`` metric). Requests read :attr:`LivePolicy.current`
once and keep that object for their whole life, so a swap never changes a request midway.
Counters live in the store and are never touched by a reload.

The watcher outlives anything: a reload that fails in any way (a :class:`PolicyError`, or a
bug raising something else) is recorded and the watching goes on; a file watcher that
itself fails is restarted after a pause (growing from ``restart_delay_seconds`` up to
:data:`MAX_RESTART_DELAY_SECONDS`), and the files are reloaded once it is back, so an edit
made while nothing watched is not missed.
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
from quota_service.lifecycle.diff import PolicyDiff, diff_policies
from quota_service.policy.compiled import CompiledPolicy

log = logging.getLogger(__name__)

Loader = Callable[[str | Path], CompiledPolicy]

#: The longest pause before restarting a failed file watcher (seconds).
MAX_RESTART_DELAY_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """What one swap changed (:func:`~quota_service.lifecycle.diff.diff_policies` of the
    policy swapped out and the one swapped in) and when (unix seconds)."""

    diff: PolicyDiff
    at: int


@dataclass(frozen=True, slots=True)
class PolicyStatus:
    version: str
    loaded_at: int  # unix seconds
    files: tuple[str, ...]
    last_error: str  # "" when the last reload succeeded
    last_error_at: int  # unix seconds; 0 when none
    tiers: tuple[str, ...]
    default_tier: str
    last_change: PolicyChange | None = None  # None: no swap since start


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
        # The first load must succeed: there is no last good policy to keep.
        self._current = loader(self.path)
        self._loaded_at = self._now()
        self._last_error = ""
        self._last_error_at = 0
        self._last_exception: BaseException | None = None  # what _last_error was made from
        self._last_change: PolicyChange | None = None

    def _now(self) -> int:
        return int(self._clock.now().timestamp())

    @property
    def current(self) -> CompiledPolicy:
        return self._current

    def reload(self) -> bool:
        """Load the files again. Returns ``True`` when a new version was swapped in,
        ``False`` when the content is unchanged. Raises :class:`PolicyError` (after
        recording it) when the files are bad; the running policy stays.

        Any other exception from the loader is a bug, not a bad file: it is recorded the
        same way (status, log with its traceback, metric) and raised as it is. A listener
        that raises is logged and does not stop the others (the swap has happened)."""
        with self._lock:
            try:
                fresh = self._loader(self.path)
            except PolicyError as exc:
                self._record_error(exc, str(exc))
                log.error("policy reload failed, keeping version %s: %s", self._current.version, exc)
                raise
            except Exception as exc:
                self._record_error(exc, f"{self.path}: unexpected error while loading: {type(exc).__name__}: {exc}")
                log.exception("policy reload failed unexpectedly, keeping version %s", self._current.version)
                raise
            self._last_error, self._last_error_at, self._last_exception = "", 0, None
            if fresh.version == self._current.version:
                return False
            previous = self._current
            # Before the swap: a diff that fails (a bug) leaves the running policy as it was.
            change = PolicyChange(diff_policies(previous, fresh), self._now())
            self._current = fresh
            self._loaded_at = change.at
            self._last_change = change
            log.info("policy reloaded: version %s -> %s (%s)", previous.version, fresh.version, ", ".join(fresh.files))
        _record_swap()
        return True

    def load_candidate(self) -> CompiledPolicy:
        """Load and validate the files as :meth:`reload` would, and swap nothing (``reload
        --dry-run``). Raises :class:`PolicyError` for bad files; neither the policy in force
        nor the status (its last error included) changes either way."""
        return self._loader(self.path)

    def _record_error(self, exc: BaseException, text: str) -> None:
        """Make ``text`` the status's last error (caller holds the lock or is the only writer)."""
        self._last_error, self._last_error_at, self._last_exception = text, self._now(), exc
        _record_failure()

    async def watch(
        self,
        *,
        debounce_ms: int = 300,
        stop: asyncio.Event | None = None,
        restart_delay_seconds: float = 1.0,
    ) -> None:
        """Reload whenever a policy file changes, until ``stop`` is set (or the task is cancelled).

        Watches the directory (for a single file: its parent, filtered to that file), so
        editors that save by writing a temporary file and renaming it are seen. Changes are
        debounced; a file caught half-written fails validation, is reported, and the next
        write event (the editor finishing) reloads again.

        Never ends on an error: a failed reload is recorded and logged (see :meth:`reload`);
        a failing file watcher is logged with its traceback and restarted after
        ``restart_delay_seconds``, doubling on each failure in a row up to
        :data:`MAX_RESTART_DELAY_SECONDS`, then the files are reloaded once.
        """
        from watchfiles import awatch

        directory = self.path if self.path.is_dir() else self.path.parent
        only = None if self.path.is_dir() else self.path.name

        def relevant(change: object, name: str) -> bool:
            base = Path(name).name
            if only is not None:
                return base == only
            return base.endswith((".yaml", ".yml")) and not base.startswith(".")

        delay = restart_delay_seconds
        while stop is None or not stop.is_set():
            log.info("watching %s for policy changes", directory)
            try:
                async for _changes in awatch(
                    directory, watch_filter=relevant, debounce=debounce_ms, step=50, stop_event=stop
                ):
                    delay = restart_delay_seconds  # the watcher works again
                    await self._reload_in_thread()
            except Exception:
                log.exception("the policy file watcher failed; restarting it in %.1f s", delay)
            else:
                if stop is not None and stop.is_set():
                    return
                log.warning("the policy file watcher stopped by itself; restarting it in %.1f s", delay)
            if await _stopped_within(stop, delay):
                return
            delay = min(delay * 2, MAX_RESTART_DELAY_SECONDS)
            await self._reload_in_thread()  # catch up on edits made while nothing watched

    async def _reload_in_thread(self) -> None:
        """:meth:`reload` off the event loop; whatever it raises is recorded, never raised."""
        try:
            await asyncio.to_thread(self.reload)
        except PolicyError:
            pass  # recorded and logged by reload(); the last good policy stays
        except Exception as exc:
            if exc is not self._last_exception:  # not from the loader: reload() has not recorded it
                with self._lock:
                    self._record_error(exc, f"{self.path}: reload failed: {type(exc).__name__}: {exc}")
                log.exception("policy reload failed; still watching")

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
            last_change=self._last_change,
        )


async def _stopped_within(stop: asyncio.Event | None, seconds: float) -> bool:
    """Wait ``seconds``; ``True`` as soon as ``stop`` is set."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


def _record_swap() -> None:
    from quota_service.metrics import POLICY_RELOADS

    POLICY_RELOADS.inc()


def _record_failure() -> None:
    from quota_service.metrics import POLICY_RELOAD_FAILURES

    POLICY_RELOAD_FAILURES.inc()
