"""``quota-service restore``: rebuild a Redis that lost its data from the ledger.

What the ledger knows is written back:

* **counters** of every window still kept (its end plus the store's counter retention is
  later than now): per subject and company-wide, the sum of the COMMITTED, EXPIRED and
  CORRECTED records' amounts (``actual``, ``cost_usd`` included) whose reservation was made in
  that window (``detail.reserved_at_ms``), on every window the subject's tier (the record's),
  its overrides and the company-wide limits count that metric on, as the service would have
  charged them. Records settled before a ``ResetUsage`` of the subject (and of that metric /
  window, when it named them) are left out, as the reset zeroed them. Open reservations were
  never recorded: they are gone (their Commits answer NOT_FOUND; their holds with them);
* **tier assignments** and **overrides**: the last SetTier, SetOverride / DeleteOverride of
  each subject (overrides past their expiry left out);
* **emergency stops**: every stop whose last STOP_CHANGED pulled it (and has not expired);
* a new **store identity**, remembered in the ledger: every replica failing closed on the
  lost store sees it within a second and serves again.

Refused (nothing written) when the store still has an identity, unless ``force``: restoring
onto a store that has its data would count everything twice.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from quota_service.admin import override_units
from quota_service.errors import QuotaServiceError
from quota_service.ledger.events import Event, EventKind
from quota_service.ledger.store import Ledger
from quota_service.policy.compiled import CompiledPolicy
from quota_service.policy.domain import GLOBAL_SCOPE, OverrideRecord
from quota_service.policy.stops import EmergencyStop, StopScope
from quota_service.policy.windows import Window, window_span
from quota_service.server.store_identity import IDENTITY_KEY, StoreIdentity, new_identity
from quota_service.store import keys
from quota_service.store.admin_store import RedisAdminStore
from quota_service.store.redis_store import COUNTER_RETENTION_SECONDS, RedisCounterStore

__all__ = ["RestoreRefused", "RestoreReport", "restore"]

log = logging.getLogger(__name__)

USAGE = (EventKind.COMMITTED, EventKind.EXPIRED, EventKind.CORRECTED)
#: The longest window (a month) plus the retention: older records cannot be on a kept counter.
HORIZON_MS = (31 * 86400 + COUNTER_RETENTION_SECONDS) * 1000


class RestoreRefused(QuotaServiceError):
    """The store still has its identity (it did not lose its data)."""


@dataclass
class RestoreReport:
    counters: int = 0
    records: int = 0
    tiers: int = 0
    overrides: int = 0
    stops: int = 0
    identity: str = ""
    skipped: dict[str, int] = field(default_factory=dict)

    def text(self) -> str:
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none"
        return (
            f"restored {self.counters} counters from {self.records} usage records, {self.tiers} tier assignments, "
            f"{self.overrides} overrides, {self.stops} emergency stops; new store identity written "
            f"(skipped: {skipped})"
        )


async def _events(ledger: Ledger, kinds: Iterable[EventKind], since_ms: int = 0) -> list[Event]:
    found: list[Event] = []
    token = ""
    while True:
        page, token = await ledger.list_events(kinds=tuple(kinds), since_ms=since_ms, page_size=1000, page_token=token)
        found += page
        if not token:
            return found


def _detail(event: Event) -> dict[str, Any]:
    try:
        data = json.loads(event.detail) if event.detail else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _reset_after(resets: Iterable[tuple[str, str, str, int]], event: Event, metric: str, window: Window) -> bool:
    """Whether a ResetUsage of the event's subject (of this metric / window, when it named one)
    came after the event: the reset zeroed what the event had added."""
    return any(
        subject == event.subject and event.at_ms < at and (not m or m == metric) and (not w or w == window.value)
        for subject, m, w, at in resets
    )


async def restore(
    *,
    ledger: Ledger,
    counters: RedisCounterStore,
    policy: CompiledPolicy,
    now: datetime | None = None,
    force: bool = False,
) -> RestoreReport:
    """See the module docstring."""
    now = now or datetime.now(UTC)
    now_s = int(now.timestamp())
    client = counters.client
    if not force and await client.get(IDENTITY_KEY):
        raise RestoreRefused(
            "the store still has its identity: it did not lose its data, and restoring onto it would count "
            "everything twice (pass --force only if you know it is empty of counters)"
        )
    report = RestoreReport()
    admin = RedisAdminStore(counters=counters)
    changes = await _events(ledger, (EventKind.ADMIN_CHANGE, EventKind.STOP_CHANGED))

    tiers: dict[str, str | None] = {}
    overrides: dict[tuple[str, str, str], dict[str, Any] | None] = {}
    stops: dict[str, dict[str, Any] | None] = {}
    resets: list[tuple[str, str, str, int]] = []  # subject, metric, window, at_ms
    for event in changes:  # oldest first: the last change wins
        detail = _detail(event)
        action, after = detail.get("action"), detail.get("after")
        if action == "SetTier" and isinstance(after, dict):
            tiers[event.subject] = after.get("tier") or None
        elif action == "SetOverride" and isinstance(after, dict):
            overrides[(event.subject, str(after.get("metric")), str(after.get("window")))] = after
        elif action == "DeleteOverride":
            before = detail.get("before")
            if isinstance(before, dict):
                overrides[(event.subject, str(before.get("metric")), str(before.get("window")))] = None
        elif action == "ResetUsage" and isinstance(after, dict):
            resets.append((event.subject, str(after.get("metric") or ""), str(after.get("window") or ""), event.at_ms))
        elif action in ("EmergencyStop", "ResumeStop"):
            stops[str(detail.get("target", ""))] = (
                after if action == "EmergencyStop" and isinstance(after, dict) else None
            )

    for subject, tier in sorted(tiers.items()):
        if tier and tier in policy.tiers:
            await counters.set_tier(subject, tier)
            report.tiers += 1
    live_overrides: dict[str, list[OverrideRecord]] = defaultdict(list)
    for (subject, metric, window), body in sorted(overrides.items()):
        if body is None:
            continue
        expires_at = int(body.get("expires_at") or 0)
        if expires_at and expires_at <= now_s:
            report.skipped["expired overrides"] = report.skipped.get("expired overrides", 0) + 1
            continue
        record = OverrideRecord(
            subject,
            metric,
            Window(window),
            override_units(metric, float(body["max"])),
            expires_at,
            reason=str(body.get("reason") or ""),
        )
        await admin.note_overridden(subject, now_s)  # ListOverrides finds it
        await admin.set_override(record)
        live_overrides[subject].append(record)
        report.overrides += 1
    for body in stops.values():
        if body is None:
            continue
        stop = EmergencyStop(
            StopScope(str(body["scope"])),
            str(body.get("target") or ""),
            str(body.get("reason") or ""),
            int(body.get("created_at") or 0),
            str(body.get("created_by") or ""),
            int(body.get("expires_at") or 0),
        )
        if stop.expires_at and stop.expires_at <= now_s:
            continue
        await admin.put_stop(stop)
        report.stops += 1

    totals: dict[tuple[str, str, Window, str], int] = defaultdict(int)
    expiry: dict[tuple[str, str, Window, str], int] = {}
    since_ms = now_s * 1000 - HORIZON_MS
    for event in await _events(ledger, USAGE, since_ms=max(0, since_ms - 86400 * 1000)):
        reserved_ms = int(_detail(event).get("reserved_at_ms") or event.at_ms)
        report.records += 1
        reserved = datetime.fromtimestamp(reserved_ms / 1000, UTC)
        record_tier = policy.tiers.get(event.tier) or policy.tier_for(None)
        own_windows: dict[str, set[Window]] = defaultdict(set)
        if record_tier is not None:
            for limit in (*record_tier.limits, *record_tier.hard_stops):
                own_windows[limit.metric].add(limit.window)
        for override in live_overrides.get(event.subject, ()):
            own_windows[override.metric].add(override.window)
        global_windows: dict[str, set[Window]] = defaultdict(set)
        for limit in policy.global_limits:
            global_windows[limit.metric].add(limit.window)
        for metric, amount in event.actual.items():
            for scope, windows in ((event.subject, own_windows), (GLOBAL_SCOPE, global_windows)):
                for window in windows.get(metric, ()):
                    if scope != GLOBAL_SCOPE and _reset_after(resets, event, metric, window):
                        report.skipped["amounts a reset zeroed"] = report.skipped.get("amounts a reset zeroed", 0) + 1
                        continue
                    span = window_span(window, reserved, policy.timezone)
                    if span.end + COUNTER_RETENTION_SECONDS <= now_s:
                        continue
                    counter = (scope, metric, window, span.window_id)
                    totals[counter] += amount
                    expiry[counter] = span.end + COUNTER_RETENTION_SECONDS

    pipe = client.pipeline()
    for (scope, metric, window, window_id), total in sorted(totals.items(), key=lambda kv: str(kv[0])):
        key = f"{keys.COUNTER}:{{{scope}}}:{metric}:{window}:{window_id}"
        pipe.hset(key, "used", max(0, total))
        pipe.expireat(key, expiry[(scope, metric, window, window_id)])
        if scope != GLOBAL_SCOPE and counters.keeps_boards and window in (Window.DAY, Window.MONTH):
            board = keys.board_key(counters.slot_tag(scope), metric, window.value, window_id)
            pipe.zadd(board, {scope: max(0, total)})
            pipe.expireat(board, expiry[(scope, metric, window, window_id)])
        report.counters += 1
    await pipe.execute()

    identity = StoreIdentity(client=client, ledger=ledger)
    text = new_identity()
    await client.set(IDENTITY_KEY, text)
    await identity.remember(text)
    report.identity = text
    log.info("%s", report.text())
    return report
