"""Builders for store-level tests: counters, charges and reserve commands in whole units."""

from __future__ import annotations

import time
from collections.abc import Mapping

from quota_service.policy.domain import GLOBAL_SCOPE, CounterCharge, CounterRef
from quota_service.policy.windows import Window
from quota_service.store import keys
from quota_service.store.base import ReserveCommand

#: A fixed "now" for tests (unix ms): the real time at import, so Redis TTLs computed from
#: it (which Redis measures on its own clock) are sensible.
NOW_MS = int(time.time() * 1000)
#: Counter keys expire two days from now (unix seconds): well after every injected now_ms.
EXPIRE_AT = NOW_MS // 1000 + 2 * 86400


def counter(
    scope: str = "alice",
    metric: str = "tokens",
    window: Window = Window.DAY,
    window_id: str = "2030-01-01",
) -> CounterRef:
    return CounterRef(scope, metric, window, window_id, resets_at=EXPIRE_AT - 86_400)


def global_counter(metric: str = "cost_usd", window: Window = Window.DAY) -> CounterRef:
    return counter(GLOBAL_SCOPE, metric, window)


def charge(ref: CounterRef, ask: int, cap: int, block: int | None = None) -> CounterCharge:
    """A charge gated at ``cap`` and ``block`` (default: the cap, as for hard stops)."""
    return CounterCharge(ref, ask, cap, cap if block is None else block)


def command(
    *charges: CounterCharge,
    subject: str = "alice",
    global_charges: tuple[CounterCharge, ...] = (),
    request_id: str = "",
    now_ms: int = NOW_MS,
    ttl_seconds: int = 60,
    config_version: str | None = None,
    dry_run: bool = False,
    meta: Mapping[str, str] | None = None,
    estimate: Mapping[str, int] | None = None,
    rates: Mapping[str, str] | None = None,
    answer: str = "",
) -> ReserveCommand:
    """A reserve command with a fresh reservation id, as the server builds one."""
    return ReserveCommand(
        subject=subject,
        reservation_id=keys.new_reservation_id(subject, request_id),
        request_id=request_id,
        subject_charges=tuple(charges),
        global_charges=global_charges,
        now_ms=now_ms,
        ttl_seconds=ttl_seconds,
        config_version=config_version,
        meta=dict(meta or {}),
        estimate=dict(estimate or {}),
        rates=dict(rates or {}),
        dry_run=dry_run,
        answer=answer,
    )


def record_key(reservation_id: str) -> str:
    """The key of a reservation's record in its subject's slot."""
    name = keys.parse(reservation_id)
    return keys.record_key(name.subject, name.name)


def request_record_key(subject: str, request_id: str) -> str:
    """The key of a request_id's record (its answer, and its reservation if it has one)."""
    return keys.record_key(subject, keys.request_name(subject, request_id))


def global_record_key(reservation_id: str) -> str:
    """The key of a reservation's company-wide part."""
    return keys.record_key(GLOBAL_SCOPE, keys.parse(reservation_id).nonce)
