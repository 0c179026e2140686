"""How ``quotactl`` shows values to an operator: pure functions, no I/O.

* money (the ``cost_usd`` metric): ``$1,234.50``: at least 2 decimals, at most 6 (the
  service keeps whole micro-dollars, so nothing is lost), thousands separated;
* counted metrics (``tokens``, ``images``, ...): ``12,000``;
* ratios: ``94.0%`` (truncated to 0.1 %);
* times: ISO-8601 in UTC, ``2026-11-24T00:00:00Z``; ``0`` (the protocol's "none") shows as
  a caller-chosen word such as ``never``;
* tables: left-aligned text, right-aligned numbers, two spaces between columns, no
  trailing blanks;
* free text (reasons, subjects, targets, actors, messages, names): :func:`visible`, in
  every table cell, field value and sentence, so a value can neither forge a row nor reach
  the terminal as a control sequence. ``--json`` output needs none of it: JSON escapes
  every control and non-ASCII character (``ensure_ascii``), and keeps the value exact.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal

from quota_service.escaping import visible
from quota_service.policy.messages import format_usd

MONEY_METRIC = "cost_usd"
_MICRO = Decimal("0.000001")
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$", re.IGNORECASE)
_SECONDS_PER = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: Unicode categories never shown raw: controls (C0, DEL, C1), format characters (bidi
#: embeddings, overrides and isolates, zero-width characters, soft hyphen, BOM, tags),
#: line and paragraph separators, surrogates.


def money(usd: float) -> str:
    """``1.5`` -> ``$1.50``, ``0.0006`` -> ``$0.0006``, ``-2`` -> ``-$2.00``.

    Rounded to whole micro-dollars (the service's own unit), so a float's binary noise
    (``1.0000000000000002``) never shows; then the service's one money formatter."""
    if not math.isfinite(usd):
        return str(usd)
    micros = int(Decimal(repr(usd)).quantize(_MICRO, rounding=ROUND_HALF_EVEN) * 1_000_000)
    return format_usd(micros)


def count(value: float) -> str:
    """``12000`` -> ``12,000``; a fractional value keeps up to 6 decimals."""
    if not math.isfinite(value):
        return str(value)
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:,.6f}".rstrip("0").rstrip(".")


def amount(metric: str, value: float) -> str:
    """``value`` in the unit of ``metric``: money for ``cost_usd``, a count otherwise."""
    return money(value) if metric == MONEY_METRIC else count(value)


def percent(ratio: float) -> str:
    """``0.94`` -> ``94.0%``; ``-`` when there is no meaningful ratio (NaN, infinite).

    Truncated, never rounded up, so a subject at 94.99 % never shows the 95.0 % of a block
    threshold it has not reached."""
    if not math.isfinite(ratio):
        return "-"
    shown = (Decimal(repr(ratio)) * 100).quantize(Decimal("0.1"), rounding=ROUND_DOWN)
    return f"{shown}%"


def timestamp(unix_seconds: int, *, zero: str = "-") -> str:
    """Unix seconds as ISO-8601 UTC (``2026-11-24T00:00:00Z``); ``zero`` for ``0``."""
    if unix_seconds == 0:
        return zero
    return datetime.fromtimestamp(unix_seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def timestamp_ms(unix_ms: int, *, zero: str = "-") -> str:
    """Unix milliseconds as ISO-8601 UTC with milliseconds (``2026-11-24T00:00:00.123Z``)."""
    if unix_ms == 0:
        return zero
    moment = datetime.fromtimestamp(unix_ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{unix_ms % 1000:03d}Z"


def duration(seconds: int) -> str:
    """``5400`` -> ``1h30m``; ``0`` -> ``0s``. Whole seconds, largest units first."""
    if seconds <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        whole, seconds = divmod(seconds, size)
        if whole:
            parts.append(f"{whole}{unit}")
    return "".join(parts)


def parse_duration(text: str) -> int:
    """``"3600"``, ``"90s"``, ``"30m"``, ``"2h"``, ``"7d"``, ``"1w"`` -> whole seconds.

    Raises :class:`ValueError` for anything else (negative, fractional, unknown unit)."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use seconds, or a number with s, m, h, d or w)")
    return int(match.group(1)) * _SECONDS_PER[match.group(2).lower()]


def describe_change(before: str, after: str) -> str:
    """An audit entry's change on one line, from its ``before`` / ``after`` JSON texts.

    ``created_at`` / ``created_by`` keys are left out (the entry's own time and actor say
    it). Two objects with the same keys: only the values that differ,
    ``tier: free_alpha -> basic_alpha``. Nothing before (``null``): ``set {...}``; nothing
    after: ``removed {...}``. Anything else: ``<before> -> <after>`` (compact JSON, or the
    text as it is when it is not JSON)."""
    try:
        old, new = _without_stamps(json.loads(before or "null")), _without_stamps(json.loads(after or "null"))
    except ValueError:
        return f"{before or '-'} -> {after or '-'}"
    if isinstance(old, dict) and isinstance(new, dict) and old.keys() == new.keys():
        changed = [f"{key}: {_value(old[key])} -> {_value(new[key])}" for key in sorted(old) if old[key] != new[key]]
        return "; ".join(changed) or "no change"
    if old is None and new is not None:
        return f"set {_value(new)}"
    if new is None and old is not None:
        return f"removed {_value(old)}"
    return f"{_value(old)} -> {_value(new)}"


def _without_stamps(value: object) -> object:
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in ("created_at", "created_by")}
    return value


def _value(value: object) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[int] = ()) -> str:
    """An aligned text table. ``right``: indexes of the columns to right-align (numbers).
    Every cell is shown through :func:`visible`: one row is always one line.

    Every row must have as many cells as there are headers."""
    shown = [[visible(cell) for cell in row] for row in (headers, *rows)]
    widths = [len(h) for h in shown[0]]
    for row in shown[1:]:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells, table has {len(headers)} columns")
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = []
    for row in shown:
        cells = [
            cell.rjust(width) if index in right else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def fields(pairs: Sequence[tuple[str, str | Sequence[str]]]) -> str:
    """``label  value`` lines with the values aligned. A value is one line, shown through
    :func:`visible` (a newline in it shows as ``\\n``); a value given as a list of lines
    shows its first line next to the label and the others indented to the value column."""
    width = max((len(label) for label, _ in pairs), default=0)
    lines = []
    for label, value in pairs:
        first, *rest = [visible(value)] if isinstance(value, str) else [visible(line) for line in value] or [""]
        lines.append(f"{label.ljust(width)}  {first}".rstrip())
        lines.extend(f"{' ' * (width + 2)}{line}".rstrip() for line in rest)
    return "\n".join(lines)


# --- events ------------------------------------------------------------------------------

#: ``quotactl events`` columns (table and CSV headers).
EVENT_TABLE_HEADERS = ("AT (UTC)", "KIND", "SUBJECT", "TIER", "WHAT", "COST", "ACTOR", "DETAIL")
EVENT_CSV_HEADERS = (
    "id",
    "kind",
    "at",
    "at_ms",
    "subject",
    "tier",
    "feature",
    "provider",
    "model",
    "request_id",
    "reservation_id",
    "estimate",
    "actual",
    "cost_usd",
    "decision",
    "reason",
    "threshold",
    "policy_version",
    "actor",
    "detail",
)
#: Column widths of a followed table (rows are printed as they arrive, so they cannot be
#: aligned on the widest cell): a longer cell widens its row only.
EVENT_FOLLOW_WIDTHS = (24, 17, 16, 12, 28, 10, 18, 0)
_DETAIL_CHARS = 120


def event_what(feature: str, provider: str, model: str) -> str:
    """``feature provider/model`` of a usage record, ``-`` when it has none."""
    target = f"{provider}/{model}" if provider or model else ""
    return " ".join(part for part in (feature, target) if part) or "-"


def event_detail(
    kind: str,
    detail: str,
    reason: str,
    limit_metric: str,
    limit_window: str,
    *,
    threshold: str = "",
    decision: str = "",
    actual: Mapping[str, float] | None = None,
    limit_used: float = 0.0,
    limit_max: float = 0.0,
    limit_kind: str = "",
) -> str:
    """A short text of what an event adds: an admin change as ``Action target: change
    (reason)``, a stop as ``pulled SCOPE:target (reason)``, a crossing as ``WARN tokens/day
    860 of 1000 (86%)``, a usage record as its decision and actual amounts, else the reason
    and the limit."""
    if kind == "THRESHOLD_CROSSED" and limit_metric:
        share = f" ({limit_used / limit_max:.0%})" if limit_max else ""
        line = threshold.removeprefix("THRESHOLD_") or "?"
        whose = f" ({limit_kind.removeprefix('LIMIT_KIND_').lower().replace('_', ' ')})" if limit_kind else ""
        return f"{line}{whose} {limit_metric}/{limit_window} {limit_used:,.0f} of {limit_max:,.0f}{share}"
    if kind in ("COMMITTED", "EXPIRED", "CORRECTED", "RELEASED") and (decision or actual):
        amounts = " ".join(f"{m}={v:,.0f}" for m, v in sorted((actual or {}).items()) if m != "cost_usd")
        return " ".join(part for part in (decision, amounts) if part) or "-"
    try:
        data = json.loads(detail) if detail else None
    except ValueError:
        data = None
    if kind == "SHADOW_DIVERGED" and isinstance(data, dict) and isinstance(data.get("divergence"), str):
        why = reason.removeprefix("REASON_") if reason and reason != "REASON_UNSPECIFIED" else ""
        limit = f"{limit_metric}/{limit_window}" if limit_metric else ""
        text = " ".join(part for part in (f"shadow {data['divergence']}", why, limit) if part)
        return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 1] + "…"
    if isinstance(data, dict) and "action" in data:
        why = f" ({data['reason']})" if data.get("reason") else ""
        if "stop" in data:
            return f"{data['stop']} {data.get('target', '')}{why}"
        change = describe_change(json.dumps(data.get("before")), json.dumps(data.get("after")))
        text = f"{data['action']} {data.get('target', '')}: {change}{why}"
    else:
        parts = [p for p in (reason if reason and reason != "REASON_UNSPECIFIED" else "",) if p]
        if limit_metric:
            parts.append(f"{limit_metric}/{limit_window}")
        if detail and not parts:
            parts.append(detail)
        text = " ".join(parts) or "-"
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 1] + "…"


def follow_row(cells: Sequence[str]) -> str:
    """One row of a followed table, padded to :data:`EVENT_FOLLOW_WIDTHS`, through :func:`visible`."""
    shown = [visible(cell) for cell in cells]
    return "  ".join(cell.ljust(width) for cell, width in zip(shown, EVENT_FOLLOW_WIDTHS, strict=True)).rstrip()
