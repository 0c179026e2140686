"""The store on a real 3-master Redis Cluster: one slot per subject, the global step in another."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis
from support.charges import NOW_MS, charge, command, counter, global_counter, global_record_key, record_key
from support.redis_cluster import LocalRedisCluster

from quota_service.policy.domain import GLOBAL_SCOPE, CounterValue, OverrideRecord
from quota_service.policy.windows import Window
from quota_service.store import keys
from quota_service.store.base import ReservationState, ReserveResult, ReserveStatus
from quota_service.store.redis_store import RedisCounterStore

pytestmark = pytest.mark.cluster


def node_of(cluster: LocalRedisCluster, slot: int) -> int:
    """The port of the master serving ``slot``."""
    with redis.Redis(port=cluster.ports[0]) as client:
        for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(master[1])
    raise AssertionError(f"slot {slot} is not served")


def keyslot(cluster: LocalRedisCluster, key: str) -> int:
    with redis.Redis(port=cluster.ports[0]) as client:
        return int(client.execute_command("CLUSTER", "KEYSLOT", key))


@pytest.fixture
def subject(redis_cluster: LocalRedisCluster, redis_cluster_url: str) -> str:
    """A subject whose slot lives on another node than the global slot's."""
    global_node = node_of(redis_cluster, keyslot(redis_cluster, keys.config_key(GLOBAL_SCOPE)))
    for candidate in ("alice", "bob", "carol", "dave", "erin", "frank"):
        if node_of(redis_cluster, keyslot(redis_cluster, keys.config_key(candidate))) != global_node:
            return candidate
    raise AssertionError("every candidate subject shares the global node")


@pytest.fixture
async def cluster_store(redis_cluster_url: str) -> AsyncIterator[RedisCounterStore]:
    store = RedisCounterStore.from_url(redis_cluster_url, timeout_seconds=5.0)
    try:
        yield store
    finally:
        await store.close()


def all_keys(cluster: LocalRedisCluster) -> list[str]:
    found: list[str] = []
    for client in cluster.clients():
        with client:
            found += [str(key) for key in client.keys("*")]
    return found


async def test_every_key_of_one_subject_shares_one_slot(
    redis_cluster: LocalRedisCluster, cluster_store: RedisCounterStore, subject: str
) -> None:
    tokens, images = counter(subject), counter(subject, "images", Window.MONTH, "2030-01")
    company = global_counter()
    await cluster_store.set_tier(subject, "pro_alpha")
    await cluster_store.set_override(OverrideRecord(subject, "tokens", Window.DAY, 500, 0))
    result = await cluster_store.reserve(
        command(
            charge(tokens, 10, cap=100),
            charge(images, 1, cap=5),
            subject=subject,
            global_charges=(charge(company, 50, cap=1000),),
            request_id="req-1",
        )
    )
    assert result.status is ReserveStatus.RESERVED
    rid = result.reservation_id
    (plan,) = [key for key in all_keys(redis_cluster) if key.startswith(f"a:{{{subject}}}:")]
    subject_keys = [
        keys.counter_key(tokens),
        keys.counter_key(images),
        record_key(rid),
        keys.open_set_key(subject),
        keys.config_key(subject),
        keys.overrides_key(subject),
        plan,
        keys.due_key(keys.slot_tag(subject)),  # the reaper's index of the slot (the outbox: after commit)
        # the slot's top spenders of the day and month windows (TopUsage reads them)
        *(keys.board_key(keys.slot_tag(subject), r.metric, r.window.value, r.window_id) for r in (tokens, images)),
    ]
    global_keys = [
        keys.counter_key(company),
        global_record_key(rid),
        keys.open_set_key(GLOBAL_SCOPE),
        keys.due_key(keys.slot_tag(GLOBAL_SCOPE)),
    ]
    stored = set(all_keys(redis_cluster))
    assert stored == set(subject_keys) | set(global_keys)  # nothing else was written, nowhere else
    await cluster_store.commit(rid, {"tokens": 5, "images": 1, "cost_usd": 20}, NOW_MS)
    (layout,) = [key for key in all_keys(redis_cluster) if key.startswith(f"l:{{{subject}}}:")]
    subject_keys.append(layout)
    subject_keys.append(keys.outbox_key(keys.slot_tag(subject)))  # the COMMITTED record, in the slot's outbox
    after = set(all_keys(redis_cluster))  # the open set is gone (empty), the global part forgotten
    assert after == set(subject_keys + global_keys) - {
        keys.open_set_key(subject),
        keys.open_set_key(GLOBAL_SCOPE),
        global_record_key(rid),
    }
    assert len({keyslot(redis_cluster, key) for key in subject_keys}) == 1
    assert len({keyslot(redis_cluster, key) for key in global_keys}) == 1
    assert node_of(redis_cluster, keyslot(redis_cluster, subject_keys[0])) != node_of(
        redis_cluster, keyslot(redis_cluster, global_keys[0])
    )


async def test_the_whole_path_through_the_cluster(
    redis_cluster: LocalRedisCluster, cluster_store: RedisCounterStore, subject: str
) -> None:
    tokens, company = counter(subject), global_counter()

    async def reserve(request_id: str = "", *, dry_run: bool = False) -> ReserveResult:
        return await cluster_store.reserve(
            command(
                charge(tokens, 10, cap=100),
                subject=subject,
                global_charges=(charge(company, 40, cap=100),),
                request_id=request_id,
                dry_run=dry_run,
            )
        )

    assert (await reserve(dry_run=True)).status is ReserveStatus.CHECKED
    first, replay = await reserve("a"), await reserve("a")
    assert first.status is replay.status is ReserveStatus.RESERVED
    assert replay.replayed and replay.reservation_id == first.reservation_id
    second = await reserve("b")
    assert second.status is ReserveStatus.RESERVED
    assert await cluster_store.usage((tokens, company), NOW_MS) == {
        tokens: CounterValue(0, 20),
        company: CounterValue(0, 80),
    }

    # the global cap (100) denies a third: the subject's part is given back on its own node
    third = await reserve("c")
    assert third.status is ReserveStatus.DENIED_GLOBAL
    third_replay = await reserve("c")
    assert third_replay.status is ReserveStatus.DENIED_GLOBAL and third_replay.replayed
    assert third_replay.values == third.values

    committed = await cluster_store.commit(first.reservation_id, {"tokens": 7, "cost_usd": 30}, NOW_MS)
    assert committed.values == {tokens: CounterValue(7, 10), company: CounterValue(30, 40)}
    released = await cluster_store.release(second.reservation_id, NOW_MS)
    assert released.values == {tokens: CounterValue(7, 0), company: CounterValue(30, 0)}
    assert (await cluster_store.release(second.reservation_id, NOW_MS)).already_settled
    reservation = await cluster_store.get_reservation(first.reservation_id)
    assert reservation is not None and reservation.state is ReservationState.COMMITTED
    assert (await cluster_store.subject_config(subject, NOW_MS)).version == "0"
    await cluster_store.ping()


async def test_scripts_are_loaded_again_after_a_script_flush(
    redis_cluster: LocalRedisCluster, cluster_store: RedisCounterStore, subject: str
) -> None:
    tokens = counter(subject)
    assert (await cluster_store.reserve(command(charge(tokens, 1, cap=10), subject=subject))).status is (
        ReserveStatus.RESERVED
    )
    for client in redis_cluster.clients():  # as after a failover to a node that never saw them
        with client:
            client.script_flush()
    assert (await cluster_store.reserve(command(charge(tokens, 1, cap=10), subject=subject))).status is (
        ReserveStatus.RESERVED
    )
    assert await cluster_store.usage((tokens,), NOW_MS) == {tokens: CounterValue(0, 2)}
