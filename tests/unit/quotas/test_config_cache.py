"""The per-replica config cache: denials made before any counter rest only on entries the
config feed vouches for (or very young ones); the feed's notices make every replica forget a
changed subject; FEATURE_NOT_ALLOWED costs no round trip in the steady state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path

import pytest
from quota_time import Monotonic

from quota_service.clock import ManualClock
from quota_service.policy.domain import Decision, Reason, SubjectConfig
from quota_service.policy.stops import EmergencyStop, StopScope
from quota_service.policy.validation import QuotaRequest, build_request
from quota_service.quotas import Quotas, SubjectConfigCache
from quota_service.reload import LivePolicy
from quota_service.stops import StopWatcher
from quota_service.store.memory_store import MemoryCounterStore

pytestmark = pytest.mark.unit


def ask(who: str, feature: str = "blog_writer") -> QuotaRequest:
    return build_request(subject=who, feature=feature, provider="openai", model="gpt-4o-mini", usage={"tokens": 10})


class Stops:
    def __init__(self, *stops: EmergencyStop) -> None:
        self.stops: tuple[EmergencyStop, ...] = stops

    def active(self) -> Sequence[EmergencyStop]:
        return self.stops


def make(
    store: MemoryCounterStore, clock: ManualClock, policy_file: Path, cache: SubjectConfigCache, **kw: object
) -> Quotas:
    return Quotas(policy=LivePolicy(policy_file, clock=clock), store=store, clock=clock, config_cache=cache, **kw)  # type: ignore[arg-type]


async def test_feature_not_allowed_needs_no_round_trip_while_the_feed_vouches(
    store: MemoryCounterStore, clock: ManualClock, policy_file: Path, monotonic: Monotonic
) -> None:
    cache = SubjectConfigCache(monotonic=monotonic)
    cache.feed_up()
    quotas = make(store, clock, policy_file, cache)
    for _ in range(5):
        answer = await quotas.check_and_reserve(ask("fay", feature="seo_analysis"))
        assert answer.outcome.reason is Reason.FEATURE_NOT_ALLOWED
        monotonic.now += 0.3
        cache.feed_alive()
    assert sum(store.calls.values()) == 1 and store.calls["subject_config"] == 1  # the first read only


async def test_without_a_live_feed_a_denial_trusts_an_entry_for_half_a_second(
    store: MemoryCounterStore, clock: ManualClock, policy_file: Path, monotonic: Monotonic
) -> None:
    quotas = make(store, clock, policy_file, SubjectConfigCache(monotonic=monotonic))  # no feed at all
    await quotas.check_and_reserve(ask("gil", feature="seo_analysis"))
    monotonic.now += 0.4
    await quotas.check_and_reserve(ask("gil", feature="seo_analysis"))
    assert store.calls["subject_config"] == 1
    monotonic.now += 0.2  # 0.6 s old: no longer vouched for
    await quotas.check_and_reserve(ask("gil", feature="seo_analysis"))
    assert store.calls["subject_config"] == 2


async def test_a_silent_feed_vouches_for_nothing(
    store: MemoryCounterStore, clock: ManualClock, policy_file: Path, monotonic: Monotonic
) -> None:
    cache = SubjectConfigCache(monotonic=monotonic)
    cache.feed_up()
    quotas = make(store, clock, policy_file, cache)
    await quotas.check_and_reserve(ask("hal", feature="seo_analysis"))
    monotonic.now += 0.7  # no heartbeat for longer than feed_silence_seconds: maybe half-open
    assert not cache.watched
    await quotas.check_and_reserve(ask("hal", feature="seo_analysis"))
    assert store.calls["subject_config"] == 2


async def test_an_entry_is_vouched_for_at_most_max_age(monotonic: Monotonic) -> None:
    cache = SubjectConfigCache(monotonic=monotonic, max_age_seconds=30)
    cache.feed_up()
    cache.put("ivy", SubjectConfig("free_alpha", (), "1"))
    monotonic.now += 29.9
    cache.feed_alive()
    assert cache.is_trusted("ivy")
    monotonic.now += 0.2
    cache.feed_alive()
    assert not cache.is_trusted("ivy") and cache.get("ivy") is not None  # still fine for plans


async def test_a_read_that_raced_a_change_notice_is_not_cached(monotonic: Monotonic) -> None:
    cache = SubjectConfigCache(monotonic=monotonic)
    ticket = cache.ticket()  # a read begins ...
    cache.feed_changed("jay")  # ... the subject changes meanwhile ...
    cache.put("jay", SubjectConfig("free_alpha", (), "1"), ticket)  # ... and the (maybe older) value lands
    assert cache.get("jay") is None


async def test_a_stale_tier_stop_lifts_on_the_change_notice(
    store: MemoryCounterStore, clock: ManualClock, policy_file: Path, monotonic: Monotonic
) -> None:
    """The reported scenario: this replica knows S as free_alpha; free_alpha is stopped; S
    moves to pro_alpha through another replica. The notice makes this one read S again."""
    cache = SubjectConfigCache(monotonic=monotonic)
    cache.feed_up()
    stops = Stops()
    quotas = make(store, clock, policy_file, cache, stops=stops)
    assert (await quotas.check_and_reserve(ask("sam"))).outcome.decision is Decision.ALLOW
    stops.stops = (EmergencyStop(StopScope.TIER, "free_alpha"),)
    assert (await quotas.check_and_reserve(ask("sam"))).outcome.reason is Reason.EMERGENCY_STOP
    await store.set_tier("sam", "pro_alpha")  # through the other replica
    cache.feed_changed("sam")  # what this replica's subscription hears
    answer = await quotas.check_and_reserve(ask("sam"))
    assert (answer.outcome.decision, answer.tier) == (Decision.ALLOW, "pro_alpha")


async def test_a_stale_tier_stop_lifts_within_half_a_second_when_the_notice_is_lost(
    store: MemoryCounterStore, clock: ManualClock, policy_file: Path, monotonic: Monotonic
) -> None:
    cache = SubjectConfigCache(monotonic=monotonic)
    stops = Stops(EmergencyStop(StopScope.TIER, "free_alpha"))
    quotas = make(store, clock, policy_file, cache, stops=stops)
    assert (await quotas.check_and_reserve(ask("lou"))).outcome.reason is Reason.EMERGENCY_STOP
    await store.set_tier("lou", "pro_alpha")  # no notice reaches this replica: its feed is down
    monotonic.now += 0.6
    assert (await quotas.check_and_reserve(ask("lou"))).outcome.decision is Decision.ALLOW


async def test_a_stop_that_does_not_depend_on_the_tier_needs_no_read(
    store: MemoryCounterStore, clock: ManualClock, policy_file: Path, monotonic: Monotonic
) -> None:
    stops = Stops(EmergencyStop(StopScope.GLOBAL))
    quotas = make(store, clock, policy_file, SubjectConfigCache(monotonic=monotonic), stops=stops)
    await quotas.check_and_reserve(ask("max"))
    monotonic.now += 60
    assert (await quotas.check_and_reserve(ask("max"))).outcome.reason is Reason.EMERGENCY_STOP
    assert store.calls["subject_config"] == 0  # a cold subject is planned unconfigured: no read at all


async def test_a_cold_subject_takes_one_store_call_and_a_configured_one_retries_once(
    store: MemoryCounterStore, clock: ManualClock, policy_file: Path, monotonic: Monotonic
) -> None:
    """Nothing cached: the plan assumes no config (version "0"), and the reserve step checks
    that atomically. A subject with a tier costs one STALE_CONFIG retry, on the config that
    answer carries (no read of its own), then is decided on its own tier, and cached."""
    quotas = make(store, clock, policy_file, SubjectConfigCache(monotonic=monotonic))
    answer = await quotas.check_and_reserve(ask("newcomer"))
    assert answer.outcome.decision is Decision.ALLOW and answer.tier == "free_alpha"
    assert (store.calls["subject_config"], store.calls["reserve"]) == (0, 1)

    await store.set_tier("payer", "pro_alpha")
    answer = await quotas.check_and_reserve(ask("payer"))
    assert answer.outcome.decision is Decision.ALLOW and answer.tier == "pro_alpha"
    assert (store.calls["subject_config"], store.calls["reserve"]) == (0, 3)  # stale (with the config), again
    await quotas.check_and_reserve(ask("payer"))
    assert (store.calls["subject_config"], store.calls["reserve"]) == (0, 4)  # cached now


async def until(predicate: Callable[[], bool], turns: int = 100_000) -> None:
    """Let the loop run until ``predicate()`` holds (the watcher's task runs in between)."""
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0)
    pytest.fail("the condition never held")


class Plane:
    """Stops and config changes of one in-memory store, as the Redis admin store offers them."""

    def __init__(self, store: MemoryCounterStore) -> None:
        self.store = store

    async def list_stops(self) -> list[EmergencyStop]:
        return []

    async def stop_changes(self) -> AsyncGenerator[None, None]:
        yield None
        await asyncio.Event().wait()

    def config_changes(self) -> AsyncGenerator[str | None, None]:
        return self.store.config_changes()


async def test_the_stop_watcher_carries_config_notices_to_the_cache(
    store: MemoryCounterStore, clock: ManualClock, policy_file: Path
) -> None:
    watcher = StopWatcher(store=Plane(store), poll_interval=3600)
    quotas = Quotas(policy=LivePolicy(policy_file, clock=clock), store=store, clock=clock, stops=watcher)
    await watcher.start()
    try:
        await until(lambda: quotas.configs.watched)
        await quotas.check_and_reserve(ask("kim", feature="seo_analysis"))
        assert quotas.configs.is_trusted("kim")
        await store.set_tier("kim", "pro_alpha")
        await until(lambda: quotas.configs.get("kim") is None)
        assert (await quotas.check_and_reserve(ask("kim", feature="seo_analysis"))).outcome.decision is Decision.ALLOW
    finally:
        await watcher.close()
    assert not quotas.configs.watched
