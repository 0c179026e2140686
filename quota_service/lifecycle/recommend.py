"""Recommend: caps from the recorded distribution of daily usage, promotion and demotion
candidates. Suggestions only: nothing here changes a tier, a cap or an override (an admin
applies them: ``quotactl tier set``, a policy edit). Pure: no I/O; the ledger's daily
totals and signals come from :mod:`quota_service.lifecycle.usage_queries`.

The rules (every number behind a suggestion is in it):

* **Caps**, per tier and metric: the daily totals of every (subject, day) with usage of the
  metric in the period (recorded as the tier), sorted; the suggested daily cap is the
  nearest-rank percentile (the value at rank ``ceil(p / 100 * n)``), compared with the
  tier's daily cap now (0: it has none).
* **Promotion**: a subject at WARN or BLOCK on at least ``promote_min_days`` days of the
  period: a day with a THRESHOLD_CROSSED event (warn line, block line or cap) of one of its
  limits, or a DENIED record by a limit (``BLOCK_THRESHOLD``, ``LIMIT_EXCEEDED``,
  ``HARD_STOP``). Suggested: the next tier in the policy's order.
* **Demotion**: a subject of any tier but the policy's first, with usage in the period,
  none of the promotion signals, whose usage stayed below ``demote_below`` of every daily
  cap of its tier on every day of the period (days without usage count as 0). Suggested:
  the previous tier. Tiers without a daily cap have no demotion candidates (nothing to
  compare with).

A subject's tier is the one on its latest record in the period. Amounts are units
(micro-dollars for ``cost_usd``); days are day numbers (days since the epoch in the
policy's timezone, as the queries count them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo

from quota_service.errors import InvalidRequest
from quota_service.policy.compiled import CompiledPolicy, LimitKind, Tier
from quota_service.policy.windows import Window

__all__ = [
    "DEFAULT_DAYS",
    "DEFAULT_DEMOTE_BELOW",
    "DEFAULT_PERCENTILE",
    "DEFAULT_PROMOTE_MIN_DAYS",
    "MAX_DAYS",
    "CapSuggestion",
    "DailyTotal",
    "DaySignal",
    "Period",
    "Recommendation",
    "SubjectSuggestion",
    "nearest_rank",
    "period",
    "recommend",
    "recommend_options",
]

DEFAULT_DAYS = 14
MAX_DAYS = 366
DEFAULT_PERCENTILE = 95.0
DEFAULT_PROMOTE_MIN_DAYS = 3
DEFAULT_DEMOTE_BELOW = 0.2


@dataclass(frozen=True, slots=True)
class DailyTotal:
    """One subject's usage on one day, recorded as ``tier``: units per metric."""

    tier: str
    subject: str
    day: int
    totals: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class DaySignal:
    """A subject's day at WARN or BLOCK: ``crossed`` THRESHOLD_CROSSED events, ``denied``
    DENIED records by a limit."""

    subject: str
    tier: str
    day: int
    crossed: int = 0
    denied: int = 0


@dataclass(frozen=True, slots=True)
class CapSuggestion:
    tier: str
    metric: str
    active_subjects: int
    subject_days: int
    p50: int
    at_percentile: int
    max: int
    current_cap: int  # 0: no daily cap
    days_over_suggested: float

    @property
    def suggested_cap(self) -> int:
        return self.at_percentile

    @property
    def change(self) -> float:
        return self.suggested_cap / self.current_cap - 1 if self.current_cap else 0.0


@dataclass(frozen=True, slots=True)
class SubjectSuggestion:
    subject: str
    tier: str
    suggested_tier: str  # "": none (already the top, or the bottom)
    days: int
    active_days: int
    denied: int
    peak_ratio: float
    peak_metric: str
    rule: str


@dataclass(frozen=True, slots=True)
class Recommendation:
    percentile: float
    days: int
    first_day: int
    promote_min_days: int
    demote_below: float
    caps: tuple[CapSuggestion, ...] = ()
    promotions: tuple[SubjectSuggestion, ...] = ()
    demotions: tuple[SubjectSuggestion, ...] = ()


def recommend_options(
    percentile: float, days: int, promote_min_days: int, demote_below: float
) -> tuple[float, int, int, float]:
    """The request's options with their defaults for 0; :class:`InvalidRequest` out of range."""
    percentile = percentile or DEFAULT_PERCENTILE
    if not (math.isfinite(percentile) and 0 < percentile <= 100):
        raise InvalidRequest(f"percentile must be in (0, 100], got {percentile!r}")
    days = days or DEFAULT_DAYS
    if not 1 <= days <= MAX_DAYS:
        raise InvalidRequest(f"days must be between 1 and {MAX_DAYS}, got {days}")
    promote_min_days = promote_min_days or DEFAULT_PROMOTE_MIN_DAYS
    if promote_min_days > days:
        raise InvalidRequest(f"promote_min_days ({promote_min_days}) cannot exceed days ({days})")
    demote_below = demote_below or DEFAULT_DEMOTE_BELOW
    if not (math.isfinite(demote_below) and 0 < demote_below <= 1):
        raise InvalidRequest(f"demote_below must be in (0, 1], got {demote_below!r}")
    return percentile, days, promote_min_days, demote_below


DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class Period:
    """The last ``days`` calendar days ending with today: day numbers ``[first_day,
    first_day + days)`` and unix ms ``[since_ms, until_ms)``; a day number is
    ``(at_ms + offset_ms) // DAY_MS`` (``offset_ms``: the policy timezone's UTC offset now:
    a day beside a DST change is an hour off, as in the dashboard's analytics)."""

    first_day: int
    days: int
    since_ms: int
    until_ms: int
    offset_ms: int


def period(timezone: tzinfo, now: datetime, days: int) -> Period:
    offset = now.astimezone(timezone).utcoffset()
    offset_ms = int(offset.total_seconds() * 1000) if offset is not None else 0
    now_ms = int(now.timestamp() * 1000)
    today = (now_ms + offset_ms) // DAY_MS
    first = today - days + 1
    return Period(first, days, first * DAY_MS - offset_ms, (today + 1) * DAY_MS - offset_ms, offset_ms)


def nearest_rank(ordered: Sequence[int], percentile: float) -> int:
    """The value at rank ``ceil(percentile / 100 * n)`` of ``ordered`` (ascending); 0 when empty."""
    if not ordered:
        return 0
    rank = max(1, math.ceil(percentile / 100 * len(ordered) - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def daily_caps(tier: Tier) -> dict[str, int]:
    """The tier's daily cap per metric (its tier limits and hard stops: the lowest)."""
    caps: dict[str, int] = {}
    for limit in (*tier.limits, *tier.hard_stops):
        if limit.window is Window.DAY and limit.kind in (LimitKind.TIER, LimitKind.HARD_STOP):
            caps[limit.metric] = min(caps.get(limit.metric, limit.max_units), limit.max_units)
    return caps


@dataclass
class _Subject:
    tier: str = ""
    last_day: int = -1
    active_days: set[int] = field(default_factory=set)
    flagged_days: set[int] = field(default_factory=set)
    denied: int = 0
    peaks: dict[str, int] = field(default_factory=dict)  # metric -> highest daily total (its tier)


def recommend(
    policy: CompiledPolicy,
    daily: Iterable[DailyTotal],
    signals: Iterable[DaySignal],
    *,
    first_day: int,
    days: int = DEFAULT_DAYS,
    percentile: float = DEFAULT_PERCENTILE,
    promote_min_days: int = DEFAULT_PROMOTE_MIN_DAYS,
    demote_below: float = DEFAULT_DEMOTE_BELOW,
    tier: str = "",
) -> Recommendation:
    """See the module docstring. ``first_day``: the period's first day number; rows outside
    ``[first_day, first_day + days)`` are ignored. ``tier`` ``""``: every tier."""
    last_day = first_day + days
    rows = [row for row in daily if first_day <= row.day < last_day]
    order = list(policy.tiers)
    values: dict[tuple[str, str], list[int]] = {}
    active: dict[tuple[str, str], set[str]] = {}
    subjects: dict[str, _Subject] = {}
    totals_by_subject: dict[str, list[DailyTotal]] = {}
    for row in rows:
        totals_by_subject.setdefault(row.subject, []).append(row)
        state = subjects.setdefault(row.subject, _Subject())
        if row.day >= state.last_day:
            state.tier, state.last_day = row.tier, row.day
        for metric, total in row.totals.items():
            if total <= 0:
                continue
            state.active_days.add(row.day)
            values.setdefault((row.tier, metric), []).append(total)
            active.setdefault((row.tier, metric), set()).add(row.subject)
    for signal in signals:
        if not first_day <= signal.day < last_day:
            continue
        state = subjects.setdefault(signal.subject, _Subject())
        if signal.day >= state.last_day and signal.tier:
            state.tier, state.last_day = signal.tier, signal.day
        if signal.crossed or signal.denied:
            state.flagged_days.add(signal.day)
        state.denied += signal.denied

    caps: list[CapSuggestion] = []
    for tier_name, metric in sorted(values):
        if tier and tier_name != tier:
            continue
        ordered = sorted(values[(tier_name, metric)])
        known = policy.tiers.get(tier_name)
        current = daily_caps(known).get(metric, 0) if known else 0
        suggested = nearest_rank(ordered, percentile)
        caps.append(
            CapSuggestion(
                tier=tier_name,
                metric=metric,
                active_subjects=len(active[(tier_name, metric)]),
                subject_days=len(ordered),
                p50=nearest_rank(ordered, 50),
                at_percentile=suggested,
                max=ordered[-1],
                current_cap=current,
                days_over_suggested=sum(1 for v in ordered if v > suggested) / len(ordered),
            )
        )

    promotions: list[SubjectSuggestion] = []
    demotions: list[SubjectSuggestion] = []
    for subject, state in sorted(subjects.items()):
        if tier and state.tier != tier:
            continue
        known = policy.tiers.get(state.tier)
        caps_now = daily_caps(known) if known else {}
        peak_ratio, peak_metric = 0.0, ""
        for row in totals_by_subject.get(subject, ()):
            if row.tier != state.tier:
                continue
            for metric, total in row.totals.items():
                cap = caps_now.get(metric)
                if cap:
                    ratio = total / cap
                    if ratio > peak_ratio:
                        peak_ratio, peak_metric = ratio, metric
        position = order.index(state.tier) if state.tier in order else -1
        flagged = len(state.flagged_days)
        if flagged >= promote_min_days:
            up = order[position + 1] if 0 <= position < len(order) - 1 else ""
            promotions.append(
                SubjectSuggestion(
                    subject,
                    state.tier,
                    up,
                    flagged,
                    len(state.active_days),
                    state.denied,
                    peak_ratio,
                    peak_metric,
                    f"at WARN or BLOCK on {flagged} of the last {days} days (>= {promote_min_days})"
                    + ("" if up else "; already the top tier: consider an override"),
                )
            )
        elif position > 0 and caps_now and state.active_days and not flagged and peak_ratio < demote_below:
            demotions.append(
                SubjectSuggestion(
                    subject,
                    state.tier,
                    order[position - 1],
                    days,
                    len(state.active_days),
                    state.denied,
                    peak_ratio,
                    peak_metric,
                    f"below {demote_below:.0%} of every daily cap on each of the last {days} days "
                    f"(peak {peak_ratio:.1%}{' of ' + peak_metric if peak_metric else ''})",
                )
            )
    promotions.sort(key=lambda s: (-s.days, -s.peak_ratio, s.subject))
    demotions.sort(key=lambda s: (s.peak_ratio, s.subject))
    return Recommendation(
        percentile, days, first_day, promote_min_days, demote_below, tuple(caps), tuple(promotions), tuple(demotions)
    )
