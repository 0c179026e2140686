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
    return await write_ledger_url(f"sqlite:///{path}", events, batch=batch)


async def write_ledger_url(url: str, events: Iterable[Event], *, batch: int = 5000) -> str:
    """Store ``events`` in the (migrated) ledger at ``url`` (SQLite or PostgreSQL); the URL."""
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


# -- the known distributions of the recommend and estimates tests ---------------------------


def recommend_story(builder: RecordBuilder, today_ms: int) -> None:
    """Records over the days before ``today_ms`` (a UTC midnight), policy
    tests/fixtures/policies/lifecycle/live.yaml (free 1,000 / basic 10,000 / pro 50,000
    tokens a day):

    * free: ``f01`` ... ``f20`` use 50, 100, ..., 1,000 tokens on one day (five days ago):
      p50 500, p90 900, p95 950, max 1,000 (nearest rank over 20 subject-days);
    * ``climber`` (free): WARN crossings on 3 days and a DENIED (LIMIT_EXCEEDED) on a 4th:
      a promotion candidate to basic on 4 days; ``nearly`` (free): 2 days only: not one;
    * ``idle`` (basic): 500 tokens on each of 5 days (5 % of 10,000 < 20 %): a demotion
      candidate to free, peak 5 %; ``busy`` (basic) 2,500 once (25 %): not one;
    * ``whale`` (pro): 1,000 tokens on 2 days (2 %): a demotion candidate to basic.
    """
    day = today_ms - 5 * DAY_MS + 10 * HOUR_MS
    for k in range(1, 21):
        builder.request(EventKind.COMMITTED, f"f{k:02d}", "free", day, {"tokens": 50 * k})
    for n in (1, 2, 3):
        at = today_ms - n * DAY_MS + 9 * HOUR_MS
        builder.threshold("climber", "free", at, "tokens", Window.DAY, f"d{n}", Threshold.WARN, 1000)
    builder.request(EventKind.DENIED, "climber", "free", today_ms - 4 * DAY_MS + HOUR_MS, {"tokens": 900})
    for n in (1, 2):
        at = today_ms - n * DAY_MS + 9 * HOUR_MS
        builder.threshold("nearly", "free", at, "tokens", Window.DAY, f"d{n}", Threshold.BLOCK, 1000)
    for n in range(1, 6):
        builder.request(EventKind.COMMITTED, "idle", "basic", today_ms - n * DAY_MS + 8 * HOUR_MS, {"tokens": 500})
    builder.request(EventKind.COMMITTED, "busy", "basic", today_ms - 2 * DAY_MS + 8 * HOUR_MS, {"tokens": 2500})
    for n in (1, 3):
        builder.request(EventKind.COMMITTED, "whale", "pro", today_ms - n * DAY_MS + 8 * HOUR_MS, {"tokens": 1000})
    # Outside a 14-day period: ignored.
    builder.request(EventKind.COMMITTED, "f01", "free", today_ms - 20 * DAY_MS, {"tokens": 99_999})


def estimates_story(builder: RecordBuilder, at_ms: int) -> None:
    """COMMITTED records around ``at_ms``: pro/summary (``e1``) on openai/gpt-4o, 20 records estimating
    100 tokens that used 5, 10, ..., 100 (ratios 0.05 ... 1.00: p50 0.50, p95 0.95, mean
    0.525, none over; the same for cost_usd, priced linearly); basic/seo 4 records of 100
    that used 120 (p50 = p95 = 1.2, 4 over; ``e2``). RELEASED and EXPIRED records do not count.
    (In the recommend story's period they are two more demotion candidates: ``e1`` used
    1,150 of pro's 50,000 tokens that day, ``e2`` 480 of basic's 10,000.)"""
    for k in range(1, 21):
        builder.request(
            EventKind.COMMITTED, "e1", "pro", at_ms + k, {"tokens": 100}, actual={"tokens": 5 * k}, feature="summary"
        )
    for k in range(4):
        builder.request(
            EventKind.COMMITTED, "e2", "basic", at_ms + 100 + k, {"tokens": 100}, actual={"tokens": 120}, feature="seo"
        )
    builder.request(EventKind.RELEASED, "e1", "pro", at_ms + 200, {"tokens": 100}, feature="summary")
    builder.request(EventKind.EXPIRED, "e1", "pro", at_ms + 201, {"tokens": 100}, feature="summary")
