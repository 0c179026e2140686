"""Calendar windows: ``minute``, ``hour``, ``day`` and ``month`` in the policy's timezone.

A window is identified by its start. Day and month windows begin at local midnight and
on the 1st of the month in the policy's timezone (DST-aware: a local day can last 23 or
25 hours); minute and hour windows begin on the local minute and hour.

Window ids appear in Redis keys (``q:{subject}:tokens:day:2026-11-24``):

* ``day``    -> ``2026-11-24``
* ``month``  -> ``2026-11``
* ``hour``   -> ``2026-11-24T13:00+01:00``   (the offset keeps DST's repeated hour apart)
* ``minute`` -> ``2026-11-24T13:05+01:00``
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo


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


def window_span(window: Window, now: datetime, tz: tzinfo) -> WindowSpan:
    """The window of kind ``window`` that contains the aware instant ``now``."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    local = now.astimezone(tz)
    if window is Window.MINUTE:
        start_dt = local.replace(second=0, microsecond=0)
        start = int(start_dt.timestamp())
        return WindowSpan(window, start_dt.isoformat(timespec="minutes"), start, start + 60)
    if window is Window.HOUR:
        start_dt = local.replace(minute=0, second=0, microsecond=0)
        start = int(start_dt.timestamp())
        return WindowSpan(window, start_dt.isoformat(timespec="minutes"), start, start + 3600)
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
