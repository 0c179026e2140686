"""The admin core's pure parts: validation, exact unit conversion, which stops concern a
subject, the stop records' parsing, and the StopWatcher's cache over an in-memory source."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

from quota.v1 import admin_pb2
from quota_service.admin import (
    DEFAULT_AUDIT_LIMIT,
    DEFAULT_TOP_N,
    audit_limit,
    override_expiry,
    override_units,
    parse_window,
    stop_concerns,
    stop_label,
    top_n,
    validate_stop,
    validate_tier,
)
from quota_service.errors import InvalidRequest, NotFound, StoreUnavailable
from quota_service.policy.loader import load_policy
from quota_service.policy.stops import EmergencyStop, StopScope
from quota_service.policy.validation import MAX_REASON_BYTES, validate_reason, validate_subject
from quota_service.policy.windows import Window
from quota_service.server.admin import SCOPE_TO_WIRE, stop_scope
from quota_service.stops import NOT_LOADED, StopWatcher
from quota_service.store.admin_store import _glob_escape, _subject_of_counter, parse_stops

pytestmark = pytest.mark.unit

POLICY = load_policy(Path(__file__).resolve().parents[3] / "policies" / "alpha.yaml")


@pytest.mark.parametrize(
    ("metric", "amount", "units"),
    [
        ("tokens", 5000, 5000),
        ("tokens", 5000.0, 5000),
        ("tokens", 0, 0),
        ("images", 1e6, 1_000_000),
        ("cost_usd", 25.5, 25_500_000),
        ("cost_usd", 0.1, 100_000),  # exactly, not 100000.00000000001
        ("cost_usd", 0.000001, 1),
        ("cost_usd", 1234.567891, 1_234_567_891),
    ],
)
def test_override_max_converts_exactly(metric: str, amount: float, units: int) -> None:
    assert override_units(metric, amount) == units


@pytest.mark.parametrize(
    ("metric", "amount", "fragment"),
    [
        ("tokens", 2.5, "whole number of tokens"),
        ("cost_usd", 0.0000005, "whole micro-dollars"),
        ("tokens", -1, "must not be negative"),
        ("tokens", float("nan"), "finite"),
        ("tokens", float("inf"), "finite"),
        ("tokens", 2.0**60, "too large"),
        ("tokens", True, "finite"),
    ],
)
def test_override_max_refuses_what_is_not_exact(metric: str, amount: float, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        override_units(metric, amount)
    assert fragment in str(info.value)


def test_override_expiry() -> None:
    assert override_expiry(0, 1_000) == 0
    assert override_expiry(2, 1_000) == 1_002
    with pytest.raises(InvalidRequest):
        override_expiry(-1, 1_000)
    with pytest.raises(InvalidRequest):
        override_expiry(10**10, 1_000)


def test_windows() -> None:
    assert [parse_window(w) for w in ("minute", "hour", "day", "month")] == list(Window)
    with pytest.raises(InvalidRequest) as info:
        parse_window("week")
    assert "minute, hour, day, month" in str(info.value)


def test_stop_scope_and_target_rules() -> None:
    assert validate_stop(StopScope.GLOBAL, "") == (StopScope.GLOBAL, "")
    assert validate_stop(StopScope.PROVIDER, "openai") == (StopScope.PROVIDER, "openai")
    assert validate_stop(StopScope.TIER, "pro_alpha", POLICY) == (StopScope.TIER, "pro_alpha")
    for scope, target, error in [
        (None, "", InvalidRequest),
        (StopScope.GLOBAL, "openai", InvalidRequest),
        (StopScope.SUBJECT, "", InvalidRequest),
        (StopScope.FEATURE, "has space", InvalidRequest),
        (StopScope.SUBJECT, "{tag}", InvalidRequest),
        (StopScope.TIER, "platinum", NotFound),
    ]:
        with pytest.raises(error):
            validate_stop(scope, target, POLICY)
    assert stop_label(StopScope.GLOBAL, "") == "GLOBAL"
    assert stop_label(StopScope.SUBJECT, "u1") == "SUBJECT:u1"


def test_which_stops_concern_a_subject() -> None:
    stops = [
        EmergencyStop(StopScope.GLOBAL),
        EmergencyStop(StopScope.PROVIDER, "openai"),
        EmergencyStop(StopScope.FEATURE, "seo_analysis"),
        EmergencyStop(StopScope.TIER, "free_alpha"),
        EmergencyStop(StopScope.TIER, "pro_alpha"),
        EmergencyStop(StopScope.SUBJECT, "u1"),
        EmergencyStop(StopScope.SUBJECT, "u2"),
    ]
    concern = [(s.scope.value, s.target) for s in stops if stop_concerns(s, "u1", "free_alpha")]
    assert concern == [
        ("GLOBAL", ""),
        ("PROVIDER", "openai"),
        ("FEATURE", "seo_analysis"),
        ("TIER", "free_alpha"),
        ("SUBJECT", "u1"),
    ]


def test_tiers_counts_and_limits() -> None:
    assert validate_tier(POLICY, "basic_alpha") == "basic_alpha"
    assert validate_tier(POLICY, "") == ""
    with pytest.raises(NotFound) as info:
        validate_tier(POLICY, "gold")
    assert "basic_alpha, free_alpha, pro_alpha" in str(info.value)
    assert (top_n(0), top_n(3), audit_limit(0), audit_limit(7)) == (DEFAULT_TOP_N, 3, DEFAULT_AUDIT_LIMIT, 7)
    for bad in (-1, 1001):
        with pytest.raises(InvalidRequest):
            top_n(bad)
        with pytest.raises(InvalidRequest):
            audit_limit(bad)


def test_stop_records_parse_and_a_damaged_one_is_still_enforced() -> None:
    stops = parse_stops(
        {
            "SUBJECT:u1": '{"scope": "SUBJECT", "target": "u1", "reason": "loop", "created_at": 5, "created_by": "t"}',
            "GLOBAL": "not json",
            "PROVIDER:openai": '{"scope": "PROVIDER", "target": "openai"}',
            "WEIRD:x": "{}",
        }
    )
    assert [(s.scope, s.target, s.reason) for s in stops] == [
        (StopScope.GLOBAL, "", ""),
        (StopScope.PROVIDER, "openai", ""),
        (StopScope.SUBJECT, "u1", "loop"),
    ]


def test_scan_patterns_and_counter_keys() -> None:
    assert _glob_escape("q:{a*b?[c]\\}:") == "q:{a\\*b\\?\\[c\\]\\\\}:"
    suffix = ":tokens:day:2026-11-24"
    assert _subject_of_counter("q:{u1}:tokens:day:2026-11-24", suffix) == "u1"
    assert _subject_of_counter("q:{u:1}:tokens:day:2026-11-24", suffix) == "u:1"
    assert _subject_of_counter("q:{u1}:tokens:day:2026-11-25", suffix) is None
    assert _subject_of_counter("r:{u1}:tokens:day:2026-11-24", suffix) is None
    assert _subject_of_counter("q:{}:tokens:day:2026-11-24", suffix) is None


def test_wire_scopes() -> None:
    assert stop_scope(admin_pb2.STOP_SCOPE_UNSPECIFIED) is None
    assert stop_scope(99) is None
    assert {stop_scope(int(wire)) for wire in SCOPE_TO_WIRE.values()} == set(StopScope)


class MemoryStops:
    """An in-memory stop source: ``fail`` makes reads raise like an unreachable store."""

    def __init__(self) -> None:
        self.stops: list[EmergencyStop] = []
        self.fail = False
        self.changed = asyncio.Event()

    async def list_stops(self) -> list[EmergencyStop]:
        if self.fail:
            raise StoreUnavailable("down")
        return list(self.stops)

    async def stop_changes(self) -> AsyncGenerator[None, None]:
        if self.fail:
            raise StoreUnavailable("down")
        yield None
        while True:
            await self.changed.wait()
            self.changed.clear()
            yield None


async def test_the_watcher_fails_closed_until_loaded_then_keeps_the_last_stops() -> None:
    source = MemoryStops()
    source.fail = True
    watcher = StopWatcher(store=source, poll_interval=0.01, resubscribe_delay=0.01)
    assert watcher.active() == (NOT_LOADED,)
    assert await watcher.start(attempts=2) is False
    assert watcher.active() == (NOT_LOADED,) and not watcher.loaded
    try:
        source.stops = [EmergencyStop(StopScope.SUBJECT, "u1")]
        source.fail = False
        for _ in range(200):
            if watcher.loaded:
                break
            await asyncio.sleep(0.01)
        assert watcher.active() == (EmergencyStop(StopScope.SUBJECT, "u1"),)

        source.fail = True  # the store goes away: the last stops stay in force
        await asyncio.sleep(0.05)
        assert watcher.active() == (EmergencyStop(StopScope.SUBJECT, "u1"),)
        with pytest.raises(StoreUnavailable):
            await watcher.refresh()
    finally:
        await watcher.close()


async def test_a_change_notice_refreshes_at_once() -> None:
    source = MemoryStops()
    watcher = StopWatcher(store=source, poll_interval=3600)
    assert await watcher.start() is True and watcher.active() == ()
    try:
        await asyncio.sleep(0)
        source.stops = [EmergencyStop(StopScope.GLOBAL)]
        source.changed.set()
        for _ in range(100):
            if watcher.active():
                break
            await asyncio.sleep(0.001)
        assert watcher.active() == (EmergencyStop(StopScope.GLOBAL),)
    finally:
        await watcher.close()


@pytest.mark.parametrize(
    "reason",
    [
        "",
        "support ticket 7",
        "line one\nline two\n",  # a reason may be a paragraph
        "r" * MAX_REASON_BYTES,
        "é" * (MAX_REASON_BYTES // 2),  # 1024 bytes of UTF-8
        "عميل مميز \u200f(VIP)",  # right-to-left text and its marks are text, not controls
    ],
)
def test_reasons_up_to_1_kib_with_newlines_are_accepted(reason: str) -> None:
    assert MAX_REASON_BYTES == 1024
    assert validate_reason(reason) == reason


@pytest.mark.parametrize(
    ("reason", "fragment"),
    [
        ("r" * (MAX_REASON_BYTES + 1), "reason is 1025 bytes; at most 1024 bytes (UTF-8) are allowed"),
        ("é" * 513, "reason is 1026 bytes; at most 1024"),
        ("r" * 1_000_000, "reason is 1000000 bytes; at most 1024"),
        ("nul\x00", "U+0000"),
        ("esc \x1b[2J", "U+001B"),
        ("tab\there", "U+0009"),
        ("crlf\r\n", "U+000D"),
        ("del\x7f", "U+007F"),
        ("csi\x9b31m", "U+009B"),
    ],
)
def test_reasons_too_long_or_with_control_characters_are_refused(reason: str, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate_reason(reason)
    assert fragment in str(info.value)
    if fragment.startswith("U+"):
        assert "no control characters other than newlines" in str(info.value)
    assert len(str(info.value)) < 200  # the message never echoes the reason


def test_reset_usage_refuses_the_company_wide_scope() -> None:
    assert validate_subject("u1") == "u1"
    with pytest.raises(InvalidRequest) as info:
        validate_subject("__global__")
    assert str(info.value).startswith("__global__ is the company-wide scope, not a subject; ")
    for invalid in ("", "has space", "{tag}"):
        with pytest.raises(InvalidRequest):
            validate_subject(invalid)
