"""The usage ledger through real servers: replicas on one Redis and a real PostgreSQL ledger.

* a 200-way burst over two replicas: exactly one WARN and one BLOCK crossing, and the ledger
  equals the counters once the records have drained;
* SIGKILL of a replica mid-burst, then restart: every granted reservation has exactly one
  terminal record, every acknowledged commit is COMMITTED;
* PostgreSQL stopped for 10 s during traffic: nothing lost afterwards;
* an abandoned reservation is recorded EXPIRED within seconds of its TTL (the reaper);
* an ``on_cross`` rule stops a runaway subject, shows in ListStops, lifts itself.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
import redis
from support.postgres import LocalPostgres
from support.server_process import ServerProcess

from quota.v1 import admin_pb2, admin_pb2_grpc, quota_pb2, quota_pb2_grpc
from quota_service.ledger.events import Event, EventKind, Threshold
from quota_service.ledger.store import ledger_from_url

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

T = TypeVar("T")
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
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
      tokens: {day: 100000000}
      cost_usd: {day: 100000.00}
  tiny:
    features: [chat]
    limits:
      tokens: {day: 1000}
  brake:
    features: [chat]
    limits:
      tokens: {hour: 1000}
    on_cross:
      - {name: runaway, metric: tokens, window: hour, threshold: warn, stop_subject_for: 3s}
"""
USAGE = (EventKind.COMMITTED, EventKind.EXPIRED, EventKind.CORRECTED)
TERMINAL = (EventKind.COMMITTED, EventKind.RELEASED, EventKind.EXPIRED)


def wait_until(what: Callable[[], T | None], seconds: float, message: str, poll: float = 0.2) -> T:
    deadline = time.monotonic() + seconds
    while True:
        found = what()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"not within {seconds} s: {message}")
        time.sleep(poll)


def chat(who: str, tokens: int, request_id: str = "", ttl: int = 0) -> quota_pb2.CheckAndReserveRequest:
    return quota_pb2.CheckAndReserveRequest(
        subject=who,
        feature="chat",
        provider="openai",
        model="gpt-4o",
        usage={"tokens": tokens},
        request_id=request_id,
        reservation_ttl_seconds=ttl,
    )


def granted(answer: quota_pb2.CheckAndReserveResponse) -> bool:
    return answer.decision in (quota_pb2.ALLOW, quota_pb2.WARN)


class Ledger:
    """Reads the shared PostgreSQL ledger the replicas write."""

    def __init__(self, url: str) -> None:
        self.url = url

    def events(self, subject: str = "") -> list[Event]:
        async def read() -> list[Event]:
            ledger = ledger_from_url(self.url, timeout_seconds=5.0)
            assert ledger is not None
            try:
                found: list[Event] = []
                token = ""
                while True:
                    page, token = await ledger.list_events(subject=subject, page_size=1000, page_token=token)
                    found += page
                    if not token:
                        return found
            finally:
                await ledger.close()

        return asyncio.run(read())


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "policy.yaml").write_text(POLICY)
    return folder


def replica(name: str, redis_url: str, tmp_path: Path, policies: Path, ledger_url: str) -> ServerProcess:
    workdir = tmp_path / name
    workdir.mkdir(exist_ok=True)
    return ServerProcess(
        redis_url=redis_url,
        workdir=workdir,
        policies=policies,
        extra_args=("--no-watch", "--ledger-url", ledger_url),
    )


@pytest.fixture
def two(redis_url: str, tmp_path: Path, policies: Path, postgres_url: str) -> Iterator[list[ServerProcess]]:
    made = [replica(n, redis_url, tmp_path, policies, postgres_url) for n in ("a", "b")]
    try:
        for server in made:
            server.start(timeout=60)
        yield made
    finally:
        for server in made:
            server.stop()


async def spread(targets: Sequence[str], calls: Sequence[Callable[[quota_pb2_grpc.QuotaServiceStub], object]]) -> list:
    channels = [grpc.aio.insecure_channel(t, options=OWN_CONNECTION) for t in targets for _ in range(5)]
    try:
        stubs = [quota_pb2_grpc.QuotaServiceStub(c) for c in channels]
        return list(await asyncio.gather(*(call(stubs[i % len(stubs)]) for i, call in enumerate(calls))))  # type: ignore[misc]
    finally:
        for c in channels:
            await c.close()


def set_tier(server: ServerProcess, who: str, tier: str) -> None:
    with grpc.insecure_channel(server.target) as channel:
        admin_pb2_grpc.AdminServiceStub(channel).SetTier(
            admin_pb2.SetTierRequest(subject=who, tier=tier),
            metadata=(("authorization", f"Bearer {server.admin_token}"),),
        )


def counters_equal_ledger(raw: redis.Redis, events: Sequence[Event], who: str) -> None:
    """Tokens always; dollars where the subject's tier counts them (a cost_usd counter exists)."""
    usage = [e for e in events if e.subject == who and e.kind in USAGE]
    tokens = sum(int(raw.hget(k, "used") or 0) for k in raw.scan_iter(f"q:{{{who}}}:tokens:*"))
    assert sum(e.actual.get("tokens", 0) for e in usage) == tokens
    cost_keys = list(raw.scan_iter(f"q:{{{who}}}:cost_usd:*"))
    if cost_keys:
        assert sum(e.cost_micros for e in usage) == sum(int(raw.hget(k, "used") or 0) for k in cost_keys)


def test_a_burst_over_two_replicas_crosses_warn_and_block_once_and_the_ledger_equals_the_counters(
    two: list[ServerProcess], postgres_url: str, redis_url: str
) -> None:
    who = f"burst-{uuid.uuid4().hex[:8]}"
    set_tier(two[0], who, "tiny")  # 1,000 tokens a day: 10 tokens a call, 95 calls reach the block line

    async def reserve(stub: quota_pb2_grpc.QuotaServiceStub, i: int) -> quota_pb2.CheckAndReserveResponse:
        return await stub.CheckAndReserve(chat(who, 10, f"b-{i}"), timeout=30)

    answers = asyncio.run(spread([s.target for s in two], [lambda s, i=i: reserve(s, i) for i in range(200)]))
    ok = [a for a in answers if granted(a)]
    assert len(ok) == 95

    async def commit(stub: quota_pb2_grpc.QuotaServiceStub, rid: str) -> object:
        return await stub.Commit(quota_pb2.CommitRequest(reservation_id=rid, usage={"tokens": 10}), timeout=30)

    asyncio.run(spread([s.target for s in two], [lambda s, r=a.reservation_id: commit(s, r) for a in ok]))
    ledger = Ledger(postgres_url)

    def settled() -> list[Event] | None:
        events = ledger.events(who)
        kinds = Counter(e.kind for e in events)
        return events if kinds[EventKind.COMMITTED] == 95 and kinds[EventKind.DENIED] == 105 else None

    events = wait_until(settled, 20, "95 COMMITTED and 105 DENIED records")
    crossings = Counter(e.threshold for e in events if e.kind is EventKind.THRESHOLD_CROSSED)
    assert crossings == {Threshold.WARN: 1, Threshold.BLOCK: 1}
    assert len({e.id for e in events}) == len(events)
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        counters_equal_ledger(raw, events, who)
    finally:
        raw.close()


def test_sigkill_of_a_replica_mid_burst_loses_no_record(
    two: list[ServerProcess], postgres_url: str, redis_url: str
) -> None:
    a, b = two
    run = uuid.uuid4().hex[:8]
    subjects = [f"kill-{run}-{i}" for i in range(4)]
    acknowledged: dict[str, int] = {}  # reservation id -> tokens of an answered Commit
    reserved: list[str] = []
    lock = threading.Lock()
    killed = threading.Event()

    async def one(stub: quota_pb2_grpc.QuotaServiceStub, i: int) -> None:
        try:
            answer = await stub.CheckAndReserve(chat(subjects[i % 4], 100, f"k-{run}-{i}", ttl=2), timeout=5)
        except grpc.RpcError:
            return
        if not granted(answer):
            return
        with lock:
            reserved.append(answer.reservation_id)
        if i % 4 == 3:
            return  # abandoned: expires
        try:
            await stub.Commit(
                quota_pb2.CommitRequest(reservation_id=answer.reservation_id, usage={"tokens": 50}), timeout=5
            )
        except grpc.RpcError:
            return
        with lock:
            acknowledged[answer.reservation_id] = 50

    async def burst() -> None:
        channels = [grpc.aio.insecure_channel(s.target, options=OWN_CONNECTION) for s in (a, b)]
        try:
            stubs = [quota_pb2_grpc.QuotaServiceStub(c) for c in channels]
            tasks = []
            for i in range(200):
                tasks.append(asyncio.ensure_future(one(stubs[i % 2], i)))
                if i == 100:
                    await asyncio.sleep(0.05)
                    assert a.process is not None
                    a.process.send_signal(signal.SIGKILL)  # between any two steps of whatever it was doing
                    killed.set()
                await asyncio.sleep(0.002)
            await asyncio.gather(*tasks)
        finally:
            for c in channels:
                await c.close()

    asyncio.run(burst())
    assert killed.is_set()
    a.stop()  # reaps the killed process
    a.start(timeout=60)
    assert len(reserved) > 100 and len(acknowledged) > 50
    ledger = Ledger(postgres_url)

    def complete() -> dict[str, list[Event]] | None:
        by_reservation: dict[str, list[Event]] = defaultdict(list)
        for e in ledger.events():
            if e.subject in subjects:
                by_reservation[e.reservation_id].append(e)
        done = all(any(e.kind in TERMINAL for e in by_reservation[r]) for r in reserved)
        return by_reservation if done else None

    # abandoned ones expire after 2 s; entries the killed replica read but never stored are claimed after 10 s
    by_reservation = wait_until(complete, 45, "a terminal record for every granted reservation")
    for rid in reserved:
        terminal = [e for e in by_reservation[rid] if e.kind in TERMINAL]
        assert len(terminal) == 1, (rid, [e.kind for e in by_reservation[rid]])
        if rid in acknowledged:
            committed = [e for e in by_reservation[rid] if e.kind is EventKind.COMMITTED]
            corrected = [e for e in by_reservation[rid] if e.kind is EventKind.CORRECTED]
            # committed in time (or, if the commit landed after the 2 s TTL, an EXPIRED corrected to it)
            assert committed or corrected, (rid, [e.kind for e in by_reservation[rid]])
    events = [e for events in by_reservation.values() for e in events]
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        for who in subjects:
            counters_equal_ledger(raw, events, who)
    finally:
        raw.close()


def test_postgres_stopped_for_10_seconds_during_traffic_loses_nothing(
    redis_url: str, tmp_path: Path, policies: Path, postgres_url: str, postgres_server: LocalPostgres
) -> None:
    server = replica("solo", redis_url, tmp_path, policies, postgres_url)
    server.start(timeout=60)
    who = f"pg-{uuid.uuid4().hex[:8]}"
    committed: list[str] = []
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = quota_pb2_grpc.QuotaServiceStub(channel)

            def traffic(seconds: float) -> None:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    answer = stub.CheckAndReserve(chat(who, 20), timeout=5)
                    assert granted(answer)  # the quota path never waits for the ledger
                    stub.Commit(quota_pb2.CommitRequest(reservation_id=answer.reservation_id, usage={"tokens": 15}))
                    committed.append(answer.reservation_id)

            traffic(1.0)
            postgres_server.stop_server()
            try:
                traffic(10.0)
            finally:
                postgres_server.start_server()
            traffic(1.0)
        ledger = Ledger(postgres_url)

        def all_there() -> list[Event] | None:
            events = [e for e in ledger.events(who) if e.kind is EventKind.COMMITTED]
            return events if len(events) >= len(committed) else None

        events = wait_until(all_there, 30, f"{len(committed)} COMMITTED records")
        assert sorted(e.reservation_id for e in events) == sorted(committed)
        raw = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            counters_equal_ledger(raw, events, who)
        finally:
            raw.close()
    finally:
        server.stop()


def test_an_abandoned_reservation_is_recorded_expired_within_seconds_of_its_ttl(
    two: list[ServerProcess], postgres_url: str
) -> None:
    who = f"gone-{uuid.uuid4().hex[:8]}"
    with grpc.insecure_channel(two[0].target) as channel:
        answer = quota_pb2_grpc.QuotaServiceStub(channel).CheckAndReserve(chat(who, 100, ttl=1), timeout=5)
    assert granted(answer)
    ledger = Ledger(postgres_url)
    started = time.monotonic()
    (expired,) = wait_until(
        lambda: [e for e in ledger.events(who) if e.kind is EventKind.EXPIRED], 6, "an EXPIRED record", poll=0.1
    )
    assert time.monotonic() - started < 4.0  # TTL 1 s, the reaper every second, the relay every 0.1 s
    assert expired.reservation_id == answer.reservation_id and expired.cost_micros == 100 * 10


def test_an_on_cross_rule_stops_a_runaway_subject_and_the_stop_lifts_itself(
    two: list[ServerProcess], postgres_url: str
) -> None:
    who = f"agent-{uuid.uuid4().hex[:8]}"
    set_tier(two[0], who, "brake")  # 1,000 tokens an hour; the warn line (800) stops it for 3 s
    auth = (("authorization", f"Bearer {two[0].admin_token}"),)
    with grpc.insecure_channel(two[1].target) as channel:
        stub = quota_pb2_grpc.QuotaServiceStub(channel)
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        answers = [stub.CheckAndReserve(chat(who, 100), timeout=5) for _ in range(8)]
        assert answers[-1].decision == quota_pb2.WARN

        def stop_in_force() -> list[admin_pb2.Stop]:
            return [s for s in admin.ListStops(admin_pb2.ListStopsRequest(), metadata=auth).stops if s.target == who]

        (stop,) = wait_until(stop_in_force, 5, "the rule's stop in ListStops", poll=0.05)
        assert stop.scope == admin_pb2.SUBJECT and stop.created_by == "rule:runaway"
        assert stop.expires_at == stop.created_at + 3
        denied = wait_until(
            lambda: (a := stub.CheckAndReserve(chat(who, 10), timeout=5)).reason == quota_pb2.EMERGENCY_STOP and a,
            2,
            "EMERGENCY_STOP on the other replica",
            poll=0.05,
        )
        assert denied.decision == quota_pb2.DENY
        wait_until(lambda: granted(stub.CheckAndReserve(chat(who, 10), timeout=5)), 6, "the stop lifted", poll=0.2)
        wait_until(lambda: not stop_in_force(), 6, "the stop gone from ListStops")
    ledger = Ledger(postgres_url)
    changes = wait_until(
        lambda: (
            (found := [e for e in ledger.events(who) if e.kind is EventKind.STOP_CHANGED]) and len(found) == 2 and found
        ),
        10,
        "two STOP_CHANGED events (pulled, lifted)",
    )
    assert [json.loads(e.detail)["stop"] for e in changes] == ["pulled", "lifted"]
    assert {e.actor for e in changes} == {"rule:runaway"}
