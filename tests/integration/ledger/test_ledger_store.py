"""The ledger store on real SQLite and real PostgreSQL: idempotent inserts, time-ordered
pages, the resumable tail, retention, and the migrated schema."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from quota_service.errors import InvalidRequest
from quota_service.ledger import (
    Event,
    EventKind,
    EventNotFound,
    Ledger,
    LedgerConfigError,
    LimitSnapshot,
    Threshold,
    ledger_from_url,
    new_event_id,
    record_id,
)
from quota_service.ledger.schema import DELIVERY_PENDING, VERSION_TABLE, metadata, webhook_deliveries
from quota_service.policy.compiled import LimitKind
from quota_service.policy.domain import Decision, Reason
from quota_service.policy.windows import Window

KINDS = list(EventKind)


def admin_event(
    n: int, *, at_ms: int | None = None, subject: str = "", kind: EventKind = EventKind.ADMIN_CHANGE
) -> Event:
    return Event(
        id=f"adm_{n:06d}", kind=kind, at_ms=1_000 + n if at_ms is None else at_ms, subject=subject or f"u{n % 3}"
    )


def full_event() -> Event:
    return Event(
        id=record_id(EventKind.COMMITTED, "rsv_dTE.0123456789abcdef0123456789abcdef"),
        kind=EventKind.COMMITTED,
        at_ms=1_764_547_200_123,
        subject="u1",
        tier="free_alpha",
        feature="blog_writer",
        provider="openai",
        model="gpt-4o-mini",
        request_id="req-1",
        reservation_id="rsv_dTE.0123456789abcdef0123456789abcdef",
        estimate={"tokens": 1200, "images": 1},
        actual={"tokens": 1000},
        cost_micros=600,
        decision=Decision.WARN,
        reason=Reason.WARN_THRESHOLD,
        limit=LimitSnapshot(
            metric="tokens",
            window=Window.DAY,
            used=800,
            held=100,
            max_units=1000,
            resets_at=1_764_633_600,
            kind=LimitKind.TIER,
            decision=Decision.WARN,
            warn_at=Decimal("0.80"),
            block_at=Decimal("0.95"),
        ),
        threshold=Threshold.WARN,
        policy_version="v-abc",
        actor="service",
        detail='{"note": "é"}',
    )


async def test_migrations_make_exactly_the_schema_the_code_uses(ledger: Ledger) -> None:
    await ledger.migrate()  # a second run changes nothing

    def diff(connection: sa.Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return list(compare_metadata(context, metadata))

    async with ledger.engine.connect() as conn:
        assert await conn.run_sync(diff) == []
        version = (await conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}"))).scalar_one()
    assert version == "0004"


async def test_insert_is_idempotent_on_id(ledger: Ledger) -> None:
    batch = [admin_event(n) for n in range(20)]
    assert await ledger.insert(batch) == 20
    assert await ledger.insert(batch) == 0  # the same batch again: one row each
    assert await ledger.count() == 20
    # A mixed batch counts only the new ids; a repeated id inside a batch is one row.
    assert await ledger.insert([*batch[:5], admin_event(20), admin_event(20), admin_event(21)]) == 2
    assert await ledger.count() == 22
    # The first write wins: a different body under a stored id changes nothing.
    changed = Event(id=batch[0].id, kind=EventKind.STOP_CHANGED, at_ms=5, subject="other")
    assert await ledger.insert([changed]) == 0
    stored = await ledger.get_events([batch[0].id])
    assert stored[batch[0].id] == batch[0]
    assert await ledger.insert([]) == 0


async def test_every_field_round_trips(ledger: Ledger) -> None:
    event = full_event()
    corrected = Event(
        id=record_id(EventKind.CORRECTED, event.reservation_id),
        kind=EventKind.CORRECTED,
        at_ms=event.at_ms + 1,
        estimate={"tokens": -200},
        actual={"tokens": -200},
        cost_micros=-120,
        detail='{"corrects": "exp_x"}',
    )
    await ledger.insert([event, corrected])
    page, token = await ledger.list_events()
    assert page == [event, corrected]
    assert token == ""


async def test_pages_are_oldest_first_without_gap_or_duplicate(ledger: Ledger) -> None:
    rng = random.Random(7)
    # Many ties on at_ms (the id breaks them), inserted in random order and batches.
    all_events = [admin_event(n, at_ms=1_000 + rng.randrange(40), kind=rng.choice(KINDS)) for n in range(230)]
    shuffled = all_events[:]
    rng.shuffle(shuffled)
    for start in range(0, len(shuffled), 37):
        await ledger.insert(shuffled[start : start + 37])

    async def read_all(**filters: object) -> list[Event]:
        seen: list[Event] = []
        token = ""
        while True:
            page, token = await ledger.list_events(page_size=7, page_token=token, **filters)  # type: ignore[arg-type]
            assert len(page) <= 7
            seen.extend(page)
            if not token:
                return seen

    expected = sorted(all_events, key=lambda e: (e.at_ms, e.id))
    assert await read_all() == expected
    assert await read_all(subject="u1") == [e for e in expected if e.subject == "u1"]
    kinds = {EventKind.DENIED, EventKind.THRESHOLD_CROSSED}
    assert await read_all(kinds=kinds) == [e for e in expected if e.kind in kinds]
    assert await read_all(since_ms=1_010, until_ms=1_020) == [e for e in expected if 1_010 <= e.at_ms < 1_020]
    # A full last page needs no extra empty page.
    page, token = await ledger.list_events(page_size=len(expected))
    assert len(page) == len(expected) and token == ""
    # Sizes are clamped: 0 is the default, above the maximum is the maximum.
    page, token = await ledger.list_events(page_size=0)
    assert len(page) == 100 and token


async def test_bad_page_requests_are_refused(ledger: Ledger) -> None:
    for token in ("nonsense", "t1.!!!", "t1.WzEsMiwzXQ", "t1.eyJhIjoxfQ"):
        with pytest.raises(InvalidRequest, match="page_token"):
            await ledger.list_events(page_token=token)
    with pytest.raises(InvalidRequest):
        await ledger.list_events(page_size=-1)
    with pytest.raises(InvalidRequest):
        await ledger.list_events(since_ms=-5)
    with pytest.raises(InvalidRequest, match="kinds"):
        await ledger.list_events(kinds=[0])  # type: ignore[list-item]
    with pytest.raises(InvalidRequest, match="limit"):
        await ledger.events_after(limit=0)


async def test_tail_resumes_without_gap_or_duplicate_in_insertion_order(ledger: Ledger) -> None:
    first = [admin_event(n, at_ms=10_000 + n) for n in range(10)]
    late = [admin_event(100 + n, at_ms=500 + n) for n in range(5)]  # arrive late, with older times
    more = [admin_event(200 + n, at_ms=20_000 + n) for n in range(7)]
    await ledger.insert(first)
    await ledger.insert(late)
    await ledger.insert(more)
    inserted = first + late + more

    received: list[Event] = []
    after = ""
    while True:
        page = await ledger.events_after(after, limit=4)
        if not page.events:
            break
        received.extend(page.events)
        after = page.events[-1].id  # resume from the last id seen, as a WatchEvents client does
    assert received == inserted

    # A resume after any event yields exactly the ones stored after it.
    for cut in (0, 9, 10, 14, 21):
        page = await ledger.events_after(inserted[cut].id, limit=100)
        assert page.events == inserted[cut + 1 :]

    # Filtered tails advance their position past rows that do not match.
    page = await ledger.events_after(subject="u1", limit=100)
    assert page.events == [e for e in inserted if e.subject == "u1"]
    assert page.position == await ledger.head_position()
    again = await ledger.events_after(after_position=page.position, subject="u1")
    assert again.events == [] and again.position == page.position
    await ledger.insert([admin_event(300, subject="u1")])
    newer = await ledger.events_after(after_position=page.position, subject="u1")
    assert [e.id for e in newer.events] == ["adm_000300"]

    with pytest.raises(EventNotFound):
        await ledger.events_after("adm_999999")


async def test_tail_under_concurrent_writers_has_no_gap(ledger_url: str, ledger: Ledger) -> None:
    """Three writers (separate engines, as separate replicas would be) insert while a reader
    follows the tail: the reader ends with every event exactly once."""
    writers = [ledger_from_url(ledger_url) for _ in range(3)]
    total = 3 * 40
    received: list[str] = []

    async def write(index: int, store: Ledger | None) -> None:
        assert store is not None
        for batch in range(8):
            await store.insert([admin_event(index * 1000 + batch * 5 + k) for k in range(5)])
            await asyncio.sleep(0)

    async def follow() -> None:
        position = 0
        async with asyncio.timeout(60):
            while len(received) < total:
                page = await ledger.events_after(after_position=position, limit=7)
                received.extend(e.id for e in page.events)
                position = page.position
                if not page.events:
                    await asyncio.sleep(0.005)

    try:
        await asyncio.gather(follow(), *(write(i, w) for i, w in enumerate(writers)))
    finally:
        for w in writers:
            assert w is not None
            await w.close()
    assert len(received) == total
    assert len(set(received)) == total


async def test_retention_keeps_the_newest_and_what_webhooks_still_need(ledger: Ledger) -> None:
    await ledger.insert([admin_event(n, at_ms=1_000 + n) for n in range(10)])
    async with ledger.transaction(write=True) as conn:
        await conn.execute(
            sa.insert(webhook_deliveries),
            [
                {
                    "endpoint_id": "ep_x",
                    "event_id": "adm_000002",
                    "state": DELIVERY_PENDING,
                    "attempts": 1,
                    "next_attempt_at_ms": 0,
                    "last_status": 500,
                    "last_error": "",
                    "created_at_ms": 0,
                    "updated_at_ms": 0,
                },
                {
                    "endpoint_id": "ep_x",
                    "event_id": "adm_000003",
                    "state": "delivered",
                    "attempts": 1,
                    "next_attempt_at_ms": 0,
                    "last_status": 200,
                    "last_error": "",
                    "created_at_ms": 0,
                    "updated_at_ms": 0,
                },
            ],
        )
    assert await ledger.delete_older_than(1_005) == 4  # 0, 1, 3, 4: not 2 (pending delivery)
    remaining = [e.id for e in (await ledger.list_events())[0]]
    assert remaining == ["adm_000002", *[f"adm_{n:06d}" for n in range(5, 10)]]
    async with ledger.transaction(write=False) as conn:
        left = (await conn.execute(sa.select(webhook_deliveries.c.event_id))).scalars().all()
    assert left == ["adm_000002"]  # the finished delivery went, the pending one stays

    # Everything old: the newest row stays, so positions keep growing and are never reused.
    head = await ledger.head_position()
    assert await ledger.delete_older_than(10**12) == 4  # 5-8; 2 is pending, 9 the newest
    assert [e.id for e in (await ledger.list_events())[0]] == ["adm_000002", "adm_000009"]
    await ledger.insert([admin_event(50)])
    page = await ledger.events_after(after_position=head)
    assert [e.id for e in page.events] == ["adm_000050"]
    # A tail cannot resume from a removed event: it says so instead of skipping ahead.
    with pytest.raises(EventNotFound):
        await ledger.events_after("adm_000001")


async def test_many_writers_of_the_same_records_store_each_once(ledger_url: str, ledger: Ledger) -> None:
    """Relays in two replicas draining overlapping outboxes: one row per id."""
    other = ledger_from_url(ledger_url)
    assert other is not None
    records = [
        Event(id=record_id(EventKind.COMMITTED, f"rsv_dTE.{n:032x}"), kind=EventKind.COMMITTED, at_ms=2_000 + n)
        for n in range(60)
    ]
    denials = [
        Event(id=new_event_id(EventKind.DENIED, 3_000 + n), kind=EventKind.DENIED, at_ms=3_000 + n) for n in range(20)
    ]
    try:
        results = await asyncio.gather(
            *(
                store.insert(records[start : start + 15] + denials)
                for store in (ledger, other)
                for start in range(0, 60, 10)
            )
        )
    finally:
        await other.close()
    assert sum(results) == 80
    assert await ledger.count() == 80


def test_ledger_urls(tmp_path: Path) -> None:
    assert ledger_from_url("none") is None
    assert ledger_from_url(" NONE ") is None
    with pytest.raises(LedgerConfigError, match="not supported"):
        ledger_from_url("mysql://root:hunter2@localhost/db")
    with pytest.raises(LedgerConfigError) as excinfo:
        ledger_from_url("oracle://scott:tiger@db/x")
    assert "tiger" not in str(excinfo.value)
    with pytest.raises(LedgerConfigError, match="file"):
        ledger_from_url("sqlite:///:memory:")
    with pytest.raises(LedgerConfigError, match="file"):
        ledger_from_url("sqlite://")
    nested = tmp_path / "a" / "b" / "ledger.db"
    store = ledger_from_url(f"sqlite:///{nested}")
    assert store is not None and store.dialect == "sqlite"
    assert nested.parent.is_dir()
    postgres = ledger_from_url("postgres://u:secret@127.0.0.1:1/x")
    assert postgres is not None and postgres.dialect == "postgresql"
