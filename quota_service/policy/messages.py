"""Human messages: amounts and limits as people read them. Pure; no I/O.

One formatter for money and counts, used by the engine's messages, ``check-policy`` and
``quotactl``: ``cost_usd`` in exact dollars (``$10.00``, ``$0.000492``: never rounded to
cents, the service keeps whole micro-dollars), other metrics as whole numbers with
thousands separators and the metric's name (``1,000 tokens``).
"""

from __future__ import annotations

from decimal import Decimal

from quota_service.policy.compiled import Limit, LimitKind
from quota_service.policy.units import COST_METRIC, MICROS_PER_USD

__all__ = ["format_amount", "format_usd", "limit_label"]

_CENT = Decimal("0.01")


def format_usd(micros: int) -> str:
    """Micro-dollars as dollars, exactly: ``10_000_000`` -> ``$10.00``, ``492`` ->
    ``$0.000492``, ``-2_000_000`` -> ``-$2.00``; at least two decimals, thousands separated."""
    usd = Decimal(abs(micros)) / MICROS_PER_USD
    sign = "-" if micros < 0 else ""
    if usd == usd.quantize(_CENT):
        return f"{sign}${usd:,.2f}"
    return f"{sign}${usd.normalize():,f}"


def format_amount(metric: str, units: int) -> str:
    """``units`` of ``metric`` for people: ``$10.00`` (micro-dollars in), ``1,000 tokens``."""
    if metric == COST_METRIC:
        return format_usd(units)
    return f"{units:,} {metric}"


def limit_label(limit: Limit) -> str:
    """``tokens per day``, ``tokens per day (override)``, ``hard stop on tokens per day``, ..."""
    per = f"{limit.metric} per {limit.window.value}"
    return {
        LimitKind.TIER: per,
        LimitKind.OVERRIDE: f"{per} (override)",
        LimitKind.HARD_STOP: f"hard stop on {per}",
        LimitKind.GLOBAL: f"company-wide {per}",
    }[limit.kind]


def at_block_line(limit: Limit, used_and_held: int) -> str:
    return (
        f"{limit_label(limit)}: {format_amount(limit.metric, used_and_held)} of "
        f"{format_amount(limit.metric, limit.max_units)} used, at the block threshold"
    )


def past_cap(limit: Limit, used_and_held: int, ask: int) -> str:
    if ask > limit.max_units:
        return (
            f"{limit_label(limit)}: this request alone asks {format_amount(limit.metric, ask)}, more than the cap "
            f"of {format_amount(limit.metric, limit.max_units)}; it can never be granted (ask for less)"
        )
    return (
        f"{limit_label(limit)}: {format_amount(limit.metric, used_and_held)} of "
        f"{format_amount(limit.metric, limit.max_units)} used; "
        f"{format_amount(limit.metric, ask)} more would pass the cap"
    )


def within(limit: Limit, used_and_held: int, ratio: float) -> str:
    return (
        f"{limit_label(limit)}: {format_amount(limit.metric, used_and_held)} of "
        f"{format_amount(limit.metric, limit.max_units)} used ({ratio:.0%})"
    )
