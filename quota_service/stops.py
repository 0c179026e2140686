"""Emergency stops on the request path: :class:`StopWatcher`, this replica's cache of them.

The stops live in the store (``s:{__stops__}``, see
:mod:`quota_service.store.admin_store`); every change is published on a pub/sub channel.
:meth:`StopWatcher.active` answers from memory (no I/O on the request path), kept fresh by
two loops:

* a subscription: each message (and each (re)subscription) triggers a re-read of every
  stop, so a change is seen within a round trip or two of being made;
* a polling backstop: the stops are re-read every ``poll_interval`` seconds (0.5 s) whatever
  the channel does (a lost message, a broken or half-open connection, a failover).

So a stop is in force on every replica within ``poll_interval`` plus a round trip (well
under 1 s), and usually within milliseconds. Re-reads are serialized, so an older read
never overwrites a newer one.

Config changes ride along. Every write of a subject's config (tier, overrides) publishes
the subject on a channel of its own; when its store has that feed (``config_changes``) and
someone follows it (:meth:`StopWatcher.follow_configs`, which ``Quotas`` does with its
config cache), a third loop hands each notice to the followers: (re)subscribed (forget
everything: notices may have been missed), a subject changed (forget it), a heartbeat
(the subscription still answers), broken (stop trusting old entries). The followers decide
how much to trust what they cached (see :class:`quota_service.quotas.SubjectConfigCache`).

Start-up and an unreachable store. :meth:`StopWatcher.start` loads the stops before the
replica serves. If the store cannot be read then, the replica does not know whether a stop
is in force, and it **fails closed**: until the first successful load, :meth:`active`
returns one synthetic GLOBAL stop, so every request is denied with ``EMERGENCY_STOP``
(a paid call is never allowed past a kill switch this replica could not see, not even by a
tier's ``on_store_error: allow``). The polling loop keeps trying every ``poll_interval``
and logs an error at most every ``log_every`` seconds until it succeeds. Once loaded, a
store outage keeps the last stops read (nobody can change them while the store is down)
and is logged as a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Protocol, runtime_checkable

from quota_service.errors import QuotaServiceError, StoreDataError, StoreUnavailable
from quota_service.metrics import EMERGENCY_STOPS_ACTIVE
from quota_service.policy.stops import EmergencyStop, StopScope

log = logging.getLogger(__name__)

POLL_INTERVAL_SECONDS = 0.5
#: close(): how many times a loop is cancelled, and how long each time it gets to end.
CLOSE_ATTEMPTS = 5
CLOSE_WAIT_SECONDS = 0.5

#: In force until the stops were read once: every request is denied (see the module docstring).
NOT_LOADED = EmergencyStop(
    StopScope.GLOBAL,
    "",
    reason="the emergency stops could not be read from the store yet; denying everything until they are",
    created_by="quota-service",
)


class StopStore(Protocol):
    async def list_stops(self) -> list[EmergencyStop]:
        """Every stop in force (may raise :class:`StoreUnavailable`)."""
        ...

    def stop_changes(self) -> AsyncGenerator[None, None]:
        """Yields once subscribed, then once per change notice; raises :class:`StoreUnavailable`
        when the subscription breaks."""
        ...


@runtime_checkable
class ConfigChangeStore(Protocol):
    def config_changes(self) -> AsyncGenerator[str | None, None]:
        """Yields ``None`` once subscribed, then a subject per config write and ``None`` per
        heartbeat; raises :class:`StoreUnavailable` when the subscription breaks."""
        ...


class ConfigListener(Protocol):
    """Who follows config changes (``SubjectConfigCache``). Called on the watcher's loop."""

    def feed_up(self) -> None:
        """(Re)subscribed: notices may have been missed before."""

    def feed_alive(self) -> None:
        """A heartbeat: the subscription still answers."""

    def feed_changed(self, subject: str) -> None:
        """``subject``'s config was written."""

    def feed_down(self) -> None:
        """The subscription broke; a new one is being made."""


class StopWatcher:
    """A :class:`~quota_service.quotas.StopSource` backed by the store, cached in memory.

    ``poll_interval``: seconds between backstop re-reads. ``resubscribe_delay``: seconds to
    wait before subscribing again after the subscription failed. ``log_every``: the least
    number of seconds between two log lines about the same ongoing failure.
    Not thread-safe: one event loop owns it.
    """

    def __init__(
        self,
        *,
        store: StopStore,
        poll_interval: float = POLL_INTERVAL_SECONDS,
        resubscribe_delay: float = 0.5,
        log_every: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self._store = store
        self._poll_interval = poll_interval
        self._resubscribe_delay = resubscribe_delay
        self._log_every = log_every
        self._monotonic = monotonic
        self._stops: tuple[EmergencyStop, ...] = (NOT_LOADED,)
        self._expiring = False  # some stop lifts itself (filtered by time in active())
        self._frozen = False  # the store lost its data: keep the last stops read, whatever it says now
        self._loaded = False
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._failing_since: float | None = None
        self._last_failure_log = float("-inf")
        # Set by close(): the loops end even if a Redis client swallowed their cancellation
        # (redis-py may turn a CancelledError that meets a dying connection into a ConnectionError).
        self._closing = False
        self._config_listeners: list[ConfigListener] = []
        self._config_task: asyncio.Task[None] | None = None
        self.refreshes = 0  # successful re-reads (for tests and debugging)

    # -- the request path ------------------------------------------------------------------

    def active(self) -> Sequence[EmergencyStop]:
        """The stops in force, from memory (never I/O). Before the first successful load:
        one GLOBAL stop that denies everything (fail closed). A stop past its ``expires_at``
        (a rule's) is no longer in force, even before anyone has lifted it in the store."""
        if self._expiring:
            now = time.time()
            return tuple(stop for stop in self._stops if stop.in_force(now))
        return self._stops

    def freeze(self, frozen: bool) -> None:
        """While frozen (the store lost its data) refreshes keep the stops last read."""
        self._frozen = frozen

    @property
    def loaded(self) -> bool:
        """True once the stops were read from the store at least once."""
        return self._loaded

    # -- config changes -----------------------------------------------------------------------

    def follow_configs(self, listener: ConfigListener) -> None:
        """Hand every config-change notice to ``listener`` (from :meth:`start` on, or at once
        if started). Nothing happens when the store has no config feed: the listener then
        never hears that the feed is up, and trusts its entries only briefly."""
        self._config_listeners.append(listener)
        if self._tasks and self._config_task is None:
            self._start_config_loop()

    def _start_config_loop(self) -> None:
        if not isinstance(self._store, ConfigChangeStore) or not self._config_listeners:
            return
        self._config_task = asyncio.create_task(self._config_loop(self._store), name="config-subscription")
        self._tasks.append(self._config_task)

    async def _config_loop(self, store: ConfigChangeStore) -> None:
        while not self._closing:
            changes = store.config_changes()
            subscribed = False
            try:
                async for subject in changes:
                    if self._closing:
                        break
                    for listener in self._config_listeners:
                        if not subscribed:
                            listener.feed_up()
                        elif subject is None:
                            listener.feed_alive()
                        else:
                            listener.feed_changed(subject)
                    subscribed = True
            except StoreUnavailable as exc:
                log.debug("config subscription lost (%s); subscribing again", exc)
            except Exception:  # a bug must not end the subscription for good
                log.exception("config subscription failed; subscribing again")
            finally:
                for listener in self._config_listeners:
                    listener.feed_down()
                with contextlib.suppress(Exception):
                    await changes.aclose()
            await asyncio.sleep(self._resubscribe_delay)

    # -- keeping it fresh ---------------------------------------------------------------------

    async def refresh(self) -> None:
        """Re-read every stop now and swap the cache. Raises :class:`StoreUnavailable`
        (the cache stays as it was). Concurrent calls run one after the other, so the
        cache always ends with the result of the latest read."""
        async with self._lock:
            stops = tuple(await self._store.list_stops())
            if self._frozen:
                return  # the store forgot its stops: the ones last read stay in force
            changed = stops != self._stops
            self._stops = stops
            self._expiring = any(stop.expires_at for stop in stops)
            first = not self._loaded
            self._loaded = True
            self.refreshes += 1
        EMERGENCY_STOPS_ACTIVE.set(len(stops))
        self._recovered()
        if first:
            log.info("emergency stops loaded: %s", _describe(stops))
        elif changed:
            log.warning("emergency stops changed: %s", _describe(stops))

    async def start(self, *, attempts: int = 3) -> bool:
        """Load the stops (up to ``attempts`` tries, ``poll_interval`` apart), then start the
        subscription and the polling loop. Returns whether the stops are loaded; when not,
        the replica fails closed (see the module docstring) until the polling loop succeeds."""
        self._closing = False
        for attempt in range(max(1, attempts)):
            try:
                await self.refresh()
                break
            except (StoreUnavailable, StoreDataError) as exc:
                self._failed(exc)
                if attempt + 1 < attempts:
                    await asyncio.sleep(self._poll_interval)
        if not self._loaded:
            log.error(
                "EMERGENCY STOPS NOT LOADED: the store is unreachable; every request is DENIED "
                "(EMERGENCY_STOP) until they are read; retrying every %.1f s",
                self._poll_interval,
            )
        self._tasks = [
            asyncio.create_task(self._poll_loop(), name="stops-poll"),
            asyncio.create_task(self._subscription_loop(), name="stops-subscription"),
        ]
        self._start_config_loop()
        return self._loaded

    async def close(self) -> None:
        """Stop the loops (the subscriptions' connections are closed)."""
        self._closing = True
        tasks, self._tasks = self._tasks, []
        self._config_task = None
        pending = set(tasks)
        # redis-py's pubsub can swallow a cancellation that lands while it reads (it then
        # polls on): cancel again until every loop has ended, within a bound; a loop that
        # still will not end is left behind (the process is shutting down) and said so.
        for _ in range(CLOSE_ATTEMPTS):
            if not pending:
                break
            for task in pending:
                task.cancel()
            _done, pending = await asyncio.wait(pending, timeout=CLOSE_WAIT_SECONDS)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("stop watcher loop %s ended with %r", task.get_name(), task.exception())
        if pending:
            log.warning("stop watcher loops did not end on cancellation: %s", ", ".join(t.get_name() for t in pending))

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except (StoreUnavailable, StoreDataError) as exc:
            self._failed(exc)

    async def _poll_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(self._poll_interval)
            await self._refresh_quietly()

    async def _subscription_loop(self) -> None:
        while not self._closing:
            changes = self._store.stop_changes()
            try:
                async for _ in changes:
                    if self._closing:
                        break
                    await self._refresh_quietly()
            except (StoreUnavailable, StoreDataError) as exc:
                log.debug("stop subscription lost (%s); subscribing again", exc)
            except Exception:  # a bug must not end the subscription for good; polling still runs
                log.exception("stop subscription failed; subscribing again")
            finally:
                with contextlib.suppress(Exception):
                    await changes.aclose()
            await asyncio.sleep(self._resubscribe_delay)

    # -- logging loudly, not endlessly ------------------------------------------------------------

    def _failed(self, exc: QuotaServiceError) -> None:
        now = self._monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if now - self._last_failure_log < self._log_every:
            return
        self._last_failure_log = now
        if not self._loaded:
            log.error(
                "EMERGENCY STOPS NOT LOADED for %.0f s (%s): every request is DENIED until they are read",
                now - self._failing_since,
                exc,
            )
        else:
            log.warning(
                "cannot re-read the emergency stops for %.0f s (%s); enforcing the last ones read: %s",
                now - self._failing_since,
                exc,
                _describe(self._stops),
            )

    def _recovered(self) -> None:
        if self._failing_since is not None:
            log.warning("emergency stops readable again after %.1f s", self._monotonic() - self._failing_since)
        self._failing_since = None
        self._last_failure_log = float("-inf")


def _describe(stops: Sequence[EmergencyStop]) -> str:
    if not stops:
        return "none"
    return "; ".join(stop.describe() for stop in stops)
