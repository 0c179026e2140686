"""Recorded ledgers for the lifecycle tests: real rows written through the real ledger store.

* :class:`RecordBuilder` makes the events the service records (COMMITTED, RELEASED,
  EXPIRED, CORRECTED, DENIED, THRESHOLD_CROSSED, ADMIN_CHANGE) with the same ids, details
  and costs the service gives them (costs at a policy's prices, ``detail.reserved_at_ms``).
* :func:`write_ledger` stores events in a real SQLite file (migrated, ``Ledger.insert``).
* :func:`generate` the seeded 30-day ledger of several tiers (``python -m
  support.ledger_fixture PATH [--seed N] [--days D] [--subjects N]`` from ``tests/``).

Times are unix milliseconds; amounts whole units.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from quota_service.ledger.admin_events import audit_event
from quota_service.ledger.events import Event, EventKind, LimitSnapshot, Threshold, record_id, threshold_event_id
from quota_service.ledger.store import ledger_from_url
from quota_service.policy.compiled import CompiledPolicy, LimitKind, micros_at
from quota_service.policy.domain import Decision, Reason
from quota_service.policy.units import COST_METRIC
from quota_service.policy.windows import Window

DAY_MS = 86_400_000
HOUR_MS = 3_600_000


@dataclass
class RecordBuilder:
    """Events as the service records them, priced at ``policy``'s prices."""

    policy: CompiledPolicy
    feature: str = "chat"
    provider: str = "openai"
    model: str = "gpt-4o"
    events: list[Event] = field(default_factory=list)
    _n: int = 0

    def _next(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n:08d}"

    def _priced(
        self, provider: str, model: str, usage: Mapping[str, int]
    ) -> tuple[dict[str, int], int, dict[str, object]]:
        cost, _, rates = self.policy.prices.cost_micros(provider, model, dict(usage))
        estimate = dict(usage)
        if cost:
            estimate[COST_METRIC] = cost
        return estimate, cost, dict(rates)

    def request(
        self,
        kind: EventKind,
        subject: str,
        tier: str,
        at_ms: int,
        estimate: Mapping[str, int],
        *,
        actual: Mapping[str, int] | None = None,
        reserved_at_ms: int | None = None,
        decision: Decision = Decision.ALLOW,
        reason: Reason = Reason.LIMIT_EXCEEDED,
        feature: str | None = None,
        provider: str | None = None,
        model: str | None = None,
    ) -> Event:
        """One request's final record: ``kind`` COMMITTED (``actual`` used), RELEASED,
        EXPIRED or DENIED (``reason``); ``reserved_at_ms``: when it was made (default: ``at_ms``)."""
        provider = self.provider if provider is None else provider
        model = self.model if model is None else model
        feature = self.feature if feature is None else feature
        priced, estimate_cost, rates = self._priced(provider, model, estimate)
        reservation = self._next("rsv_")
        common = {
            "at_ms": at_ms,
            "subject": subject,
            "tier": tier,
            "feature": feature,
            "provider": provider,
            "model": model,
            "request_id": self._next("req_"),
            "estimate": priced,
        }
        if kind is EventKind.DENIED:
            event = Event(
                id=f"den_{reservation}",
                kind=kind,
                decision=Decision.DENY,
                reason=reason,
                detail=json.dumps({"would_be_reservation_id": reservation}),
                **common,  # type: ignore[arg-type]
            )
        else:
            detail = json.dumps({"reserved_at_ms": at_ms if reserved_at_ms is None else reserved_at_ms})
            used: dict[str, int] = {}
            cost = 0
            if kind is EventKind.COMMITTED:
                used = dict(actual if actual is not None else estimate)
                cost = micros_at(rates, used) if rates else 0  # type: ignore[arg-type]
                if cost:
                    used[COST_METRIC] = cost
            elif kind is EventKind.EXPIRED:
                used, cost = dict(priced), estimate_cost
            event = Event(
                id=record_id(kind, reservation),
                kind=kind,
                reservation_id=reservation,
                actual=used,
                cost_micros=cost,
                decision=decision,
                detail=detail,
                **common,  # type: ignore[arg-type]
            )
        self.events.append(event)
        return event

    def corrected(self, expired: Event, at_ms: int, settled: Mapping[str, int]) -> Event:
        """A late Commit of ``settled`` on an EXPIRED record: the difference."""
        _, _, rates = self._priced(
            expired.provider, expired.model, {m: v for m, v in expired.estimate.items() if m != COST_METRIC}
        )
        full = dict(settled)
        if rates:
            full[COST_METRIC] = micros_at(rates, settled)  # type: ignore[arg-type]
        delta = {m: full.get(m, 0) - expired.estimate.get(m, 0) for m in sorted(set(full) | set(expired.estimate))}
        event = Event(
            id=record_id(EventKind.CORRECTED, expired.reservation_id),
            kind=EventKind.CORRECTED,
            at_ms=at_ms,
            subject=expired.subject,
            tier=expired.tier,
            feature=expired.feature,
            provider=expired.provider,
            model=expired.model,
            reservation_id=expired.reservation_id,
            estimate=dict(expired.estimate),
            actual=delta,
            cost_micros=delta.get(COST_METRIC, 0),
            detail=json.dumps({"corrects": expired.id, "settled_by": "commit"}),
        )
        self.events.append(event)
        return event

    def threshold(
        self,
        subject: str,
        tier: str,
        at_ms: int,
        metric: str,
        window: Window,
        window_id: str,
        threshold: Threshold,
        cap: int,
    ) -> Event:
        event = Event(
            id=threshold_event_id(subject, LimitKind.TIER, metric, window, window_id, threshold),
            kind=EventKind.THRESHOLD_CROSSED,
            at_ms=at_ms,
            subject=subject,
            tier=tier,
            threshold=threshold,
            limit=LimitSnapshot(metric, window, cap, 0, cap, at_ms // 1000 + 86400, LimitKind.TIER),
            detail=json.dumps({"window_id": window_id}),
        )
        self.events.append(event)
        return event

    def admin(self, action: str, subject: str, at_ms: int, *, before: object = None, after: object = None) -> Event:
        """The ADMIN_CHANGE of an admin write (``SetTier``, ``SetOverride``, ...), as the audit relay stores it."""
        event = audit_event(
            entry_id=f"{at_ms}-{self._next('')}",
            at_ms=at_ms,
            actor="test",
            action=action,
            target=subject,
            subject=subject,
            before=json.dumps(before),
            after=json.dumps(after),
            reason="",
        )
        self.events.append(event)
        return event

    def set_tier(self, subject: str, tier: str, at_ms: int) -> Event:
        return self.admin("SetTier", subject, at_ms, before={"tier": None}, after={"tier": tier or None})

    def set_override(
        self, subject: str, metric: str, window: str, amount: float, at_ms: int, expires_at: int = 0
    ) -> Event:
        after = {"metric": metric, "window": window, "max": amount, "expires_at": expires_at, "reason": ""}
        return self.admin("SetOverride", subject, at_ms, after=after)


async def write_ledger(path: Path, events: Iterable[Event], *, batch: int = 5000) -> str:
    """Store ``events`` in a new (migrated) SQLite ledger at ``path``; its URL."""
    url = f"sqlite:///{path}"
    ledger = ledger_from_url(url, timeout_seconds=30.0)
    assert ledger is not None
    try:
        await ledger.migrate()
        chunk: list[Event] = []
        for event in events:
            chunk.append(event)
            if len(chunk) >= batch:
                await ledger.insert(chunk)
                chunk = []
        if chunk:
            await ledger.insert(chunk)
    finally:
        await ledger.close()
    return url


#: The generated ledger's tiers and how much their subjects ask per request (tokens).
FIXTURE_TIERS = {"free": (50, 200), "basic": (200, 1500), "pro": (500, 5000)}


def generate_events(
    policy: CompiledPolicy,
    *,
    start_ms: int,
    days: int = 30,
    subjects: int = 4,
    requests_per_day: int = 6,
    seed: int = 7,
) -> list[Event]:
    """A seeded ledger: ``subjects`` per tier of :data:`FIXTURE_TIERS` (``free-0``,
    ``basic-1``, ...; the non-free ones assigned by SetTier before ``start_ms``), each making
    ``requests_per_day`` requests a day for ``days`` days: mostly COMMITTED (actual 60-110 %
    of the estimate), some RELEASED and EXPIRED. Everything the same for the same arguments."""
    rng = random.Random(seed)
    builder = RecordBuilder(policy)
    for tier in FIXTURE_TIERS:
        for n in range(subjects):
            if tier != policy.default_tier:
                builder.set_tier(f"{tier}-{n}", tier, start_ms - HOUR_MS)
    for day in range(days):
        for tier, (low, high) in FIXTURE_TIERS.items():
            for n in range(subjects):
                for _ in range(requests_per_day):
                    at = start_ms + day * DAY_MS + rng.randrange(DAY_MS - HOUR_MS)
                    ask = rng.randint(low, high)
                    roll = rng.random()
                    kind = (
                        EventKind.RELEASED if roll < 0.05 else EventKind.EXPIRED if roll < 0.08 else EventKind.COMMITTED
                    )
                    actual = {"tokens": max(1, int(ask * rng.uniform(0.6, 1.1)))}
                    builder.request(
                        kind, f"{tier}-{n}", tier, at + 1000, {"tokens": ask}, actual=actual, reserved_at_ms=at
                    )
    return sorted(builder.events, key=lambda e: (e.at_ms, e.id))


def main(argv: list[str] | None = None) -> int:
    from quota_service.policy.loader import load_policy

    parser = argparse.ArgumentParser(description="write the seeded lifecycle ledger fixture")
    parser.add_argument("path", type=Path)
    parser.add_argument("--policy", default=str(Path(__file__).parent.parent / "fixtures/policies/lifecycle/live.yaml"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--start-ms", type=int, default=1_764_547_200_000)  # 2025-12-01T00:00:00Z
    args = parser.parse_args(argv)
    events = generate_events(
        load_policy(args.policy), start_ms=args.start_ms, days=args.days, subjects=args.subjects, seed=args.seed
    )
    print(asyncio.run(write_ledger(args.path, events)), f"({len(events)} events)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
