"""The store identity: how a replica notices that Redis came back without its data.

A Redis restarted without persistence, a failover to an empty replica or a ``FLUSHALL``
leaves the service talking to a store that answers, but has forgotten every counter, tier,
override and emergency stop: capped subjects would get their whole budget again. So the
store carries an identity, ``i:{__identity__}`` (a random id written once), and each replica
remembers the one it found: in memory, and in the ledger (``relay_cursors`` row
``store_identity``) so that a replica that restarts while Redis is empty knows it too.

:meth:`StoreIdentity.check` (every second, and at start) compares them:

* the same: all is well;
* Redis has none, and nobody remembers one (a new deployment: no identity in the ledger and
  no usage record in it): one is written (``SET NX``) and remembered;
* Redis has none (or another one) while one is remembered: **the store lost its data**.
  The caller fails closed (DENY, not ready, stops frozen) until ``quota-service restore``
  has rebuilt the store from the ledger, which writes a new identity and remembers it: the
  next check finds them equal again and the replica recovers by itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from quota_service.errors import StoreUnavailable
from quota_service.ledger.errors import LedgerError
from quota_service.ledger.events import EventKind
from quota_service.ledger.store import Ledger
from quota_service.metrics import STORE_LOST
from quota_service.store.redis_store import bounded_call

__all__ = ["IDENTITY_KEY", "LEDGER_SOURCE", "IdentityGuard", "IdentityState", "StoreIdentity", "new_identity"]

log = logging.getLogger(__name__)

#: The least number of seconds between two log lines about a lost store.
LOG_SECONDS = 10.0

IDENTITY_KEY = "i:{__identity__}"
#: The ``relay_cursors`` row where the ledger remembers the store's identity.
LEDGER_SOURCE = "store_identity"


def new_identity() -> str:
    return json.dumps({"id": secrets.token_hex(12), "created_at": int(time.time())}, sort_keys=True)


@dataclass(frozen=True, slots=True)
class IdentityState:
    """``lost``: the store forgot its data (``why`` says how we know)."""

    lost: bool
    why: str = ""


class StoreIdentity:
    def __init__(self, *, client: Redis | RedisCluster, ledger: Ledger | None, timeout_seconds: float = 1.0) -> None:
        self._client = client
        self._ledger = ledger
        self._timeout = timeout_seconds
        self._known = ""  # the identity this replica trusts ("" until established)
        self._saved = False  # ... and whether the ledger remembers it too

    @property
    def known(self) -> str:
        return self._known

    async def _current(self) -> str:
        async def get() -> object:
            return await self._client.get(IDENTITY_KEY)

        value = await bounded_call("get identity", self._timeout, get, key=IDENTITY_KEY, request_deadline=False)
        return str(value or "")

    async def _remembered(self) -> str:
        if self._ledger is None:
            return ""
        return await self._ledger.relay_cursor(LEDGER_SOURCE)

    async def _ledger_has_usage(self) -> bool:
        if self._ledger is None:
            return False
        kinds = (EventKind.COMMITTED, EventKind.EXPIRED, EventKind.CORRECTED)
        page, _ = await self._ledger.list_events(kinds=kinds, page_size=1)
        return bool(page)

    async def remember(self, identity: str) -> None:
        """Trust ``identity`` (and record it in the ledger, when there is one)."""
        self._known = identity
        self._saved = self._ledger is None
        if self._ledger is not None:
            try:
                await self._ledger.advance_relay_cursor(LEDGER_SOURCE, identity, newer=lambda _new, _old: True)
                self._saved = True
            except LedgerError as exc:  # trusted here all the same; the next check writes it again
                log.warning("the ledger could not remember the store's identity (retrying): %s", exc)

    async def check(self) -> IdentityState:
        """Compare the store's identity with the one remembered (see the module docstring).
        Raises :class:`StoreUnavailable` when Redis does not answer (an outage, not a loss)."""
        current = await self._current()
        if current and current == self._known:
            if not self._saved:
                await self.remember(current)
            return IdentityState(False)
        try:
            remembered = self._known or await self._remembered()
        except LedgerError:
            remembered = self._known  # the ledger is down: what this replica knows must do
        if current:
            if not remembered:
                await self.remember(current)
                return IdentityState(False)
            if current == remembered:  # a restore wrote it, or this replica just started
                await self.remember(current)
                return IdentityState(False)
            try:  # a restore may have remembered a newer one in the ledger since
                latest = await self._remembered()
            except LedgerError:
                latest = ""
            if latest == current:
                await self.remember(current)
                return IdentityState(False)
            return IdentityState(True, "the store's identity changed: this is not the Redis the service wrote to")
        if remembered:
            return IdentityState(True, "the store has no identity any more: Redis restarted empty or was flushed")
        try:
            used_before = await self._ledger_has_usage()
        except LedgerError:
            used_before = False
        if used_before:
            return IdentityState(True, "the store is empty but the ledger holds usage records: Redis lost its data")

        async def create() -> bool:
            return bool(await self._client.set(IDENTITY_KEY, new_identity(), nx=True))

        await bounded_call("set identity", self._timeout, create, key=IDENTITY_KEY, request_deadline=False)
        await self.remember(await self._current())
        return IdentityState(False)


class IdentityGuard:
    """Checks the store's identity every ``seconds`` and switches the replica between
    serving and failing closed (``on_lost(why)`` / ``on_recovered()``); logs a lost store
    loudly every :data:`LOG_SECONDS` while it lasts, counted by ``quota_store_lost``."""

    def __init__(
        self,
        *,
        identity: StoreIdentity,
        on_lost: Callable[[str], Awaitable[None]],
        on_recovered: Callable[[], Awaitable[None]],
        seconds: float = 1.0,
    ) -> None:
        self._identity = identity
        self._on_lost = on_lost
        self._on_recovered = on_recovered
        self._seconds = seconds
        self._lost = ""
        self._logged = float("-inf")
        self._task: asyncio.Task[None] | None = None

    @property
    def lost(self) -> str:
        return self._lost

    async def check_once(self) -> None:
        try:
            state = await self._identity.check()
        except StoreUnavailable:
            return  # an outage: answered as one (on_store_error), not as a loss
        if state.lost:
            if not self._lost:
                STORE_LOST.set(1)
                self._lost = state.why
                await self._on_lost(state.why)
            if time.monotonic() - self._logged > LOG_SECONDS:
                self._logged = time.monotonic()
                log.critical(
                    "THE QUOTA STORE LOST ITS DATA: %s. Failing closed (every CheckAndReserve is denied, not ready, "
                    "the last known emergency stops kept) until `quota-service restore` rebuilds it from the ledger",
                    state.why,
                )
        elif self._lost:
            self._lost = ""
            STORE_LOST.set(0)
            log.warning("the quota store has its identity back (restored): serving again")
            await self._on_recovered()

    async def start(self) -> None:
        await self.check_once()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="store identity")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=5.0)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._seconds)
            try:
                await self.check_once()
            except Exception:
                log.exception("store identity check failed")
