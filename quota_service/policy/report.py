"""A human-readable summary of a compiled policy, for ``quota-service check-policy``.

Amounts are shown in the metric's own measure: ``cost_usd`` as dollars (``$10.00``, more
decimals only when a cap has sub-cent precision), other metrics as whole numbers with
thousands separators and the metric's name (``1,000 tokens``). Thresholds are percentages.
The format is for people; nothing should parse it.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from quota_service.policy.compiled import CompiledPolicy, Limit, Thresholds, Tier
from quota_service.policy.messages import format_amount

__all__ = ["summarize"]


def _percent(fraction: Decimal) -> str:
    return f"{(fraction * 100).normalize():f}%"


def _thresholds(thresholds: Thresholds) -> str:
    return f"warn at {_percent(thresholds.warn_at)}, block at {_percent(thresholds.block_at)}"


def _table(rows: Sequence[Sequence[str]], indent: str) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def _limit_rows(limits: Sequence[Limit], *, with_thresholds: bool) -> list[list[str]]:
    header = ["metric", "window", "max"] + (["warn at", "block at"] if with_thresholds else [])
    rows = [header]
    for limit in limits:
        row = [limit.metric, limit.window.value, format_amount(limit.metric, limit.max_units)]
        if with_thresholds:
            warn = "-" if limit.warn_units is None else format_amount(limit.metric, limit.warn_units)
            row += [warn, format_amount(limit.metric, limit.block_units)]
        rows.append(row)
    return rows


def _tier_lines(tier: Tier, policy: CompiledPolicy) -> list[str]:
    default = " (default)" if tier.name == policy.default_tier else ""
    features = sorted(tier.features)
    shown = "all (*)" if tier.all_features else (", ".join(features) or "none")
    if tier.all_features and features:
        shown += " + " + ", ".join(features)
    lines = [
        f"tier {tier.name}{default}: {tier.display_name}",
        f"  features:         {shown}",
        f"  thresholds:       {_thresholds(tier.thresholds)}",
        f"  on_store_error:   {tier.on_store_error.value}",
        f"  reservation TTL:  {tier.reservation_ttl_seconds} s",
        f"  commit at most:   {tier.commit_max_ratio}x the estimate",
    ]
    if tier.limits:
        lines.append("  limits:")
        lines += _table(_limit_rows(tier.limits, with_thresholds=True), "    ")
    else:
        lines.append("  limits:           none")
    if tier.hard_stops:
        lines.append("  hard stops (deny above max):")
        lines += _table(_limit_rows(tier.hard_stops, with_thresholds=False), "    ")
    else:
        lines.append("  hard stops:       none")
    return lines


def summarize(policy: CompiledPolicy) -> str:
    """The policy as a readable report (several lines, no trailing newline)."""
    lines = [
        f"policy version   {policy.version}",
        f"files            {', '.join(policy.files)}",
        f"timezone         {policy.timezone.key}",
        f"default tier     {policy.default_tier}",
        f"thresholds       {_thresholds(policy.thresholds)}",
        f"reservation TTL  {policy.reservation_ttl_seconds} s",
        f"unpriced         {policy.unpriced.value}",
        f"on_store_error   {policy.on_store_error.value}",
    ]
    for tier in policy.tiers.values():
        lines.append("")
        lines += _tier_lines(tier, policy)
    lines.append("")
    if policy.global_limits:
        lines.append("global caps (the whole company, deny above max):")
        lines += _table(_limit_rows(policy.global_limits, with_thresholds=False), "  ")
    else:
        lines.append("global caps: none")
    patterns = list(policy.prices.entries)
    if patterns:
        count = f"{len(patterns)} price pattern{'' if len(patterns) == 1 else 's'}"
        lines.append(f"prices: {count} ({', '.join(patterns)})")
    else:
        lines.append("prices: none")
    return "\n".join(lines)
