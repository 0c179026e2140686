"""Calendar windows: ``minute``, ``hour``, ``day`` and ``month`` in the policy's timezone.

A window is identified by its start. Day and month windows begin at local midnight and
on the 1st of the month in the policy's timezone (DST-aware: a local day can last 23 or
25 hours). An hour window starts at the latest instant whose local time has minute 0 and
ends at the next such instant, a minute window likewise with second 0: so in a zone whose
offset changes by 30 minutes (``Australia/Lord_Howe``) the hour around the change lasts 30
or 90 minutes, and every instant is in exactly one window. Window starts are strictly
increasing and window ids unique (a repeated local hour is told apart by its offset).

Window ids appear in Redis keys (``q:{subject}:tokens:day:2026-11-24``):

* ``day``    -> ``2026-11-24``
* ``month``  -> ``2026-11``
* ``hour``   -> ``2026-11-24T13:00+01:00``   (the offset keeps DST's repeated hour apart)
* ``minute`` -> ``2026-11-24T13:05+01:00``
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Final


class Window(enum.StrEnum):
    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"
    MONTH = "month"


WINDOW_ORDER = (Window.MINUTE, Window.HOUR, Window.DAY, Window.MONTH)


@dataclass(frozen=True, slots=True)
class WindowSpan:
    """One concrete window: ``[start, end)`` as unix seconds, and its id for keys."""

    window: Window
    window_id: str
    start: int
    end: int


def _local_midnight(year: int, month: int, day: int, tz: tzinfo) -> datetime:
    return datetime(year, month, day, tzinfo=tz)


#: Offset changes a search may cross before it gives up (a window holds one, rarely two).
_MAX_TRANSITIONS: Final = 8


def _offset(instant: int, tz: tzinfo) -> int:
    """The zone's UTC offset (seconds) in force at the unix second ``instant``."""
    offset = datetime.fromtimestamp(instant, tz).utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


def _first_with_offset(lo: int, hi: int, tz: tzinfo, offset: int, *, equal: bool) -> int:
    """The first second in ``(lo, hi]`` whose offset is (``equal``) or is not ``offset``;
    the offset changes once in between (bisection)."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if (_offset(mid, tz) == offset) == equal:
            hi = mid
        else:
            lo = mid
    return hi


def _boundary_at_or_before(instant: int, period: int, tz: tzinfo) -> int:
    """The latest second <= ``instant`` whose local time is a whole multiple of ``period``
    seconds (3600: minute 0; 60: second 0)."""
    t = instant
    for _ in range(_MAX_TRANSITIONS):
        offset = _offset(t, tz)
        candidate = t - (t + offset) % period
        if _offset(candidate, tz) == offset:
            return candidate
        # The offset changed in (candidate, t]: no boundary of this offset there; look before the change.
        t = _first_with_offset(candidate, t, tz, offset, equal=True) - 1
    raise ValueError(f"no local {period} s boundary found before {instant} in {tz}")


def _boundary_after(instant: int, period: int, tz: tzinfo) -> int:
    """The earliest second > ``instant`` whose local time is a whole multiple of ``period``."""
    t = instant + 1
    for _ in range(_MAX_TRANSITIONS):
        offset = _offset(t, tz)
        candidate = t + (-(t + offset)) % period
        if _offset(candidate, tz) == offset:
            return candidate
        # The offset changed in (t, candidate]: look from the change on.
        t = _first_with_offset(t, candidate, tz, offset, equal=False)
    raise ValueError(f"no local {period} s boundary found after {instant} in {tz}")


def _clock_span(window: Window, period: int, now: datetime, tz: tzinfo) -> WindowSpan:
    start = _boundary_at_or_before(math.floor(now.timestamp()), period, tz)
    end = _boundary_after(start, period, tz)
    window_id = datetime.fromtimestamp(start, tz).isoformat(timespec="minutes")
    return WindowSpan(window, window_id, start, end)


def window_span(window: Window, now: datetime, tz: tzinfo) -> WindowSpan:
    """The window of kind ``window`` that contains the aware instant ``now``."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if window is Window.MINUTE:
        return _clock_span(window, 60, now, tz)
    if window is Window.HOUR:
        return _clock_span(window, 3600, now, tz)
    local = now.astimezone(tz)
    if window is Window.DAY:
        start_dt = _local_midnight(local.year, local.month, local.day, tz)
        following = (start_dt.replace(tzinfo=None) + timedelta(days=1)).date()
        end_dt = _local_midnight(following.year, following.month, following.day, tz)
        return WindowSpan(window, start_dt.date().isoformat(), int(start_dt.timestamp()), int(end_dt.timestamp()))
    start_dt = _local_midnight(local.year, local.month, 1, tz)
    year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
    end_dt = _local_midnight(year, month, 1, tz)
    return WindowSpan(window, f"{local.year:04d}-{local.month:02d}", int(start_dt.timestamp()), int(end_dt.timestamp()))


_CURRENT: dict[tuple[Window, tzinfo], WindowSpan] = {}


def current_span(window: Window, now: datetime, tz: tzinfo) -> WindowSpan:
    """:func:`window_span`, remembered until the window ends: the calendar maths runs once
    per window and zone, not once per request. Correct for any clock, also one that moves
    backwards (a remembered span is used only while it contains ``now``)."""
    instant = now.timestamp()
    span = _CURRENT.get((window, tz))
    if span is None or not span.start <= instant < span.end:
        span = window_span(window, now, tz)
        _CURRENT[(window, tz)] = span
    return span
