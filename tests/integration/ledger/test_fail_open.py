"""Fail-open with a bound (``on_store_error: allow``): while Redis is down each replica grants at
most its ``fail_open_allowance`` of each cap, never an ask above a cap, and when Redis returns
every grant is written back to the counters and recorded in the ledger, once."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import redis.asyncio

from quota_service.ledger import Ledger
from quota_service.ledger.events import EventKind
from quota_service.policy.domain import Decision, Reason
from quota_service.policy.validation import build_request
from quota_service.quotas import Quotas
from quota_service.reload import LivePolicy
from quota_service.server.usage_relay import UsageRelay
from quota_service.store.embedded import EmbeddedRedis
from quota_service.store.redis_store import RedisCounterStore

pytestmark = [pytest.mark.redis, pytest.mark.fault]

POLICY = """\
version: 1
default_tier: paid
on_store_error: allow
fail_open_allowance: 0.05
prices:
  "openai/gpt-4o": {tokens: 0.00001}
tiers:
  paid:
    features: [chat]
    limits:
      tokens: {day: 10000}
"""


def chat(who: str, tokens: int, request_id: str) -> object:
    return build_request(
        subject=who, feature="chat", provider="openai", model="gpt-4o", usage={"tokens": tokens}, request_id=request_id
    )


async def test_an_outage_grants_at_most_the_allowance_and_writes_it_back(
    own_redis: EmbeddedRedis, ledger: Ledger, tmp_path: Path
) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY)
    url = own_redis.url
    store = RedisCounterStore.from_url(url, timeout_seconds=0.25)
    relay = UsageRelay(store=store, ledger=ledger)
    quotas = Quotas(policy=LivePolicy(policy_file), store=store, records=relay.record)
    try:
        warm = await quotas.check_and_reserve(chat("payer", 100, "w-0"))  # type: ignore[arg-type]
        assert warm.outcome.decision is Decision.ALLOW and warm.reservation_id
        await quotas.commit(warm.reservation_id, {"tokens": 100})

        own_redis.stop()  # Redis is down: 5 % of 10,000 tokens = 500 for this outage
        answers = [await quotas.check_and_reserve(chat("payer", 100, f"o-{i}")) for i in range(6)]  # type: ignore[arg-type]
        assert [a.outcome.decision for a in answers] == [Decision.ALLOW] * 5 + [Decision.DENY]
        assert {a.outcome.reason for a in answers} == {Reason.STORE_UNAVAILABLE}
        assert "fail-open allowance" in answers[-1].outcome.message
        huge = await quotas.check_and_reserve(chat("payer", 20000, "o-huge"))  # type: ignore[arg-type]
        assert huge.outcome.decision is Decision.DENY  # more than the whole cap: never
        assert quotas.pending_grants == 5

        own_redis.start()
        for _ in range(100):
            if quotas.pending_grants == 0:
                break
            await asyncio.sleep(0.1)
        assert quotas.pending_grants == 0
        raw = redis.asyncio.Redis.from_url(url, decode_responses=True)
        try:
            used = [int(await raw.hget(k, "used") or 0) async for k in raw.scan_iter("q:{payer}:tokens:day:*")]
        finally:
            await raw.aclose()
        assert used == [100 + 500]  # the warm-up and exactly what was granted, written back once
        await relay.drain()
        page, _ = await ledger.list_events(subject="payer", kinds=[EventKind.COMMITTED])
        fail_open = [e for e in page if json.loads(e.detail).get("fail_open")]
        assert sorted(e.request_id for e in fail_open) == [f"o-{i}" for i in range(5)]
        assert all(e.actual["tokens"] == 100 and e.cost_micros == 1000 for e in fail_open)
        # the outage is over: a new one starts with a fresh allowance, and the counters work again
        again = await quotas.check_and_reserve(chat("payer", 100, "a-1"))  # type: ignore[arg-type]
        assert again.outcome.decision is Decision.ALLOW and again.reservation_id
    finally:
        await store.close()
