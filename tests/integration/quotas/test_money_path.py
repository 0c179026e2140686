"""The money path on real Redis: a replay is never re-judged (override lowered, tier changed,
policy reloaded: the first answer, the reservation stays committable, the commit counts);
damaged data denies STORE_ERROR even on an ``on_store_error: allow`` tier; every config write
announces the subject; a frozen Redis is answered before the request's deadline."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio
from support.requests import ask

from quota_service.admin import Admin
from quota_service.deadline import request_deadline
from quota_service.errors import StoreDataError
from quota_service.policy.domain import CounterRef, Decision, Reason
from quota_service.policy.windows import Window
from quota_service.quotas import Quotas, ReserveAnswer
from quota_service.reload import LivePolicy
from quota_service.store import keys
from quota_service.store.admin_store import CONFIG_CHANNEL, RedisAdminStore
from quota_service.store.base import ReservationState
from quota_service.store.embedded import EmbeddedRedis
from quota_service.store.redis_store import RedisCounterStore, script_source

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[3]
ALPHA = ROOT / "policies" / "alpha.yaml"
ACTOR = "token:0123456789ab"
DAY = time.strftime("%Y-%m-%d", time.gmtime())


@dataclass
class MoneyPath:
    counters: RedisCounterStore
    quotas: Quotas
    admin: Admin
    raw: redis.asyncio.Redis
    policy_file: Path


@pytest.fixture
async def money(redis_url: str, tmp_path: Path) -> AsyncIterator[MoneyPath]:
    policy_file = tmp_path / "alpha.yaml"
    policy_file.write_text(ALPHA.read_text())
    counters = RedisCounterStore.from_url(redis_url, timeout_seconds=5.0)
    store = RedisAdminStore(counters=counters)
    quotas = Quotas(policy=LivePolicy(policy_file), store=counters)
    raw = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield MoneyPath(counters, quotas, Admin(quotas=quotas, store=store), raw, policy_file)
    finally:
        await raw.aclose()
        await counters.close()


async def replay_holds(money: MoneyPath, who: str, first: ReserveAnswer, again: ReserveAnswer, commit: int) -> None:
    """The first answer, exactly; its reservation kept, committable, counted."""
    assert first.outcome.decision is not Decision.DENY and first.reservation_id
    assert again.replayed and again.reservation_id == first.reservation_id
    assert again.outcome.decision is not Decision.DENY
    reservation = await money.counters.get_reservation(first.reservation_id)
    assert reservation is not None and reservation.state is ReservationState.OPEN
    settled = await money.quotas.commit(first.reservation_id, {"tokens": commit})
    assert not settled.already_settled
    assert await money.raw.hget(f"q:{{{who}}}:tokens:day:{DAY}", "used") == str(commit)
    # ... and exactly the first answer (decision, reason, message, limits, tier, version).
    assert dataclasses.replace(again, replayed=False) == first


async def test_a_replay_after_an_override_lowered_the_cap(money: MoneyPath) -> None:
    first = await money.quotas.check_and_reserve(ask("ovr", 500))
    await money.admin.set_override("ovr", "tokens", "day", 100, actor=ACTOR)
    again = await money.quotas.check_and_reserve(ask("ovr", 500))
    await replay_holds(money, "ovr", first, again, commit=480)


async def test_a_replay_after_a_tier_change(money: MoneyPath) -> None:
    await money.admin.set_tier("tie", "pro_alpha", actor=ACTOR)
    first = await money.quotas.check_and_reserve(ask("tie", 5000))
    await money.admin.set_tier("tie", "free_alpha", actor=ACTOR)  # 1,000 tokens a day
    again = await money.quotas.check_and_reserve(ask("tie", 5000))
    await replay_holds(money, "tie", first, again, commit=4200)


async def test_a_replay_after_a_policy_reload(money: MoneyPath) -> None:
    first = await money.quotas.check_and_reserve(ask("rel", 700))
    text = money.policy_file.read_text()
    money.policy_file.write_text(text.replace("tokens: {day: 1000}", "tokens: {day: 100}"))
    changed, _ = await money.admin.reload_policies(actor=ACTOR)
    assert changed
    again = await money.quotas.check_and_reserve(ask("rel", 700))
    await replay_holds(money, "rel", first, again, commit=690)


PRICE = "tokens: 0.0000006"


async def test_a_replay_after_the_prices_changed_is_the_first_answer(money: MoneyPath) -> None:
    """The cost ask of a replay: the recorded estimate at the recorded rates (the record's),
    not today's prices nor this call's estimate; the held, remaining and message as first."""
    first = await money.quotas.check_and_reserve(ask("prc", 700))
    assert {r.held for r in first.outcome.limits if r.limit.metric == "cost_usd"} == {420}  # $0.60 per million
    money.policy_file.write_text(money.policy_file.read_text().replace(PRICE, "tokens: 0.01"))  # $7: past $5 a day
    changed, _ = await money.admin.reload_policies(actor=ACTOR)
    assert changed
    fresh = await money.quotas.check_and_reserve(ask("prc", 700, "req-fresh"))
    assert fresh.outcome.decision is Decision.DENY  # the new prices are in force
    again = await money.quotas.check_and_reserve(ask("prc", 90))  # another estimate, too
    await replay_holds(money, "prc", first, again, commit=650)


async def test_a_replay_with_another_estimate_is_the_first_answer(money: MoneyPath) -> None:
    first = await money.quotas.check_and_reserve(ask("est", 500))
    for other in (900, 5, 5000):
        again = await money.quotas.check_and_reserve(ask("est", other))
        assert dataclasses.replace(again, replayed=False) == first
    await replay_holds(money, "est", first, again, commit=450)


async def test_a_replayed_denial_after_the_prices_changed_is_the_first_denial(money: MoneyPath) -> None:
    """A DENY's record is a tombstone: it keeps the estimate, so a replay's asks (and with
    them the limits and message) are the first call's; retry_after counts from now."""
    held = await money.quotas.check_and_reserve(ask("den", 900, "fill"))
    await money.quotas.commit(held.reservation_id, {"tokens": 900})
    first = await money.quotas.check_and_reserve(ask("den", 200))
    assert (first.outcome.decision, first.outcome.reason) == (Decision.DENY, Reason.LIMIT_EXCEEDED)
    money.policy_file.write_text(money.policy_file.read_text().replace(PRICE, "tokens: 0.01"))
    changed, _ = await money.admin.reload_policies(actor=ACTOR)
    assert changed
    again = await money.quotas.check_and_reserve(ask("den", 20))
    assert again.replayed
    assert 0 <= again.outcome.retry_after_seconds <= first.outcome.retry_after_seconds
    outcome = dataclasses.replace(again.outcome, retry_after_seconds=first.outcome.retry_after_seconds)
    assert dataclasses.replace(again, outcome=outcome, replayed=False) == first


async def test_a_wrong_typed_counter_denies_store_error_on_an_allow_tier(money: MoneyPath) -> None:
    await money.admin.set_tier("broken", "pro_alpha", actor=ACTOR)  # on_store_error: allow
    assert (await money.quotas.check_and_reserve(ask("broken", 10, "warm"))).outcome.decision is Decision.ALLOW
    await money.raw.delete(f"q:{{broken}}:tokens:day:{DAY}")
    await money.raw.set(f"q:{{broken}}:tokens:day:{DAY}", "not a hash")
    answer = await money.quotas.check_and_reserve(ask("broken", 10, "after"))
    assert (answer.outcome.decision, answer.outcome.reason) == (Decision.DENY, Reason.STORE_ERROR)
    assert not answer.reservation_id
    ref = CounterRef("broken", "tokens", Window.DAY, DAY, int(time.time()) + 86_400)
    with pytest.raises(StoreDataError):  # damaged data, never an outage
        await money.counters.usage((ref,), int(time.time() * 1000))


async def test_every_config_write_announces_its_subject(money: MoneyPath, redis_url: str) -> None:
    assert f"'{CONFIG_CHANNEL}'" in script_source("config_write")  # one channel name on both sides
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(CONFIG_CHANNEL)
        await money.admin.set_tier("loud", "pro_alpha", actor=ACTOR)
        await money.admin.set_override("loud", "tokens", "day", 10, actor=ACTOR)
        assert not await money.admin.delete_override("loud", "images", "day", actor=ACTOR)  # no change, no notice
        await money.admin.delete_override("loud", "tokens", "day", actor=ACTOR)
        heard = []
        async with asyncio.timeout(5):
            while len(heard) < 3:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None:
                    heard.append(message["data"])
        assert heard == [keys.config_key("loud")] * 3
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()


async def test_the_config_feed_yields_subjects_and_heartbeats(money: MoneyPath) -> None:
    store = RedisAdminStore(counters=money.counters)
    changes = store.config_changes()
    try:
        async with asyncio.timeout(5):
            assert await anext(changes) is None  # subscribed
            await money.admin.set_tier("fed", "pro_alpha", actor=ACTOR)
            notices = [await anext(changes)]
            while notices[-1] != "fed":
                notices.append(await anext(changes))
            assert await anext(changes) is None  # a heartbeat: the subscription still answers
    finally:
        await changes.aclose()


async def test_a_frozen_redis_is_answered_before_the_deadline(own_redis: EmbeddedRedis) -> None:
    counters = RedisCounterStore.from_url(own_redis.url, timeout_seconds=5.0)  # far longer than the deadline
    quotas = Quotas(policy=LivePolicy(ALPHA), store=counters)
    try:
        assert (await quotas.check_and_reserve(ask("ice", 10, "a"))).outcome.decision is Decision.ALLOW
        assert own_redis.pid
        os.kill(own_redis.pid, signal.SIGSTOP)
        started = time.monotonic()
        with request_deadline(0.2):
            answer = await quotas.check_and_reserve(ask("ice", 10, "b"))
        took = time.monotonic() - started
        assert (answer.outcome.decision, answer.outcome.reason) == (Decision.DENY, Reason.STORE_UNAVAILABLE)
        print(f"\nfrozen Redis: on_store_error answered after {took * 1000:.0f} ms (deadline 200 ms)")
        os.kill(own_redis.pid, signal.SIGCONT)
        await quotas.drain()  # the unknown outcome is withdrawn once Redis answers again
        assert (await quotas.check_and_reserve(ask("ice", 10, "b"))).outcome.decision is Decision.ALLOW
    finally:
        await counters.close()
