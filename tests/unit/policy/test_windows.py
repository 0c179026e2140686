"""Calendar windows in a non-UTC timezone, with an injected instant."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from quota_service.policy.windows import Window, WindowSpan, current_span, window_span

pytestmark = pytest.mark.unit

BERLIN = ZoneInfo("Europe/Berlin")
KOLKATA = ZoneInfo("Asia/Kolkata")
#: +10:30 standard, +11:00 in summer: its clocks move by 30 minutes.
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")
#: 2026-04-05 02:00 +11:00 becomes 01:30 +10:30 (15:00 UTC); 2026-10-04 02:00 +10:30 becomes 02:30 +11:00 (15:30 UTC).
LORD_HOWE_BACK = datetime(2026, 4, 4, 15, 0, tzinfo=UTC)
LORD_HOWE_FORWARD = datetime(2026, 10, 3, 15, 30, tzinfo=UTC)


def test_day_rolls_over_at_local_midnight() -> None:
    before = datetime(2026, 11, 24, 22, 59, 59, tzinfo=UTC)  # 23:59:59 in Berlin (UTC+1)
    after = before + timedelta(seconds=1)  # 00:00:00 in Berlin
    a, b = window_span(Window.DAY, before, BERLIN), window_span(Window.DAY, after, BERLIN)
    assert (a.window_id, b.window_id) == ("2026-11-24", "2026-11-25")
    assert a.end == b.start == int(after.timestamp())
    assert b.end - b.start == 86_400


def test_month_rolls_over_at_local_month_end() -> None:
    last = datetime(2026, 11, 30, 22, 59, 59, tzinfo=UTC)  # Nov 30, 23:59:59 Berlin
    first = last + timedelta(seconds=1)
    a, b = window_span(Window.MONTH, last, BERLIN), window_span(Window.MONTH, first, BERLIN)
    assert (a.window_id, b.window_id) == ("2026-11", "2026-12")
    assert a.end == b.start == int(first.timestamp())
    dec = window_span(Window.MONTH, datetime(2026, 12, 31, 23, 30, tzinfo=UTC), BERLIN)
    assert dec.window_id == "2027-01"  # already January in Berlin


def test_dst_days_last_23_and_25_hours() -> None:
    spring = window_span(Window.DAY, datetime(2026, 3, 29, 12, tzinfo=UTC), BERLIN)
    autumn = window_span(Window.DAY, datetime(2026, 10, 25, 12, tzinfo=UTC), BERLIN)
    assert (spring.end - spring.start, autumn.end - autumn.start) == (23 * 3600, 25 * 3600)


def test_repeated_dst_hour_gets_distinct_windows() -> None:
    first = window_span(Window.HOUR, datetime(2026, 10, 25, 0, 30, tzinfo=UTC), BERLIN)  # 02:30 CEST
    second = window_span(Window.HOUR, datetime(2026, 10, 25, 1, 30, tzinfo=UTC), BERLIN)  # 02:30 CET
    assert first.window_id != second.window_id
    assert first.end == second.start


def test_half_hour_offsets_and_minutes() -> None:
    span = window_span(Window.HOUR, datetime(2026, 11, 24, 10, 45, tzinfo=UTC), KOLKATA)  # 16:15 IST
    assert span.window_id == "2026-11-24T16:00+05:30"
    assert span.start == int(datetime(2026, 11, 24, 10, 30, tzinfo=UTC).timestamp())
    minute = window_span(Window.MINUTE, datetime(2026, 11, 24, 10, 45, 59, tzinfo=UTC), KOLKATA)
    assert (minute.window_id, minute.end - minute.start) == ("2026-11-24T16:15+05:30", 60)


def test_naive_instants_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        window_span(Window.DAY, datetime(2026, 1, 1), BERLIN)


def test_current_span_is_remembered_only_while_it_contains_now() -> None:
    noon = datetime(2026, 11, 24, 11, 0, tzinfo=UTC)
    first = current_span(Window.DAY, noon, BERLIN)
    assert current_span(Window.DAY, noon + timedelta(hours=10), BERLIN) is first  # 22:00 Berlin, same day
    tomorrow = current_span(Window.DAY, noon + timedelta(hours=12), BERLIN)  # 00:00 Berlin, next day
    assert tomorrow.window_id == "2026-11-25"
    assert current_span(Window.DAY, noon, BERLIN) == first  # a clock moved back gets the right span again
    assert current_span(Window.DAY, noon, KOLKATA).window_id == "2026-11-24"  # per zone


def spans_around(window: Window, change: datetime, tz: ZoneInfo, hours: int = 4) -> list[WindowSpan]:
    """Every distinct span met stepping minute by minute across ``hours`` around ``change``."""
    seen: list[WindowSpan] = []
    for minute in range(-60 * hours, 60 * hours):
        instant = change + timedelta(minutes=minute)
        span = window_span(window, instant, tz)
        assert span.start <= instant.timestamp() < span.end, (instant, span)  # every instant in its window
        if not seen or seen[-1] != span:
            seen.append(span)
    return seen


@pytest.mark.parametrize("change", [LORD_HOWE_BACK, LORD_HOWE_FORWARD], ids=["april-back", "october-forward"])
def test_hour_windows_across_a_30_minute_change_start_on_local_minute_0(change: datetime) -> None:
    spans = spans_around(Window.HOUR, change, LORD_HOWE)
    for span in spans:
        local = datetime.fromtimestamp(span.start, LORD_HOWE)
        assert (local.minute, local.second) == (0, 0)
        assert span.window_id == local.isoformat(timespec="minutes")
    for before, after in itertools.pairwise(spans):
        assert before.end == after.start  # no gap, no overlap
    ids = [span.window_id for span in spans]
    assert len(set(ids)) == len(ids)
    lengths = sorted(span.end - span.start for span in spans)
    assert lengths[-1] == 5400 and all(length == 3600 for length in lengths[:-1])  # one 90-minute hour


def test_the_hour_lord_howe_repeats_half_of_is_one_90_minute_window() -> None:
    # 01:00 +11:00 (14:00 UTC) .. 02:00 +10:30 (15:30 UTC): 01:30-02:00 happens twice inside it.
    inside = [LORD_HOWE_BACK - timedelta(minutes=30), LORD_HOWE_BACK + timedelta(minutes=15)]
    first, second = (window_span(Window.HOUR, instant, LORD_HOWE) for instant in inside)
    assert first == second
    assert first.window_id == "2026-04-05T01:00+11:00"
    assert (first.start, first.end) == (
        int(datetime(2026, 4, 4, 14, 0, tzinfo=UTC).timestamp()),
        int(datetime(2026, 4, 4, 15, 30, tzinfo=UTC).timestamp()),
    )
    after = window_span(Window.HOUR, LORD_HOWE_BACK + timedelta(minutes=30), LORD_HOWE)
    assert (after.window_id, after.start) == ("2026-04-05T02:00+10:30", first.end)


def test_the_hour_lord_howe_skips_half_of_is_one_90_minute_window() -> None:
    # 01:00 +10:30 (14:30 UTC) .. 03:00 +11:00 (16:00 UTC): 02:00-02:30 never happens.
    span = window_span(Window.HOUR, LORD_HOWE_FORWARD + timedelta(minutes=10), LORD_HOWE)  # 02:40 +11:00
    assert span.window_id == "2026-10-04T01:00+10:30"
    assert span.end - span.start == 5400
    assert span.end == int(datetime(2026, 10, 3, 16, 0, tzinfo=UTC).timestamp())
    assert window_span(Window.HOUR, LORD_HOWE_FORWARD - timedelta(minutes=1), LORD_HOWE) == span


@pytest.mark.parametrize("change", [LORD_HOWE_BACK, LORD_HOWE_FORWARD], ids=["april-back", "october-forward"])
def test_minute_and_day_windows_across_a_30_minute_change(change: datetime) -> None:
    minutes = spans_around(Window.MINUTE, change, LORD_HOWE, hours=1)
    assert all(span.end - span.start == 60 for span in minutes)
    assert len({span.window_id for span in minutes}) == len(minutes)
    day = window_span(Window.DAY, change, LORD_HOWE)
    assert day.end - day.start == (86_400 + 1800 if change is LORD_HOWE_BACK else 86_400 - 1800)


def test_current_span_stays_right_across_a_30_minute_change() -> None:
    instants = [LORD_HOWE_BACK + timedelta(minutes=m) for m in range(-90, 120, 7)]
    for instant in instants:
        assert current_span(Window.HOUR, instant, LORD_HOWE) == window_span(Window.HOUR, instant, LORD_HOWE)
