"""Exact amounts: every metric is counted in whole integer *units*.

* Counted metrics (``tokens``, ``images``, any free name): 1 unit = 1 of the thing.
  A fractional amount on the wire is rounded **up** to the next whole unit
  (``0.2`` images counts 1): reservations err on the side of the cap, never of drift.
* ``cost_usd`` is derived by the service, never sent by a client: 1 unit = 1 micro-dollar
  (USD 0.000001). A request's cost is ``ceil(sum(price * amount) * 1e6)`` computed with
  :class:`decimal.Decimal`, so twenty $0.05 images make exactly 1_000_000 units ($1.00).

Caps are converted once, at compile time, with the same rule; a cap that is not a whole
number of units (``cost_usd: 0.0000005``) is a policy error.
"""

from __future__ import annotations

import math
import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation

from quota_service.errors import InvalidRequest, shown

COST_METRIC = "cost_usd"
MICROS_PER_USD = Decimal(1_000_000)
METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")  # anchored for the JSON schema; matched with fullmatch
# Redis Lua numbers are doubles: integers are exact only up to 2**53.
MAX_UNITS = 2**53 - 1


def scale(metric: str) -> Decimal:
    """How many units make one of ``metric`` as written in policies and on the wire."""
    return MICROS_PER_USD if metric == COST_METRIC else Decimal(1)


def to_units_ceil(metric: str, amount: Decimal) -> int:
    """``amount`` (in the metric's own measure, e.g. USD) as units, rounded up."""
    return int((amount * scale(metric)).to_integral_value(rounding=ROUND_CEILING))


def exact_units(metric: str, amount: Decimal) -> int | None:
    """``amount`` as units when it is a whole number of units, else ``None``."""
    scaled = amount * scale(metric)
    return int(scaled) if scaled == scaled.to_integral_value() else None


def from_units(metric: str, units: int) -> float:
    """Units back to the metric's own measure, for display on the wire: the double nearest
    the exact value (IEEE division of two integers below 2**53 is correctly rounded)."""
    return units / 1_000_000 if metric == COST_METRIC else float(units)


def validate_metric_name(metric: str) -> None:
    if not METRIC_NAME.fullmatch(metric):
        raise InvalidRequest(
            f"metric name {shown(metric)} is not valid: 1-63 lower-case letters, digits and '_', starting with a letter"
        )


def parse_usage(usage: dict[str, float] | None, *, allow_cost: bool = False) -> dict[str, int]:
    """Validate a wire ``usage`` map and convert it to whole units.

    Raises :class:`InvalidRequest` for a bad metric name, a negative, NaN or infinite
    amount, an amount above 2**53 units, or ``cost_usd`` (derived by the service) unless
    ``allow_cost``. Zero amounts are dropped: a metric the request does not use plays no part.
    """
    units: dict[str, int] = {}
    for metric, value in (usage or {}).items():
        validate_metric_name(metric)
        if metric == COST_METRIC and not allow_cost:
            raise InvalidRequest("cost_usd is derived by the service from the policy's prices; do not send it")
        if not isinstance(value, int | float) or math.isnan(value) or math.isinf(value):
            raise InvalidRequest(f"usage[{metric!r}] must be a finite number, got {value!r}")
        if value < 0:
            raise InvalidRequest(f"usage[{metric!r}] must not be negative, got {value!r}")
        try:
            amount = to_units_ceil(metric, Decimal(repr(float(value))))
        except InvalidOperation as exc:  # pragma: no cover - repr(float) is always a valid Decimal
            raise InvalidRequest(f"usage[{metric!r}] is not a number: {value!r}") from exc
        if amount > MAX_UNITS:
            raise InvalidRequest(f"usage[{metric!r}] is too large: {value!r}")
        if amount:
            units[metric] = amount
    return units
