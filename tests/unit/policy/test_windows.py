"""Calendar windows in a non-UTC timezone, with an injected instant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from quota_service.policy.windows import Window, current_span, window_span

pytestmark = pytest.mark.unit

BERLIN = ZoneInfo("Europe/Berlin")
KOLKATA = ZoneInfo("Asia/Kolkata")


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
