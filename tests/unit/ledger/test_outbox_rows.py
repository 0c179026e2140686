"""The usage relay's fast path: outbox entries straight to ledger rows (no I/O).

``entry_record`` builds a usage record's row by hand (no :class:`Event`, no ``json.dumps``);
these tests pin that row to what the event path writes for the same entry (``row_of`` of
``entry_event`` through the validated ``Event``), and show a damaged entry refused as the
event path refuses it."""

from __future__ import annotations

import json

import pytest

from quota_service.ledger.events import EventKind
from quota_service.ledger.outbox import EntryError, entry_event, entry_record
from quota_service.ledger.store import event_of, row_of
from quota_service.policy.domain import Decision
from quota_service.store import keys, protocol

HEAD = protocol.head_of("free_alpha", "blog_writer", "openai", "gpt-4o-mini", "9a574b70813fc47e", "req-1", 25)
NAME, GEN = "JcH7HrxOW464DEoQ", "UoQHSEX4A2TpSwyK"
RESERVATION = keys.ReservationName("user-1", NAME, GEN).reservation_id


def entry(kind: str, **fields: str) -> dict[str, str]:
    base = {
        "k": kind,
        "s": "user-1",
        "t": "1796145224323",
        "n": NAME,
        "g": GEN,
        "h": HEAD,
        "e": "tokens=100",
        "c": "1796145224277",
        "x": "1796145524277",
        "d": "a",
    }
    return {**base, **fields}


def test_a_commit_row_says_what_the_entry_says() -> None:
    row, event = entry_record(entry("com", a="cost_usd=30 tokens=120", m="commit"))
    assert event is None  # usage records never become events on the fast path
    assert row.id == f"com_{RESERVATION}"
    assert row.kind == int(EventKind.COMMITTED)
    assert (row.at_ms, row.subject, row.tier, row.request_id) == (1796145224323, "user-1", "free_alpha", "req-1")
    assert (row.feature, row.provider, row.model) == ("blog_writer", "openai", "gpt-4o-mini")
    assert row.reservation_id == RESERVATION
    assert json.loads(row.estimate) == {"tokens": 100, "cost_usd": 25}
    assert json.loads(row.actual) == {"tokens": 120, "cost_usd": 30}
    assert row.cost_micros == 30
    assert row.decision == int(Decision.ALLOW)
    assert json.loads(row.detail) == {"reserved_at_ms": 1796145224277, "expires_at_ms": 1796145524277}
    assert row.policy_version == "9a574b70813fc47e"


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param(entry("com", a="cost_usd=30 tokens=120", m="commit"), id="committed"),
        pytest.param(entry("com", a="cost_usd=25 tokens=100", m="fail_open", d="w"), id="committed-fail-open"),
        pytest.param(entry("rel", m="release"), id="released"),
        pytest.param(entry("rel", m="withdraw"), id="released-withdrawn"),
        pytest.param(entry("exp", m="expire"), id="expired"),
        pytest.param(entry("cor", a="cost_usd=10 tokens=40", m="commit"), id="corrected-down"),
        pytest.param(entry("cor", m="release"), id="corrected-release"),
        pytest.param(entry("com", a="cost_usd=0", m="commit", c="", x=""), id="no-times"),
    ],
)
def test_the_fast_row_is_the_row_of_the_validated_event(fields: dict[str, str]) -> None:
    row, _ = entry_record(fields)
    event = entry_event(fields)
    assert row_of(event) == row  # byte for byte: the same JSON text in every column
    assert event_of(row) == event


def test_a_correction_carries_the_difference_and_what_it_corrects() -> None:
    row, _ = entry_record(entry("cor", a="cost_usd=10 tokens=40", m="commit"))
    assert json.loads(row.actual) == {"tokens": -60, "cost_usd": -15}
    assert row.cost_micros == -15
    assert json.loads(row.detail)["corrects"] == f"exp_{RESERVATION}"
    assert json.loads(row.detail)["settled_by"] == "commit"


def test_a_metric_name_that_needs_escaping_is_still_valid_json() -> None:
    row, _ = entry_record(entry("com", e='to"k=5', a='to"k=7', m="commit"))
    assert json.loads(row.actual) == {'to"k': 7}
    assert row_of(entry_event(entry("com", e='to"k=5', a='to"k=7', m="commit"))) == row


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param(entry("com", a="tokens=-5", m="commit"), "must not be negative", id="negative-actual"),
        pytest.param(entry("com", a="=5", m="commit"), "without a name", id="nameless-metric"),
        pytest.param(entry("com", a="tokens=many", m="commit"), "COMMITTED entry", id="not-a-number"),
        pytest.param(entry("com", t="soon", m="commit"), "whole number", id="bad-time"),
        pytest.param(entry("com", n="", m="commit"), "without its reservation", id="no-reservation"),
        pytest.param(entry("com", s="", m="commit"), "no subject", id="no-subject"),
        pytest.param(entry("com", g="bad gen!", m="commit"), "not a valid record id", id="bad-id"),
        pytest.param(entry("zzz"), "unknown entry kind", id="unknown-kind"),
    ],
)
def test_a_damaged_entry_is_refused(fields: dict[str, str], message: str) -> None:
    with pytest.raises(EntryError, match=message):
        entry_record(fields)
