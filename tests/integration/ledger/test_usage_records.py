"""Every request ends in exactly one usage record, written atomically with its counter change
(the slot's outbox, drained by the usage relay), on real Redis and real SQLite / PostgreSQL.

The invariant checked after each burst: per subject and window, the costs (and token
amounts) of the COMMITTED + EXPIRED + CORRECTED records equal the counters; every granted
reservation has exactly one terminal record; every denial has its DENIED record."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio

from quota_service.clock import ManualClock
from quota_service.ledger import Ledger
from quota_service.ledger.events import Event, EventKind, Threshold
from quota_service.policy.domain import Decision, Reason
from quota_service.policy.validation import build_request
from quota_service.quotas import Quotas
from quota_service.reload import LivePolicy
from quota_service.server.usage_relay import UsageRelay
from quota_service.store import keys
from quota_service.store.redis_store import RedisCounterStore

pytestmark = pytest.mark.redis

POLICY = """\
version: 1
default_tier: metered
timezone: UTC
thresholds: {warn_at: 0.80, block_at: 0.95}
reservation_ttl_seconds: 300
unpriced: deny
on_store_error: deny
prices:
  "openai/gpt-4o": {tokens: 0.00001}     # 10 micro-dollars a token
tiers:
  metered:
    features: [chat]
    limits:
      tokens: {day: 1000000}
      cost_usd: {day: 50.00}
  tiny:
    features: [chat]
    limits:
      tokens: {day: 1000}
"""
USAGE_KINDS = (EventKind.COMMITTED, EventKind.EXPIRED, EventKind.CORRECTED)


@dataclass
class World:
    store: RedisCounterStore
    quotas: Quotas
    relay: UsageRelay
    ledger: Ledger
    raw: redis.asyncio.Redis
    clock: ManualClock


@pytest.fixture
async def world(redis_url: str, ledger: Ledger, tmp_path: Path) -> AsyncIterator[World]:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY)
    clock = ManualClock(datetime.now(UTC))
    store = RedisCounterStore.from_url(redis_url, timeout_seconds=5.0, clock=lambda: clock.now().timestamp())
    relay = UsageRelay(store=store, ledger=ledger, clock=lambda: clock.now().timestamp())
    quotas = Quotas(policy=LivePolicy(policy_file), store=store, clock=clock, records=relay.record)
    raw = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield World(store, quotas, relay, ledger, raw, clock)
    finally:
        await raw.aclose()
        await store.close()


def chat(who: str, tokens: int, request_id: str, *, ttl: int = 0) -> object:
    return build_request(
        subject=who,
        feature="chat",
        provider="openai",
        model="gpt-4o",
        usage={"tokens": tokens},
        request_id=request_id,
        ttl_seconds=ttl,
    )


async def all_events(ledger: Ledger, **filters: object) -> list[Event]:
    found: list[Event] = []
    token = ""
    while True:
        page, token = await ledger.list_events(page_size=1000, page_token=token, **filters)  # type: ignore[arg-type]
        found += page
        if not token:
            return found


async def counter_used(raw: redis.asyncio.Redis, who: str, metric: str, day: str) -> int:
    return int(await raw.hget(f"q:{{{who}}}:{metric}:day:{day}", "used") or 0)


def day_of(clock: ManualClock) -> str:
    return clock.now().strftime("%Y-%m-%d")


async def test_a_burst_of_commits_releases_and_expiries_leaves_the_ledger_equal_to_the_counters(world: World) -> None:
    rng = random.Random(7)
    subjects = [f"user-{i}" for i in range(5)]
    requests = [chat(subjects[i % 5], rng.randint(100, 500), f"r-{i}", ttl=2 if i % 3 == 2 else 0) for i in range(200)]
    answers = await asyncio.gather(*(world.quotas.check_and_reserve(r) for r in requests))  # type: ignore[arg-type]
    granted = [(r, a) for r, a in zip(requests, answers, strict=True) if a.reservation_id]
    assert len(granted) == 200
    committed: dict[str, int] = {}
    released: set[str] = set()
    expiring: list[str] = []
    work = []
    for i, (_, answer) in enumerate(granted):
        if i % 3 == 0:
            used = rng.randint(0, 600)  # under and over the estimate
            committed[answer.reservation_id] = used
            work.append(world.quotas.commit(answer.reservation_id, {"tokens": used}))
        elif i % 3 == 1:
            released.add(answer.reservation_id)
            work.append(world.quotas.release(answer.reservation_id))
        else:
            expiring.append(answer.reservation_id)
    await asyncio.gather(*work)

    world.clock.advance(3)  # past the 2 s TTL: the reaper settles them with no request of theirs
    assert await world.relay.reap_once() >= 1
    late = expiring[:10]
    for rid in late[:7]:  # a late commit corrects each, in both directions
        await world.quotas.commit(rid, {"tokens": 250})
    for rid in late[7:]:  # a late release takes the whole estimate back
        await world.quotas.release(rid)
    await world.relay.drain()

    events = await all_events(world.ledger)
    by_reservation: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        by_reservation[event.reservation_id].append(event)
    for _, answer in granted:
        kinds = sorted(e.kind.name for e in by_reservation[answer.reservation_id])
        rid = answer.reservation_id
        if rid in committed:
            assert kinds == ["COMMITTED"]
            (record,) = by_reservation[rid]
            assert record.actual["tokens"] == committed[rid]
            assert record.cost_micros == committed[rid] * 10
            assert record.decision is Decision.ALLOW
            assert record.tier == "metered" and record.feature == "chat" and record.model == "gpt-4o"
            assert record.policy_version and record.request_id.startswith("r-")
        elif rid in released:
            assert kinds == ["RELEASED"]
            assert by_reservation[rid][0].cost_micros == 0
        elif rid in late:
            assert kinds == ["CORRECTED", "EXPIRED"]
            expired = next(e for e in by_reservation[rid] if e.kind is EventKind.EXPIRED)
            corrected = next(e for e in by_reservation[rid] if e.kind is EventKind.CORRECTED)
            assert json.loads(corrected.detail)["corrects"] == expired.id
            assert expired.cost_micros + corrected.cost_micros == (250 * 10 if rid in late[:7] else 0)
        else:
            assert kinds == ["EXPIRED"]
            (expired,) = by_reservation[rid]
            assert expired.cost_micros == expired.estimate["tokens"] * 10
            assert expired.at_ms == json.loads(expired.detail)["expires_at_ms"]  # when its TTL passed

    day = day_of(world.clock)
    for who in subjects:
        usage = [e for e in events if e.subject == who and e.kind in USAGE_KINDS]
        assert sum(e.cost_micros for e in usage) == await counter_used(world.raw, who, "cost_usd", day)
        assert sum(e.actual.get("tokens", 0) for e in usage) == await counter_used(world.raw, who, "tokens", day)
    # Nothing waits in Redis any more, and the ids are unique (one row per id).
    assert await world.raw.xlen(keys.outbox_key(keys.SINGLE_TAG)) == 0
    assert len({e.id for e in events}) == len(events)


async def test_denials_are_recorded_with_the_deciding_limit_and_crossings_once(world: World) -> None:
    who = "capped"
    await world.store.set_tier(who, "tiny")  # 1,000 tokens a day: warn 800, block 950
    answers = []
    for i in range(14):  # 100 each: the 8th reaches the warn line, the 10th the block line and the cap
        answers.append(await world.quotas.check_and_reserve(chat(who, 100, f"t-{i}")))  # type: ignore[arg-type]
    decisions = [a.outcome.decision for a in answers]
    assert decisions.count(Decision.DENY) == 4
    # The same request ids again: replays, recorded once.
    for i in range(14):
        again = await world.quotas.check_and_reserve(chat(who, 100, f"t-{i}"))  # type: ignore[arg-type]
        assert again.replayed
    # A feature outside the tier: denied by the engine, recorded in memory by the core.
    engine = build_request(subject=who, feature="images", provider="openai", model="gpt-4o", usage={"tokens": 1})
    assert (await world.quotas.check_and_reserve(engine)).outcome.reason is Reason.FEATURE_NOT_ALLOWED
    await world.relay.drain()

    events = await all_events(world.ledger, subject=who)
    denied = [e for e in events if e.kind is EventKind.DENIED]
    # the record says what the answer said (used + held at 1,000: past the block line first)
    assert {a.outcome.reason for a in answers if a.outcome.decision is Decision.DENY} == {Reason.BLOCK_THRESHOLD}
    assert Counter(e.reason for e in denied) == {Reason.BLOCK_THRESHOLD: 4, Reason.FEATURE_NOT_ALLOWED: 1}
    store_denial = next(e for e in denied if e.reason is Reason.BLOCK_THRESHOLD)
    assert store_denial.limit is not None and store_denial.limit.metric == "tokens"
    assert store_denial.limit.max_units == 1000 and store_denial.estimate == {"tokens": 100, "cost_usd": 1000}
    assert store_denial.request_id.startswith("t-")
    crossings = [e for e in events if e.kind is EventKind.THRESHOLD_CROSSED]
    assert sorted(e.threshold.name for e in crossings if e.threshold) == ["BLOCK", "CAP", "WARN"]
    warn = next(e for e in crossings if e.threshold is Threshold.WARN)
    assert warn.limit is not None and warn.limit.used + warn.limit.held == 800  # reached by the 8th request
    assert warn.request_id == "t-7"
    # The reservations that reached the warn line are WARN in their records.
    for i, answer in enumerate(answers[:10]):
        await world.quotas.commit(answer.reservation_id, {"tokens": 100})
        assert (answer.outcome.decision is Decision.WARN) == (i >= 7)
    await world.relay.drain()
    committed = {e.request_id: e for e in await all_events(world.ledger, subject=who, kinds=[EventKind.COMMITTED])}
    assert {rid for rid, e in committed.items() if e.decision is Decision.WARN} == {"t-7", "t-8", "t-9"}


async def test_a_full_outbox_refuses_new_reservations_and_drains_back(
    redis_url: str, ledger: Ledger, tmp_path: Path
) -> None:
    """The ledger down so long that the outbox reached its cap: new reservations are refused
    (DENY STORE_ERROR, whatever the tier's on_store_error), settlements still go in, and once
    the relay has stored the records the service grants again; nothing was lost."""
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY.replace("on_store_error: deny", "on_store_error: allow"))
    store = RedisCounterStore.from_url(redis_url, timeout_seconds=5.0)
    store = RedisCounterStore(client=store.client, timeout_seconds=5.0, outbox_cap=5)
    relay = UsageRelay(store=store, ledger=ledger)
    quotas = Quotas(policy=LivePolicy(policy_file), store=store, records=relay.record)
    try:
        open_ones = []
        for i in range(5):
            answer = await quotas.check_and_reserve(chat("full", 10, f"f-{i}"))  # type: ignore[arg-type]
            assert answer.reservation_id
            open_ones.append(answer.reservation_id)
            if i < 4:
                await quotas.commit(answer.reservation_id, {"tokens": 10})  # 4 COMMITTED entries wait
        await quotas.commit(open_ones[4], {"tokens": 10})  # the 5th: the outbox is at its cap
        refused = await quotas.check_and_reserve(chat("full", 10, "f-refused"))  # type: ignore[arg-type]
        assert refused.outcome.decision is Decision.DENY and refused.outcome.reason is Reason.STORE_ERROR
        assert "outbox" in refused.outcome.message and not refused.reservation_id
        await relay.drain()  # the ledger is back: the records go in, the outbox empties
        again = await quotas.check_and_reserve(chat("full", 10, "f-again"))  # type: ignore[arg-type]
        assert again.reservation_id
        events = await all_events(ledger, subject="full")
        assert sorted(e.request_id for e in events if e.kind is EventKind.COMMITTED) == [f"f-{i}" for i in range(5)]
        assert [e.reason for e in events if e.kind is EventKind.DENIED] == [Reason.STORE_ERROR]
    finally:
        await store.close()


async def test_a_damaged_outbox_entry_is_kept_aside_and_the_rest_is_stored(world: World) -> None:
    outbox = keys.outbox_key(keys.SINGLE_TAG)
    await world.raw.xadd(outbox, {"k": "com", "s": "someone", "t": "not-a-time"})
    await world.raw.xadd(outbox, {"k": "zzz"})
    answer = await world.quotas.check_and_reserve(chat("fine", 100, "ok-1"))  # type: ignore[arg-type]
    await world.quotas.commit(answer.reservation_id, {"tokens": 100})
    await world.relay.drain()
    events = await all_events(world.ledger)
    assert [(e.kind, e.subject) for e in events] == [(EventKind.COMMITTED, "fine")]
    assert await world.raw.xlen(outbox) == 0
    dead = await world.raw.xrange(f"{outbox}:dead")
    assert sorted(fields["k"] for _, fields in dead) == ["com", "zzz"]
