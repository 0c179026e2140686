"""Rules that act when a limit is crossed (``on_cross`` in the policy): the burn-rate brake.

A tier (or the whole policy) may say, e.g.::

    on_cross:
      - {metric: cost_usd, window: hour, threshold: cap, stop_subject_for: 1h}

When a subject's limit on that metric and window reaches that line, the usage relay stores
the THRESHOLD_CROSSED event (once per subject, limit, window and threshold, whichever replica
saw it first: the ledger's primary key) and hands the events it stored *first* to
:meth:`CrossRules.on_new`; so exactly one replica pulls the SUBJECT stop, through the admin
core like an operator's (audited: a STOP_CHANGED event whose actor is ``rule:<name>``), and
it shows in ``ListStops`` with its ``expires_at``. The stop is out of force at its expiry on
every replica (:meth:`quota_service.stops.StopWatcher.active` filters it by time); within
:data:`LIFT_SECONDS` one replica also lifts it in the store (a second STOP_CHANGED event,
"lifted").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from quota_service.admin import Admin
from quota_service.errors import QuotaServiceError
from quota_service.ledger.events import Event, EventKind
from quota_service.policy.domain import GLOBAL_SCOPE
from quota_service.policy.stops import StopScope
from quota_service.reload import LivePolicy

__all__ = ["LIFT_SECONDS", "CrossRules"]

log = logging.getLogger(__name__)

#: How often each replica lifts the rules' stops whose time is up (seconds).
LIFT_SECONDS = 2.0
RULE_ACTOR = "rule:"


class CrossRules:
    def __init__(self, *, admin: Admin, policy: LivePolicy, clock: Callable[[], float] = time.time) -> None:
        self._admin = admin
        self._policy = policy
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def on_new(self, events: Sequence[Event]) -> None:
        """Act on the crossings among ``events`` (each stored for the first time)."""
        policy = self._policy.current
        for event in events:
            if event.kind is not EventKind.THRESHOLD_CROSSED or event.subject == GLOBAL_SCOPE:
                continue
            if event.limit is None or event.threshold is None:
                continue
            tier = policy.tiers.get(event.tier)
            if tier is None:
                continue
            threshold = event.threshold.name.lower()
            for rule in tier.on_cross:
                if not rule.matches(event.limit.metric, event.limit.window, threshold):
                    continue
                reason = (
                    f"rule {rule.name}: {rule.metric} per {rule.window.value} reached its {threshold} line "
                    f"(event {event.id}); stopped for {rule.stop_seconds} s"
                )
                stop = await self._admin.emergency_stop(
                    StopScope.SUBJECT,
                    event.subject,
                    actor=RULE_ACTOR + rule.name,
                    reason=reason,
                    ttl_seconds=rule.stop_seconds,
                )
                log.warning("%s: %s", event.subject, stop.describe())
                break

    async def lift_expired(self) -> int:
        """Lift, in the store, the stops whose ``expires_at`` has passed; how many this call lifted."""
        now = self._clock()
        lifted = 0
        for stop in await self._admin.list_stops():
            if stop.expires_at and stop.expires_at <= now:
                actor = stop.created_by if stop.created_by.startswith(RULE_ACTOR) else RULE_ACTOR + "expiry"
                if await self._admin.resume_stop(stop.scope, stop.target, actor=actor, reason="its time is up"):
                    lifted += 1
        return lifted

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="cross rules")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([self._task], timeout=5.0)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(LIFT_SECONDS)
            try:
                await self.lift_expired()
            except QuotaServiceError as exc:
                log.warning("lifting expired stops: %s", exc)
            except Exception:
                log.exception("lifting expired stops failed")
