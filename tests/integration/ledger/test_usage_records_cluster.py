"""The usage records on a real Redis Cluster: each subject's outbox is its slot's (the Lua step
appends in its own slot), the relay drains every slot's outbox and the reaper every slot's due
index, and the ledger equals the counters across the cluster's nodes."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from quota_service.clock import ManualClock
from quota_service.ledger import Ledger
from quota_service.ledger.events import EventKind
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
prices:
  "openai/gpt-4o": {tokens: 0.00001}
hard_stops:
  global:
    cost_usd: {day: 1000.00}
tiers:
  metered:
    features: [chat]
    limits:
      tokens: {day: 1000000}
      cost_usd: {day: 50.00}
"""


@pytest.fixture
async def cluster_store(redis_cluster_url: str) -> AsyncIterator[RedisCounterStore]:
    store = RedisCounterStore.from_url(redis_cluster_url, timeout_seconds=5.0)
    try:
        yield store
    finally:
        await store.close()


async def test_records_from_every_slot_reach_the_ledger(
    cluster_store: RedisCounterStore, ledger: Ledger, tmp_path: Path
) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY)
    clock = ManualClock(datetime.now(UTC))
    store = RedisCounterStore(client=cluster_store.client, timeout_seconds=5.0, clock=lambda: clock.now().timestamp())
    relay = UsageRelay(store=store, ledger=ledger, clock=lambda: clock.now().timestamp())
    quotas = Quotas(policy=LivePolicy(policy_file), store=store, clock=clock)
    subjects = [f"c-{i}" for i in range(12)]
    assert len({keys.slot_tag(s) for s in subjects}) == 12  # twelve slots, spread over the nodes

    def chat(who: str, request_id: str, ttl: int = 0) -> object:
        return build_request(
            subject=who,
            feature="chat",
            provider="openai",
            model="gpt-4o",
            usage={"tokens": 100},
            request_id=request_id,
            ttl_seconds=ttl,
        )

    # One after the other: a burst of first calls on a fresh cluster client trips redis-py's
    # connection set-up (issue 13); what is tested here is where the records go.
    answers = [
        await quotas.check_and_reserve(chat(s, f"{s}-{n}", ttl=1 if n == 2 else 0))  # type: ignore[arg-type]
        for s in subjects
        for n in range(3)
    ]
    assert all(a.reservation_id for a in answers)
    for answer in answers[0::3]:
        await quotas.commit(answer.reservation_id, {"tokens": 60})
    for answer in answers[1::3]:
        await quotas.release(answer.reservation_id)
    clock.advance(2)  # the third of each subject is abandoned: the reaper expires it
    assert await relay.reap_once(everything=True) == 13  # the twelve subjects and the company-wide scope
    await relay.drain()

    events = [e for e in (await ledger.list_events(page_size=1000))[0] if e.subject in subjects]
    assert Counter(e.kind for e in events) == {EventKind.COMMITTED: 12, EventKind.RELEASED: 12, EventKind.EXPIRED: 12}
    day = clock.now().strftime("%Y-%m-%d")
    client = cluster_store.client
    for who in subjects:
        used = int(await client.hget(f"q:{{{who}}}:cost_usd:day:{day}", "used") or 0)  # type: ignore[misc]
        recorded = sum(e.cost_micros for e in events if e.subject == who and e.kind is not EventKind.RELEASED)
        assert used == recorded == 60 * 10 + 100 * 10
    for tag in {keys.slot_tag(s) for s in subjects}:
        assert await client.xlen(keys.outbox_key(tag)) == 0  # type: ignore[misc]
