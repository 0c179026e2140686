"""The domain event: validation, the id scheme, and conversion to quota.v1.Event and proto3 JSON."""

from __future__ import annotations

import hashlib
import json
import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quota.v1 import events_pb2
from quota_service.errors import InvalidRequest
from quota_service.ledger import Event, EventKind, LimitSnapshot, Threshold, new_event_id, record_id, threshold_event_id
from quota_service.ledger.convert import event_from_json, event_from_proto, event_to_json, event_to_proto
from quota_service.policy.compiled import Limit, LimitKind, Thresholds
from quota_service.policy.domain import CounterRef, Decision, Reason
from quota_service.policy.engine import LimitReport
from quota_service.policy.windows import Window

pytestmark = pytest.mark.unit

RID = "rsv_dTE.0123456789abcdef0123456789abcdef"


def test_reservation_records_have_derived_ids() -> None:
    assert record_id(EventKind.COMMITTED, RID) == f"com_{RID}"
    assert record_id(EventKind.RELEASED, RID) == f"rel_{RID}"
    assert record_id(EventKind.EXPIRED, RID) == f"exp_{RID}"
    assert record_id(EventKind.CORRECTED, RID) == f"cor_{RID}"
    assert record_id(EventKind.COMMITTED, RID) == record_id(EventKind.COMMITTED, RID)
    for kind in (EventKind.DENIED, EventKind.THRESHOLD_CROSSED, EventKind.ADMIN_CHANGE):
        with pytest.raises(ValueError):
            record_id(kind, RID)
    with pytest.raises(ValueError):
        record_id(EventKind.COMMITTED, "")


def test_threshold_ids_follow_the_natural_key() -> None:
    one = threshold_event_id("u1", LimitKind.TIER, "tokens", Window.DAY, "2026-11-24", Threshold.WARN)
    assert one == threshold_event_id("u1", LimitKind.TIER, "tokens", Window.DAY, "2026-11-24", Threshold.WARN)
    # What a Lua script computes: redis.sha1hex over the fields joined by \x1f.
    key = "\x1f".join(["u1", "tier", "tokens", "day", "2026-11-24", "WARN"])
    assert one == "thr_" + hashlib.sha1(key.encode()).hexdigest()
    others = {
        threshold_event_id("u1", LimitKind.TIER, "tokens", Window.DAY, "2026-11-24", Threshold.BLOCK),
        threshold_event_id("u1", LimitKind.TIER, "tokens", Window.DAY, "2026-11-25", Threshold.WARN),
        threshold_event_id("u2", LimitKind.TIER, "tokens", Window.DAY, "2026-11-24", Threshold.WARN),
        threshold_event_id("u1", LimitKind.HARD_STOP, "tokens", Window.DAY, "2026-11-24", Threshold.WARN),
        threshold_event_id("u1", LimitKind.TIER, "images", Window.DAY, "2026-11-24", Threshold.WARN),
    }
    assert one not in others and len(others) == 5


def test_minted_ids_are_time_ordered_ulids() -> None:
    first = new_event_id(EventKind.DENIED, 1_764_547_200_000)
    later = new_event_id(EventKind.DENIED, 1_764_547_200_001)
    assert re.fullmatch(r"den_[0-9A-HJKMNP-TV-Z]{26}", first)
    assert first < later
    assert new_event_id(EventKind.STOP_CHANGED, 5, randomness=bytes(10)) == "stp_" + "0" * 9 + "5" + "0" * 16
    assert new_event_id(EventKind.ADMIN_CHANGE, 0).startswith("adm_")
    assert new_event_id(EventKind.DENIED, 7) != new_event_id(EventKind.DENIED, 7)
    with pytest.raises(ValueError):
        new_event_id(EventKind.DENIED, -1)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"id": ""}, "event id"),
        ({"id": "has space"}, "event id"),
        ({"id": "line\nbreak"}, "event id"),
        ({"id": "x" * 513}, "event id"),
        ({"at_ms": -1}, "at_ms"),
        ({"estimate": {"tokens": 1.5}}, "whole units"),
        ({"actual": {"tokens": -1}}, "negative"),
        ({"cost_micros": -5}, "negative"),
        ({"cost_micros": 0.5}, "cost_micros"),
        ({"detail": "{not json"}, "JSON"),
    ],
)
def test_invalid_events_are_refused(changes: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"id": "adm_1", "kind": EventKind.COMMITTED, "at_ms": 1}
    fields.update(changes)
    with pytest.raises(ValueError, match=message):
        Event(**fields)  # type: ignore[arg-type]


def test_corrections_may_be_negative_and_amounts_are_copied() -> None:
    amounts = {"tokens": -200}
    event = Event(id="cor_x", kind=EventKind.CORRECTED, at_ms=1, actual=amounts, cost_micros=-120)
    amounts["tokens"] = 5
    assert event.actual == {"tokens": -200}


def test_limit_snapshot_from_an_engine_report() -> None:
    limit = Limit("cost_usd", Window.MONTH, 10_000_000, LimitKind.TIER, Thresholds())
    ref = CounterRef("u1", "cost_usd", Window.MONTH, "2026-11", 1_764_547_200)
    snapshot = LimitSnapshot.from_report(
        LimitReport(limit, ref, 7_000_000, 1_500_000, Decision.WARN, Reason.WARN_THRESHOLD)
    )
    assert snapshot == LimitSnapshot(
        "cost_usd",
        Window.MONTH,
        7_000_000,
        1_500_000,
        10_000_000,
        1_764_547_200,
        LimitKind.TIER,
        Decision.WARN,
        Decimal("0.80"),
        Decimal("0.95"),
    )
    assert snapshot.remaining == 1_500_000 and snapshot.ratio == 0.85
    message = event_to_proto(Event(id="thr_x", kind=EventKind.THRESHOLD_CROSSED, at_ms=1, limit=snapshot)).limit
    assert (message.used, message.held, message.max, message.remaining) == (7.0, 1.5, 10.0, 1.5)
    assert (message.warn_at, message.block_at, message.resets_at) == (0.8, 0.95, 1_764_547_200)


def test_proto3_json_is_the_standard_mapping_and_stable() -> None:
    event = Event(
        id=f"com_{RID}",
        kind=EventKind.COMMITTED,
        at_ms=1_764_547_200_123,
        subject="u1",
        estimate={"images": 20},
        actual={"images": 20},
        cost_micros=1_000_000,  # twenty $0.05 images: exactly $1.00
        decision=Decision.ALLOW,
        reason=Reason.WITHIN_LIMITS,
        detail='{"k":"é"}',
    )
    body = event_to_json(event)
    assert body == event_to_json(event)
    decoded = json.loads(body)
    assert decoded == {
        "id": f"com_{RID}",
        "kind": "COMMITTED",
        "atMs": "1764547200123",
        "subject": "u1",
        "estimate": {"images": 20.0},
        "actual": {"images": 20.0},
        "costUsd": 1.0,
        "decision": "ALLOW",
        "reason": "WITHIN_LIMITS",
        "detail": '{"k":"é"}',
    }
    assert list(decoded) == sorted(decoded)
    assert event_from_json(body) == event
    assert event_from_json(body.decode().replace("{", '{"fromTheFuture":1,', 1)) == event


def test_wire_messages_that_are_no_event_are_refused() -> None:
    with pytest.raises(InvalidRequest):
        event_from_proto(events_pb2.Event(id="adm_1", at_ms=1))  # no kind
    with pytest.raises(InvalidRequest):
        event_from_proto(events_pb2.Event(id="bad id", kind=events_pb2.ADMIN_CHANGE, at_ms=1))
    with pytest.raises(InvalidRequest):
        event_from_json(b"{not json")


metrics = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
units = st.integers(min_value=0, max_value=2**50)
names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
snapshots = st.builds(
    LimitSnapshot,
    metric=st.sampled_from(["tokens", "images", "cost_usd"]),
    window=st.sampled_from(list(Window)),
    used=units,
    held=units,
    max_units=units,
    resets_at=st.integers(min_value=0, max_value=2**40),
    kind=st.sampled_from([LimitKind.TIER, LimitKind.OVERRIDE]),
    decision=st.none() | st.sampled_from(list(Decision)),
    warn_at=st.decimals(min_value=Decimal("0.01"), max_value=1, places=2),
    block_at=st.decimals(min_value=Decimal("0.01"), max_value=1, places=2),
) | st.builds(
    LimitSnapshot,
    metric=st.just("cost_usd"),
    window=st.sampled_from(list(Window)),
    used=units,
    held=units,
    max_units=units,
    resets_at=st.integers(min_value=0, max_value=2**40),
    kind=st.sampled_from([LimitKind.HARD_STOP, LimitKind.GLOBAL]),
)


@st.composite
def events(draw: st.DrawFn) -> Event:
    kind = draw(st.sampled_from(list(EventKind)))
    amount = st.integers(min_value=-(2**50), max_value=2**50) if kind is EventKind.CORRECTED else units
    return Event(
        id=draw(st.from_regex(r"[A-Za-z0-9._~=-]{1,60}", fullmatch=True)),
        kind=kind,
        at_ms=draw(st.integers(min_value=0, max_value=2**62)),
        subject=draw(names),
        tier=draw(names),
        feature=draw(names),
        provider=draw(names),
        model=draw(names),
        request_id=draw(names),
        reservation_id=draw(names),
        estimate=draw(st.dictionaries(metrics | st.just("cost_usd"), amount, max_size=3)),
        actual=draw(st.dictionaries(metrics | st.just("cost_usd"), amount, max_size=3)),
        cost_micros=draw(amount),
        decision=draw(st.none() | st.sampled_from(list(Decision))),
        reason=draw(st.none() | st.sampled_from(list(Reason))),
        limit=draw(st.none() | snapshots),
        threshold=draw(st.none() | st.sampled_from(list(Threshold))),
        policy_version=draw(names),
        actor=draw(names),
        detail=draw(st.sampled_from(["", "{}", '{"a": [1, 2]}', '"text"'])),
    )


@given(events())
def test_every_event_survives_proto_and_json_exactly(event: Event) -> None:
    assert event_from_proto(event_to_proto(event)) == event
    assert event_from_json(event_to_json(event)) == event
