"""The policy file as typed, validated data (pydantic v2): what operators write, checked.

:class:`PolicyModel` describes one whole policy: a single YAML file, or the files of a
directory merged by :mod:`quota_service.policy.loader`. Validation is strict:

* unknown keys are errors (``extra="forbid"``), at every level;
* no coercion: a string where a number is expected is an error, and so is a boolean
  (YAML's ``true`` is not ``1``);
* every number that is money or a fraction is a :class:`~decimal.Decimal`, exact: the
  loader hands YAML floats over as ``Decimal`` of their literal text (``0.95`` is
  ``Decimal("0.95")``), and a Python ``float`` given directly is read through ``str()``.

Checks that need more than one field (``default_tier`` names a tier, a tier's thresholds
merged over the defaults stay ordered, caps are whole units) are in :func:`semantic_issues`,
run by the loader once the model validates. :func:`quota_service.policy.compiler.compile_policy`
turns a model that passed both into a :class:`~quota_service.policy.compiled.CompiledPolicy`.

Error messages are written for operators and are part of the contract (tests assert them
verbatim); the loader prefixes each with the file, the line and the dotted key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from quota_service.policy.compiled import StoreErrorMode, UnpricedMode
from quota_service.policy.units import COST_METRIC, MAX_UNITS, METRIC_NAME, exact_units
from quota_service.policy.windows import WINDOW_ORDER, Window

__all__ = [
    "SUPPORTED_VERSION",
    "HardStopsModel",
    "Loc",
    "PolicyModel",
    "ThresholdsModel",
    "TierModel",
    "TierThresholdsModel",
    "allowed_keys",
    "describe",
    "render_json_schema",
    "semantic_issues",
]

SUPPORTED_VERSION = 1
TTL_MIN_SECONDS = 1
TTL_MAX_SECONDS = 86_400
DEFAULT_WARN_AT = Decimal("0.80")
DEFAULT_BLOCK_AT = Decimal("0.95")
DEFAULT_TTL_SECONDS = 300

TIER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# "provider/model", "provider/*" or "*". A model may contain '/', ':' or '.' (e.g.
# "meta-llama/llama-3-70b" behind a router) but no '*' and no whitespace.
PRICE_PATTERN = re.compile(r"^(\*|[A-Za-z0-9][A-Za-z0-9_.-]*/(\*|[^\s*]+))$")
FEATURE_NAME = re.compile(r"^\S+$")

#: A location in the policy document: mapping keys (str) and list indexes (int).
Loc = tuple[str | int, ...]

E = TypeVar("E", bound=StrEnum)


def describe(value: object) -> str:
    """``value`` as an operator would recognise it from the YAML: ``'ten'``, ``true``,
    ``null``, ``1.5``, ``a list``, ``a mapping``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, StrEnum):
        return repr(value.value)
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def _error(message: str) -> PydanticCustomError:
    # No context: the message is used verbatim, braces in user input included.
    return PydanticCustomError("policy", message)


# --- scalar types ---------------------------------------------------------------------


def _to_decimal(value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise _error(f"must be a number, got {describe(value)}")
    number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    if not number.is_finite():
        raise _error(f"must be a finite number, got {describe(value)}")
    return number


def _non_negative(value: Decimal) -> Decimal:
    if value < 0:
        raise _error(f"must not be negative, got {describe(value)}")
    return value


def _fraction(value: Decimal) -> Decimal:
    if not 0 < value <= 1:
        raise _error(f"must be greater than 0 and at most 1, got {describe(value)}")
    return value


def _supported_version(value: int) -> int:
    if value != SUPPORTED_VERSION:
        raise _error(f"unsupported version {value}; this service reads version {SUPPORTED_VERSION}")
    return value


def _ttl_range(value: int) -> int:
    if not TTL_MIN_SECONDS <= value <= TTL_MAX_SECONDS:
        raise _error(f"must be between {TTL_MIN_SECONDS} and {TTL_MAX_SECONDS} seconds, got {value}")
    return value


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise _error(f"unknown timezone {value!r}; expected an IANA name such as 'UTC' or 'Europe/Berlin'") from None
    return value


def _enum_parser(enum: type[E]) -> Callable[[object], object]:
    """A before-validator turning the YAML string into ``enum`` (strict mode wants members)."""
    choices = ", ".join(member.value for member in enum)

    def parse(value: object) -> object:
        if isinstance(value, enum):
            return value
        if isinstance(value, str):
            try:
                return enum(value)
            except ValueError:
                pass
        raise _error(f"must be one of {choices}; got {describe(value)}")

    return parse


def _window_key(value: object) -> object:
    if isinstance(value, Window):
        return value
    if isinstance(value, str):
        try:
            return Window(value)
        except ValueError:
            pass
    expected = ", ".join(w.value for w in WINDOW_ORDER)
    raise _error(f"unknown window {describe(value)}; expected one of: {expected}")


def _metric_key(value: object) -> object:
    if isinstance(value, str) and not METRIC_NAME.match(value):
        raise _error(
            f"invalid metric name {value!r}: use lower-case letters, digits and '_', "
            "starting with a letter, at most 63 characters"
        )
    return value


def _priced_metric_key(value: object) -> object:
    if value == COST_METRIC:
        raise _error("cost_usd is derived from the other metrics' prices and cannot be priced itself")
    return _metric_key(value)


def _tier_name(value: object) -> object:
    if isinstance(value, str) and not TIER_NAME.match(value):
        raise _error(
            f"invalid tier name {value!r}: use letters, digits, '_' and '-', "
            "starting with a letter or digit, at most 64 characters"
        )
    return value


def _price_pattern(value: object) -> object:
    if isinstance(value, str) and not PRICE_PATTERN.match(value):
        raise _error(f"invalid price pattern {value!r}: expected 'provider/model', 'provider/*' or '*'")
    return value


def _feature_name(value: object) -> object:
    if isinstance(value, str) and not FEATURE_NAME.match(value):
        raise _error(f"invalid feature name {value!r}: must be non-empty, without spaces")
    return value


Amount = Annotated[
    Decimal,
    BeforeValidator(_to_decimal),
    AfterValidator(_non_negative),
    WithJsonSchema({"type": "number", "minimum": 0}),
]
"""A cap or a price, >= 0, exact. Caps are in the metric's own measure (USD for ``cost_usd``)."""

Fraction = Annotated[
    Decimal,
    BeforeValidator(_to_decimal),
    AfterValidator(_fraction),
    WithJsonSchema({"type": "number", "exclusiveMinimum": 0, "maximum": 1}),
]
"""A threshold: a fraction of a cap in (0, 1]."""

TtlSeconds = Annotated[
    int,
    AfterValidator(_ttl_range),
    WithJsonSchema({"type": "integer", "minimum": TTL_MIN_SECONDS, "maximum": TTL_MAX_SECONDS}),
]
WindowKey = Annotated[Window, BeforeValidator(_window_key)]
MetricKey = Annotated[str, StringConstraints(pattern=METRIC_NAME.pattern), BeforeValidator(_metric_key)]
PricedMetricKey = Annotated[
    str,
    StringConstraints(pattern=METRIC_NAME.pattern),
    BeforeValidator(_priced_metric_key),
]
TierName = Annotated[str, StringConstraints(pattern=TIER_NAME.pattern), BeforeValidator(_tier_name)]
PricePattern = Annotated[str, StringConstraints(pattern=PRICE_PATTERN.pattern), BeforeValidator(_price_pattern)]
FeatureName = Annotated[str, StringConstraints(pattern=FEATURE_NAME.pattern), BeforeValidator(_feature_name)]
StoreErrorField = Annotated[StoreErrorMode, BeforeValidator(_enum_parser(StoreErrorMode))]
UnpricedField = Annotated[UnpricedMode, BeforeValidator(_enum_parser(UnpricedMode))]

Caps = dict[MetricKey, dict[WindowKey, Amount]]
"""``{metric: {window: max}}``; ``cost_usd`` caps in USD, other metrics in whole units."""


# --- models ---------------------------------------------------------------------------


class _StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ThresholdsModel(_StrictModel):
    """The default thresholds: ``0 < warn_at <= block_at <= 1``."""

    warn_at: Fraction = Field(
        default=DEFAULT_WARN_AT,
        json_schema_extra={"default": float(DEFAULT_WARN_AT)},
        description="WARN once projected usage reaches this fraction of a cap.",
    )
    block_at: Fraction = Field(
        default=DEFAULT_BLOCK_AT,
        json_schema_extra={"default": float(DEFAULT_BLOCK_AT)},
        description="DENY once committed + held usage reaches this fraction of a cap.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> ThresholdsModel:
        if self.warn_at > self.block_at:
            raise _error(
                f"warn_at ({describe(self.warn_at)}) must not be greater than block_at ({describe(self.block_at)})"
            )
        return self


class TierThresholdsModel(_StrictModel):
    """A tier's partial override of the default thresholds; ``None`` inherits the default.
    Ordering is checked on the merged result (:func:`semantic_issues`)."""

    warn_at: Fraction | None = Field(default=None, description="Overrides the default warn_at for this tier.")
    block_at: Fraction | None = Field(default=None, description="Overrides the default block_at for this tier.")


class HardStopsModel(_StrictModel):
    """Emergency limits: deny at 100 %, no thresholds."""

    per_subject: Caps = Field(
        default_factory=dict,
        description="Caps on every subject, whatever its tier, unless the tier sets its own hard_stops.",
    )
    global_: Caps = Field(
        default_factory=dict,
        alias="global",
        description="Caps on the whole company: the sum over all subjects.",
    )


class TierModel(_StrictModel):
    """One tier. ``None`` fields inherit the policy's setting."""

    display_name: Annotated[str, StringConstraints(min_length=1)] | None = Field(
        default=None, description="Human name; defaults to the tier's key."
    )
    features: list[FeatureName] = Field(description='Features this tier may use; "*" allows every feature.')
    limits: Caps = Field(description="{metric: {window: max}}; cost_usd in USD.")
    hard_stops: Caps | None = Field(
        default=None, description="Replaces hard_stops.per_subject for this tier: {metric: {window: max}}."
    )
    thresholds: TierThresholdsModel | None = Field(
        default=None, description="Partial override of the default thresholds."
    )
    on_store_error: StoreErrorField | None = Field(
        default=None, description="Overrides the policy's on_store_error for this tier."
    )
    reservation_ttl_seconds: TtlSeconds | None = Field(
        default=None, description="Overrides the policy's reservation_ttl_seconds for this tier."
    )


class PolicyModel(_StrictModel):
    """A whole policy (one file, or a directory's files merged)."""

    model_config = ConfigDict(title="quota-service policy", extra="forbid", strict=True, frozen=True)

    version: Annotated[int, AfterValidator(_supported_version)] = Field(
        json_schema_extra={"const": SUPPORTED_VERSION}, description="Policy format version; must be 1."
    )
    default_tier: str = Field(description="Tier of a subject nobody assigned; must be a key of tiers.")
    timezone: Annotated[str, AfterValidator(_timezone)] = Field(
        default="UTC", description="IANA timezone of the calendar day and month windows."
    )
    thresholds: ThresholdsModel = Field(default_factory=ThresholdsModel, description="Default thresholds.")
    reservation_ttl_seconds: TtlSeconds = Field(
        default=DEFAULT_TTL_SECONDS, description="Seconds an uncommitted reservation lives before it settles."
    )
    unpriced: UnpricedField = Field(
        default=UnpricedMode.DENY, description="What a provider/model with no price gets: deny or free."
    )
    on_store_error: StoreErrorField = Field(
        default=StoreErrorMode.DENY, description="The answer while the counter store is unreachable: deny or allow."
    )
    prices: dict[PricePattern, dict[PricedMetricKey, Amount]] = Field(
        default_factory=dict,
        description='USD per unit of a metric, by "provider/model", "provider/*" or "*".',
    )
    hard_stops: HardStopsModel = Field(default_factory=HardStopsModel, description="Emergency limits.")
    tiers: dict[TierName, TierModel] = Field(description="The tiers, by name.")


# --- checks across fields ---------------------------------------------------------------


def _cap_issues(caps: Caps, loc: Loc) -> list[tuple[Loc, str]]:
    issues: list[tuple[Loc, str]] = []
    for metric, windows in caps.items():
        for window, amount in windows.items():
            where: Loc = (*loc, metric, window.value)
            units = exact_units(metric, amount)
            if units is None:
                what = "micro-dollars (at most 6 decimals)" if metric == COST_METRIC else metric
                issues.append((where, f"{describe(amount)} is not a whole number of {what}"))
            elif units > MAX_UNITS:
                issues.append(
                    (where, f"{describe(amount)} is larger than the largest supported cap ({MAX_UNITS:,} units)")
                )
    return issues


def semantic_issues(policy: PolicyModel) -> list[tuple[Loc, str]]:
    """Problems a valid :class:`PolicyModel` can still have, as ``(location, message)``:

    * ``default_tier`` does not name a tier;
    * a tier's thresholds merged over the defaults give ``warn_at > block_at``;
    * a cap is not a whole number of units (``cost_usd``: micro-dollars) or exceeds
      :data:`~quota_service.policy.units.MAX_UNITS`.

    An empty list means :func:`~quota_service.policy.compiler.compile_policy` will succeed.
    """
    issues: list[tuple[Loc, str]] = []
    if policy.default_tier not in policy.tiers:
        defined = ", ".join(sorted(policy.tiers)) or "none"
        issues.append(
            (("default_tier",), f"tier {policy.default_tier!r} is not defined under tiers (defined: {defined})")
        )
    defaults = policy.thresholds
    for name, tier in policy.tiers.items():
        own = tier.thresholds
        if own is not None:
            warn = defaults.warn_at if own.warn_at is None else own.warn_at
            block = defaults.block_at if own.block_at is None else own.block_at
            if warn > block:
                inherited = ", inherited from the top-level thresholds"
                warn_text = describe(warn) + (inherited if own.warn_at is None else "")
                block_text = describe(block) + (inherited if own.block_at is None else "")
                issues.append(
                    (
                        ("tiers", name, "thresholds"),
                        f"warn_at ({warn_text}) must not be greater than block_at ({block_text})",
                    )
                )
        issues += _cap_issues(tier.limits, ("tiers", name, "limits"))
        if tier.hard_stops is not None:
            issues += _cap_issues(tier.hard_stops, ("tiers", name, "hard_stops"))
    issues += _cap_issues(policy.hard_stops.per_subject, ("hard_stops", "per_subject"))
    issues += _cap_issues(policy.hard_stops.global_, ("hard_stops", "global"))
    return issues


# --- helpers for error messages and editors ------------------------------------------------


def _field_keys(model: type[BaseModel]) -> tuple[str, ...]:
    return tuple(field.alias or name for name, field in model.model_fields.items())


def allowed_keys(loc: Sequence[str | int]) -> tuple[str, ...]:
    """The keys the mapping at ``loc`` accepts, in declaration order; ``()`` when it
    takes free names (tiers, metrics, price patterns) or ``loc`` is not a mapping."""
    shape = tuple(loc)
    if len(shape) >= 2 and shape[0] == "tiers":
        shape = ("tiers", "*", *shape[2:])
    models: dict[tuple[str | int, ...], type[BaseModel]] = {
        (): PolicyModel,
        ("thresholds",): ThresholdsModel,
        ("hard_stops",): HardStopsModel,
        ("tiers", "*"): TierModel,
        ("tiers", "*", "thresholds"): TierThresholdsModel,
    }
    model = models.get(shape)
    return _field_keys(model) if model is not None else ()


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema of a policy file, for editors (``policies/schema.json``)."""
    schema = PolicyModel.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def render_json_schema() -> str:
    """:func:`policy_json_schema` exactly as committed in ``policies/schema.json``."""
    return json.dumps(policy_json_schema(), indent=2, sort_keys=False) + "\n"
