"""On one Redis, concurrent reservations share round trips (reserve_fused.lua, group
committed): each is still decided all-or-nothing, in order, exactly as if it ran alone;
a failure inside one is that request's alone; a global denial is given back in the same
atomic step."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
import redis.asyncio
from support.charges import NOW_MS, charge, command, counter, global_counter

from quota_service.errors import StoreDataError
from quota_service.policy.domain import CounterRef, CounterValue, OverrideRecord
from quota_service.policy.windows import Window
from quota_service.store import keys
from quota_service.store.base import ReserveStatus
from quota_service.store.redis_store import RedisCounterStore

pytestmark = pytest.mark.redis


async def value(store: RedisCounterStore, ref: CounterRef) -> CounterValue:
    return (await store.usage((ref,), NOW_MS))[ref]


async def script_calls(raw: redis.asyncio.Redis) -> int:
    stats = await raw.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval"))


async def test_200_concurrent_reservations_share_round_trips_and_stop_exactly_at_the_block(
    store: RedisCounterStore, raw: redis.asyncio.Redis
) -> None:
    tokens, company = counter("burst"), global_counter()
    await store.usage((tokens,), NOW_MS)  # loads the scripts: not counted below
    before = await script_calls(raw)
    results = await asyncio.gather(
        *(
            store.reserve(
                command(
                    charge(tokens, 10, cap=1000, block=950),
                    subject="burst",
                    global_charges=(charge(company, 1, cap=10_000),),
                )
            )
            for _ in range(200)
        )
    )
    calls = await script_calls(raw) - before
    assert Counter(r.status for r in results) == {ReserveStatus.RESERVED: 95, ReserveStatus.DENIED: 105}
    assert calls <= 200 // 4, f"{calls} script calls for 200 reservations: not coalesced"
    assert await value(store, tokens) == CounterValue(used=0, held=950)
    assert await value(store, company) == CounterValue(used=0, held=95)  # only the granted ones hold it
    assert sorted(r.values[tokens].held for r in results if r.status is ReserveStatus.RESERVED) == list(
        range(0, 950, 10)
    )


async def test_damaged_data_of_one_subject_fails_only_its_own_request(
    store: RedisCounterStore, raw: redis.asyncio.Redis
) -> None:
    """A batch carries many subjects; one subject's damaged counter must not deny the others."""
    await raw.set(keys.counter_key(counter("broken")), "not a hash")
    subjects = [f"fine{i}" for i in range(40)]
    subjects.insert(20, "broken")
    results = await asyncio.gather(
        *(store.reserve(command(charge(counter(who), 10, cap=100), subject=who)) for who in subjects),
        return_exceptions=True,
    )
    failed = {who: r for who, r in zip(subjects, results, strict=True) if isinstance(r, BaseException)}
    assert list(failed) == ["broken"]
    assert isinstance(failed["broken"], StoreDataError)
    assert "broken" in str(failed["broken"]) and "WRONGTYPE" in str(failed["broken"])
    for who, result in zip(subjects, results, strict=True):
        if who != "broken":
            assert not isinstance(result, BaseException) and result.status is ReserveStatus.RESERVED, who
            assert await value(store, counter(who)) == CounterValue(0, 10), who


async def test_a_global_denial_is_given_back_in_the_same_step(
    store: RedisCounterStore, raw: redis.asyncio.Redis
) -> None:
    """The subject's part of a globally denied request is never seen held by anyone: its
    counter reads 0 right after, and a replay answers DENIED_GLOBAL from the tombstone."""
    company = global_counter()
    await store.reserve(
        command(charge(counter("first"), 5, cap=100), subject="first", global_charges=(charge(company, 10, cap=10),))
    )
    mine = counter("second")
    denied = command(
        charge(mine, 5, cap=100), subject="second", global_charges=(charge(company, 10, cap=10),), request_id="R"
    )
    before = await script_calls(raw)
    result = await store.reserve(denied)
    assert result.status is ReserveStatus.DENIED_GLOBAL and result.reservation_id == ""
    assert await script_calls(raw) - before == 1  # both steps and the compensation: one script call
    assert await value(store, mine) == CounterValue(0, 0)
    assert await value(store, company) == CounterValue(0, 10)
    again = await store.reserve(denied)
    assert again.replayed and again.status is ReserveStatus.DENIED_GLOBAL
    assert await value(store, mine) == CounterValue(0, 0)


async def test_a_stale_config_answer_carries_the_config_read_in_the_same_step(store: RedisCounterStore) -> None:
    """A plan made on a config the subject no longer has (here: none at all, version "0")
    is answered STALE_CONFIG with the config as it is, live overrides only, so the caller
    plans again without a read of its own."""
    await store.set_tier("payer", "pro_alpha")
    await store.set_override(OverrideRecord("payer", "tokens", Window.DAY, 5_000, expires_at=0))
    await store.set_override(OverrideRecord("payer", "cost_usd", Window.DAY, 9, expires_at=NOW_MS // 1000 - 1))
    stale = await store.reserve(
        command(charge(counter("payer"), 10, cap=100), subject="payer", config_version="0", request_id="S")
    )
    assert stale.status is ReserveStatus.STALE_CONFIG and stale.config is not None
    assert stale.config.tier == "pro_alpha" and stale.config.version not in ("", "0")
    assert [(o.metric, o.max_units) for o in stale.config.overrides] == [("tokens", 5_000)]  # the expired one left out
    assert stale.config == await store.subject_config("payer", NOW_MS)
    assert await value(store, counter("payer")) == CounterValue(0, 0)  # nothing held
    again = await store.reserve(
        command(
            charge(counter("payer"), 10, cap=100), subject="payer", config_version=stale.config.version, request_id="S"
        )
    )
    assert again.status is ReserveStatus.RESERVED and not again.replayed
