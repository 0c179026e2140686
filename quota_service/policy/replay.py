"""A plan's limits as short text, kept with a request's first answer: replays are answered
from it, never re-judged under a later policy, tier or override. Pure; no I/O.

The store keeps the text with the request_id's recorded answer (``ReserveCommand.answer``)
and hands it back, unchanged, on every replay; :func:`decode` rebuilds the counters and
limits the first decision was made on, and the engine explains the recorded verdict from
them and the recorded counter values, so a replay gets the identical answer.

Format, version 1: fields separated by one space::

    1 <now> <timezone> <tier> <policy_version> <warn_at>/<block_at> <group> [<group> ...]

* ``now``: unix seconds the plan was made for; with ``timezone`` (an IANA key) it gives
  every counter's window id and reset time again.
* ``warn_at``/``block_at``: the thresholds of tier and override limits that carry none of
  their own (``-/-`` when no limit has thresholds).
* ``group``: ``<metric>=<ask>:<counter>[,<counter> ...]``: consecutive counters of one
  metric (``ask`` in units, micro-dollars for ``cost_usd``), in the plan's order (the
  subject's counters, then the company-wide ones), which the answer's limits keep.
* ``counter``: a window code (``I`` minute, ``H`` hour, ``D`` day, ``M`` month), then its
  limits, each a kind code (``t`` tier, ``o`` override, ``h`` hard stop, ``g`` company-wide)
  and ``max_units``, optionally followed by ``~`` (no thresholds) or ``@<warn_at>/<block_at>``
  (its own). Without a suffix, ``t``/``o`` limits carry the header thresholds and ``h``/``g``
  none. A counter whose limits are ``g`` is a company-wide counter, any other the subject's.

The free tier's text request on a priced model is about 120 bytes (one line)::

    1 1764460740 UTC free_alpha 3f2a9c0d1e4b5a69 0.8/0.95 tokens=500:Dt1000h1000
    cost_usd=300:Mt10000000,Dh5000000,Dg200000000
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from quota_service.policy.compiled import Limit, LimitKind, Thresholds
from quota_service.policy.domain import GLOBAL_SCOPE, CounterRef
from quota_service.policy.engine import CounterPlan, Plan
from quota_service.policy.units import METRIC_NAME
from quota_service.policy.windows import Window, window_span

__all__ = ["FORMAT_VERSION", "RecordedPlan", "ReplayFormatError", "decode", "encode"]

FORMAT_VERSION = "1"

_WINDOW_CODE = {Window.MINUTE: "I", Window.HOUR: "H", Window.DAY: "D", Window.MONTH: "M"}
_WINDOW_OF = {code: window for window, code in _WINDOW_CODE.items()}
_KIND_CODE = {LimitKind.TIER: "t", LimitKind.OVERRIDE: "o", LimitKind.HARD_STOP: "h", LimitKind.GLOBAL: "g"}
_KIND_OF = {code: kind for kind, code in _KIND_CODE.items()}
#: Kinds that carry the header thresholds unless a limit says otherwise.
_THRESHOLDED = frozenset({LimitKind.TIER, LimitKind.OVERRIDE})
_NO_THRESHOLDS = "-/-"
_LIMIT = re.compile(r"([tohg])(0|[1-9][0-9]*)(~|@[0-9./]+)?")
_UNITS = re.compile(r"0|[1-9][0-9]*")
_NAME = re.compile(r"[^\s]+")


class ReplayFormatError(ValueError):
    """The recorded text is not a plan this module wrote (damaged, or an unknown version)."""


@dataclass(frozen=True, slots=True)
class RecordedPlan:
    """What the first decision of a request was made on. ``counters``: the subject's
    counters, then the company-wide ones, each with its ask and limits."""

    tier: str
    policy_version: str
    now: int
    counters: tuple[CounterPlan, ...]

    def plan_for(self, plan: Plan) -> Plan:
        """``plan`` (the request as it came this time) with the recorded counters and time."""
        return Plan(
            plan.request,
            plan.tier,
            counters=tuple(c for c in self.counters if c.ref.scope != GLOBAL_SCOPE),
            global_counters=tuple(c for c in self.counters if c.ref.scope == GLOBAL_SCOPE),
            ttl_seconds=plan.ttl_seconds,
            now=self.now,
            estimate=plan.estimate,
            rates=plan.rates,
            cost=plan.cost,
        )


def _decimal_text(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _thresholds_text(thresholds: Thresholds) -> str:
    return f"{_decimal_text(thresholds.warn_at)}/{_decimal_text(thresholds.block_at)}"


def encode(plan: Plan, *, policy_version: str, timezone: str) -> str:
    """The text for ``plan`` (one that reserves: no ``denial``, a tier). ``timezone``: the
    IANA key of the policy's zone, in which the plan's windows were computed."""
    if plan.tier is None or plan.denial is not None:
        raise ValueError("only a plan that goes to the store is recorded")
    counters = plan.all_counters
    header = next((limit.thresholds for c in counters for limit in c.limits if limit.thresholds), None)
    fields = [
        FORMAT_VERSION,
        str(plan.now),
        timezone,
        plan.tier.name,
        policy_version or "-",
        _thresholds_text(header) if header else _NO_THRESHOLDS,
    ]
    groups: list[tuple[str, list[str]]] = []  # consecutive counters of one metric share a group
    asks: dict[str, int] = {}
    for counter in counters:
        metric = counter.ref.metric
        if asks.setdefault(metric, counter.ask) != counter.ask:
            raise ValueError(f"two asks for {metric}: {asks[metric]} and {counter.ask}")
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
    fields += [f"{metric}={asks[metric]}:{','.join(texts)}" for metric, texts in groups]
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


def decode(text: str, *, subject: str) -> RecordedPlan:
    """The plan :func:`encode` wrote, for ``subject``'s counters. Raises
    :class:`ReplayFormatError` for anything else (never a partial plan)."""
    fields = text.split(" ")
    if len(fields) < 6 or fields[0] != FORMAT_VERSION:
        raise ReplayFormatError(f"not a version {FORMAT_VERSION} recorded plan: {text[:40]!r}")
    _, now_text, zone, tier, version, header_text, *groups = fields
    now = _units(now_text, "now")
    if not (_NAME.fullmatch(tier) and _NAME.fullmatch(version)):
        raise ReplayFormatError("tier and policy version must be names")
    try:
        tz = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ReplayFormatError(f"unknown timezone {zone!r}") from None
    header = _thresholds(header_text)
    instant = datetime.fromtimestamp(now, UTC)
    counters: list[CounterPlan] = []
    seen: set[tuple[str, str, Window]] = set()
    asks: dict[str, int] = {}
    for group in groups:
        head, sep, body = group.partition(":")
        metric, eq, ask_text = head.partition("=")
        if not (sep and eq and METRIC_NAME.match(metric) and body):
            raise ReplayFormatError(f"group {group[:40]!r} is not metric=ask:counters")
        ask = _units(ask_text, f"ask of {metric}")
        if asks.setdefault(metric, ask) != ask:
            raise ReplayFormatError(f"two asks for {metric}")
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
    return RecordedPlan(tier, "" if version == "-" else version, now, tuple(counters))
