"""A plan's limits as short text, kept with a request's first answer: replays are answered
from it, never re-judged under a later policy, tier or override. Pure; no I/O.

The store keeps the text with the request_id's recorded answer (``ReserveCommand.answer``)
and hands it back, unchanged, on every replay, with the request's recorded estimate and
rates (``ReserveResult.recorded_estimate`` / ``recorded_rates``); :func:`decode` rebuilds
the counters, asks and limits the first decision was made on, and the engine explains the
recorded verdict from them and the recorded counter values, so a replay gets the
identical answer.

The text is **plan-level**: the same for every request of a subject planned in the same
windows under the same policy, tier and overrides, whatever it asks. The store keeps one
copy per subject and distinct text (content-addressed), so nothing per request may be in
it: not the request's time, not its asks (those come from the request's own record).

Format, version 2: fields separated by one space::

    2 <since> <timezone> <tier> <policy_version> <warn_at>/<block_at> <group> [<group> ...]

* ``since``: the start (unix seconds) of the shortest window among the plan's counters
  (``-`` when it has none). Calendar windows nest (a minute in an hour in a day in a month,
  in the policy's zone ``timezone``, an IANA key; also where the offset changes by 30
  minutes): every counter's window computed from ``since`` is the one computed from the
  time the plan was made for, so it gives every counter's window id and reset time again.
* ``warn_at``/``block_at``: the thresholds of tier and override limits that carry none of
  their own (``-/-`` when no limit has thresholds).
* ``group``: ``<metric>:<counter>[,<counter> ...]``: consecutive counters of one metric, in
  the plan's order (the subject's counters, then the company-wide ones), which the
  answer's limits keep. Each counter's ask is the recorded estimate of its metric, or for
  ``cost_usd`` the estimate priced at the recorded rates
  (:func:`~quota_service.policy.compiled.micros_at`, as the first plan priced it).
* ``counter``: a window code (``I`` minute, ``H`` hour, ``D`` day, ``M`` month), then its
  limits, each a kind code (``t`` tier, ``o`` override, ``h`` hard stop, ``g`` company-wide)
  and ``max_units``, optionally followed by ``~`` (no thresholds) or ``@<warn_at>/<block_at>``
  (its own). Without a suffix, ``t``/``o`` limits carry the header thresholds and ``h``/``g``
  none. A counter whose limits are ``g`` is a company-wide counter, any other the subject's.

The free tier's text request on a priced model is about 110 bytes (one line)::

    2 1764460800 UTC free_alpha 3f2a9c0d1e4b5a69 0.8/0.95 tokens:Dt1000h1000
    cost_usd:Mt10000000,Dh5000000,Dg200000000
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from quota_service.policy.compiled import Limit, LimitKind, Thresholds, micros_at
from quota_service.policy.domain import GLOBAL_SCOPE, CounterRef
from quota_service.policy.engine import CounterPlan, Plan
from quota_service.policy.units import COST_METRIC, METRIC_NAME
from quota_service.policy.windows import WINDOW_ORDER, Window, current_span, window_span

__all__ = ["FORMAT_VERSION", "RecordedPlan", "ReplayFormatError", "decode", "encode", "since_of"]

FORMAT_VERSION = "2"

_WINDOW_CODE = {Window.MINUTE: "I", Window.HOUR: "H", Window.DAY: "D", Window.MONTH: "M"}
_WINDOW_OF = {code: window for window, code in _WINDOW_CODE.items()}
_KIND_CODE = {LimitKind.TIER: "t", LimitKind.OVERRIDE: "o", LimitKind.HARD_STOP: "h", LimitKind.GLOBAL: "g"}
_KIND_OF = {code: kind for kind, code in _KIND_CODE.items()}
#: Kinds that carry the header thresholds unless a limit says otherwise.
_THRESHOLDED = frozenset({LimitKind.TIER, LimitKind.OVERRIDE})
_NO_THRESHOLDS = "-/-"
_NO_COUNTERS = "-"
_LIMIT = re.compile(r"([tohg])(0|[1-9][0-9]*)(~|@[0-9./]+)?")
_UNITS = re.compile(r"0|[1-9][0-9]*")
_NAME = re.compile(r"[^\s]+")


class ReplayFormatError(ValueError):
    """The recorded text is not a plan this module wrote (damaged, or an unknown version),
    or the recorded estimate does not give its counters' asks."""


@dataclass(frozen=True, slots=True)
class RecordedPlan:
    """What the first decision of a request was made on. ``counters``: the subject's
    counters, then the company-wide ones, each with its ask (from the recorded estimate
    and rates) and limits. ``since``: the start of the shortest of their windows."""

    tier: str
    policy_version: str
    since: int
    counters: tuple[CounterPlan, ...]
    estimate: Mapping[str, int]
    rates: Mapping[str, Decimal]

    def plan_for(self, plan: Plan) -> Plan:
        """``plan`` (the request as it came this time, at its time: a DENY's
        ``retry_after_seconds`` counts from now) with the recorded counters, estimate and
        rates."""
        return Plan(
            plan.request,
            plan.tier,
            counters=tuple(c for c in self.counters if c.ref.scope != GLOBAL_SCOPE),
            global_counters=tuple(c for c in self.counters if c.ref.scope == GLOBAL_SCOPE),
            ttl_seconds=plan.ttl_seconds,
            now=plan.now,
            estimate=self.estimate,
            rates=self.rates,
            cost=micros_at(self.rates, self.estimate),
        )


def _decimal_text(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _thresholds_text(thresholds: Thresholds) -> str:
    return f"{_decimal_text(thresholds.warn_at)}/{_decimal_text(thresholds.block_at)}"


def since_of(counters: tuple[CounterPlan, ...], now: int, tz: tzinfo) -> int | None:
    """The start of the shortest window among ``counters`` (planned at unix second ``now``
    in ``tz``), ``None`` without counters. Every counter's window computed from it is the
    one computed from ``now`` (windows nest); :func:`encode` checks it for each counter."""
    windows = {c.ref.window for c in counters}
    shortest = next((w for w in WINDOW_ORDER if w in windows), None)
    if shortest is None:
        return None
    return current_span(shortest, datetime.fromtimestamp(now, UTC), tz).start


def encode(plan: Plan, *, policy_version: str, timezone: str) -> str:
    """The text for ``plan`` (one that reserves: no ``denial``, a tier). ``timezone``: the
    IANA key of the policy's zone, in which the plan's windows were computed. Nothing of
    the request's own (its time, its asks) is in it: see the module docstring."""
    if plan.tier is None or plan.denial is not None:
        raise ValueError("only a plan that goes to the store is recorded")
    counters = plan.all_counters
    tz = ZoneInfo(timezone)
    since = since_of(counters, plan.now, tz)
    if since is not None:
        instant = datetime.fromtimestamp(since, UTC)
        for counter in counters:
            span = current_span(counter.ref.window, instant, tz)
            if (span.window_id, span.end) != (counter.ref.window_id, counter.ref.resets_at):
                raise ValueError(f"the windows of {counter.ref} do not nest in the plan's shortest window")
    header = next((limit.thresholds for c in counters for limit in c.limits if limit.thresholds), None)
    fields = [
        FORMAT_VERSION,
        _NO_COUNTERS if since is None else str(since),
        timezone,
        plan.tier.name,
        policy_version or "-",
        _thresholds_text(header) if header else _NO_THRESHOLDS,
    ]
    groups: list[tuple[str, list[str]]] = []  # consecutive counters of one metric share a group
    for counter in counters:
        metric = counter.ref.metric
        text = _WINDOW_CODE[counter.ref.window]
        for limit in counter.limits:
            text += _KIND_CODE[limit.kind] + str(limit.max_units)
            default = header if limit.kind in _THRESHOLDED else None
            if limit.thresholds != default:
                text += "~" if limit.thresholds is None else "@" + _thresholds_text(limit.thresholds)
        if groups and groups[-1][0] == metric:
            groups[-1][1].append(text)
        else:
            groups.append((metric, [text]))
    fields += [f"{metric}:{','.join(texts)}" for metric, texts in groups]
    return " ".join(fields)


def _units(text: str, what: str) -> int:
    if not _UNITS.fullmatch(text):
        raise ReplayFormatError(f"{what} {text!r} is not a whole number of units")
    return int(text)


def _thresholds(text: str) -> Thresholds | None:
    if text == _NO_THRESHOLDS:
        return None
    warn, sep, block = text.partition("/")
    try:
        if not sep:
            raise InvalidOperation
        thresholds = Thresholds(Decimal(warn), Decimal(block))
    except InvalidOperation:
        raise ReplayFormatError(f"thresholds {text!r} are not warn_at/block_at") from None
    if not 0 < thresholds.warn_at <= thresholds.block_at <= 1:
        raise ReplayFormatError(f"thresholds {text!r} are out of range")
    return thresholds


def _limits(metric: str, window: Window, text: str, header: Thresholds | None) -> tuple[Limit, ...]:
    limits: list[Limit] = []
    at = 0
    while at < len(text):
        match = _LIMIT.match(text, at)
        if match is None:
            raise ReplayFormatError(f"limit text {text[at:]!r} of {metric}/{window.value} is not valid")
        kind = _KIND_OF[match[1]]
        suffix = match[3]
        if suffix is None:
            thresholds = header if kind in _THRESHOLDED else None
        elif suffix == "~":
            thresholds = None
        else:
            thresholds = _thresholds(suffix[1:])
            if thresholds is None:
                raise ReplayFormatError(f"limit {match[0]!r} names no thresholds")
        limits.append(Limit(metric, window, int(match[2]), kind, thresholds))
        at = match.end()
    if not limits:
        raise ReplayFormatError(f"counter {metric}/{window.value} has no limit")
    if len({limit.kind is LimitKind.GLOBAL for limit in limits}) != 1:
        raise ReplayFormatError(f"counter {metric}/{window.value} mixes company-wide and subject limits")
    return tuple(limits)


def _recorded_rates(rates: Mapping[str, str]) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for metric, text in rates.items():
        try:
            rate = Decimal(text)
        except InvalidOperation:
            raise ReplayFormatError(f"recorded rate {text!r} of {metric} is not a decimal") from None
        if not rate.is_finite() or rate < 0:
            raise ReplayFormatError(f"recorded rate {text!r} of {metric} is not a price")
        out[metric] = rate
    return out


def _asks(estimate: Mapping[str, int], rates: Mapping[str, Decimal]) -> dict[str, int]:
    """Every metric's ask as the first plan computed it: the estimate, and its cost."""
    asks = {metric: units for metric, units in estimate.items() if metric != COST_METRIC}
    cost = micros_at(rates, asks)
    if cost:
        asks[COST_METRIC] = cost
    return asks


def decode(text: str, *, subject: str, estimate: Mapping[str, int], rates: Mapping[str, str]) -> RecordedPlan:
    """The plan :func:`encode` wrote, for ``subject``'s counters, with the asks of the
    request's recorded ``estimate`` (units per metric) and ``rates`` (USD per unit, exact
    decimal strings). Raises :class:`ReplayFormatError` for anything else, and when the
    estimate gives a counter no ask (never a partial plan)."""
    fields = text.split(" ")
    if len(fields) < 6 or fields[0] != FORMAT_VERSION:
        raise ReplayFormatError(f"not a version {FORMAT_VERSION} recorded plan: {text[:40]!r}")
    _, since_text, zone, tier, version, header_text, *groups = fields
    if not (_NAME.fullmatch(tier) and _NAME.fullmatch(version)):
        raise ReplayFormatError("tier and policy version must be names")
    try:
        tz = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ReplayFormatError(f"unknown timezone {zone!r}") from None
    header = _thresholds(header_text)
    if since_text == _NO_COUNTERS:
        if groups:
            raise ReplayFormatError("a plan with counters names no window start")
        since = 0
    else:
        since = _units(since_text, "since")
        if not groups:
            raise ReplayFormatError("a plan without counters names a window start")
    instant = datetime.fromtimestamp(since, UTC)
    decimal_rates = _recorded_rates(rates)
    asks = _asks(estimate, decimal_rates)
    counters: list[CounterPlan] = []
    seen: set[tuple[str, str, Window]] = set()
    for group in groups:
        metric, sep, body = group.partition(":")
        if not (sep and METRIC_NAME.match(metric) and body):
            raise ReplayFormatError(f"group {group[:40]!r} is not metric:counters")
        ask = asks.get(metric, 0)
        if ask <= 0:
            raise ReplayFormatError(f"the recorded estimate gives {metric} no ask")
        for counter_text in body.split(","):
            window = _WINDOW_OF.get(counter_text[:1])
            if window is None:
                raise ReplayFormatError(f"counter {counter_text[:20]!r} of {metric} has no window code")
            limits = _limits(metric, window, counter_text[1:], header)
            scope = GLOBAL_SCOPE if limits[0].kind is LimitKind.GLOBAL else subject
            if (scope, metric, window) in seen:
                raise ReplayFormatError(f"counter {metric}/{window.value} appears twice")
            seen.add((scope, metric, window))
            span = window_span(window, instant, tz)
            ref = CounterRef(scope, metric, window, span.window_id, span.end)
            if scope != GLOBAL_SCOPE and counters and counters[-1].ref.scope == GLOBAL_SCOPE:
                raise ReplayFormatError(f"subject counter {metric}/{window.value} after a company-wide one")
            counters.append(CounterPlan(ref, ask, limits))
    if counters:
        shortest = next(w for w in WINDOW_ORDER if any(c.ref.window is w for c in counters))
        if window_span(shortest, instant, tz).start != since:
            raise ReplayFormatError(f"{since} is not the start of a {shortest.value} window in {zone}")
    return RecordedPlan(tier, "" if version == "-" else version, since, tuple(counters), dict(estimate), decimal_rates)
