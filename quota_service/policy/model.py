"""The policy file as typed, validated data (pydantic v2): what operators write, checked.

:class:`PolicyModel` describes one whole policy: a single YAML file, or the files of a
directory merged by :mod:`quota_service.policy.loader`. Validation is strict:

* unknown keys are errors (``extra="forbid"``), at every level;
* no coercion: a string where a number is expected is an error, and so is a boolean
  (YAML's ``true`` is not ``1``);
* every number that is money or a fraction is a :class:`~decimal.Decimal`, exact: the
  loader hands YAML floats over as ``Decimal`` of their literal text (``0.95`` is
  ``Decimal("0.95")``), and a Python ``float`` given directly is read through ``str()``;
* every number must be usable where it is used (see the limits below): nothing the model
  accepts can overflow or lose a digit in the decimal arithmetic that later uses it.

Number limits (each refusal names the number and the limit):

* any number: finite, at most :data:`MAX_NUMBER_DIGITS` significant digits, 0 or with a
  magnitude between ``1e-40`` and ``1e40`` (:data:`MAX_NUMBER_EXPONENT`);
* caps: whole units, at most :data:`~quota_service.policy.units.MAX_UNITS` units (``cost_usd``:
  micro-dollars, so at most 6 decimals and $9,007,199,254.740991);
* prices (USD per unit): ``>= 0``, at most :data:`MAX_PRICE_DECIMALS` decimals, at most
  :data:`MAX_PRICE_USD` (one unit's cost must fit in a cost counter). With these, the cost of
  any request (each metric at most ``MAX_UNITS`` units) is computed exactly in the default
  28-digit decimal context whenever it fits a counter, and never overflows when it does not
  (the engine then refuses the request as too large to count);
* thresholds: in (0, 1], at most :data:`MAX_THRESHOLD_DECIMALS` decimals, so
  ``threshold * cap`` is exact;
* integers (``version``, ``reservation_ttl_seconds``): whole numbers written without a
  decimal point or exponent, within their field's range.

Checks that need more than one field (``default_tier`` names a tier, a tier's thresholds
merged over the defaults stay ordered, caps are whole units, prices are usable) are in
:func:`semantic_issues`, run by the loader once the model validates.
:func:`quota_service.policy.compiler.compile_policy` turns a model that passed both into a
:class:`~quota_service.policy.compiled.CompiledPolicy`.

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
from urllib.parse import urlsplit
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

from quota_service.errors import InvalidRequest
from quota_service.policy.compiled import StoreErrorMode, StoreLostMode, UnpricedMode
from quota_service.policy.notifications import EVENT_KIND_NAMES, EVENT_KIND_PREFIX
from quota_service.policy.units import COST_METRIC, MAX_UNITS, METRIC_NAME, scale
from quota_service.policy.validation import canonical_name
from quota_service.policy.windows import WINDOW_ORDER, Window

__all__ = [
    "MAX_NUMBER_DIGITS",
    "MAX_NUMBER_EXPONENT",
    "MAX_PRICE_DECIMALS",
    "MAX_PRICE_USD",
    "MAX_THRESHOLD_DECIMALS",
    "SUPPORTED_VERSION",
    "HardStopsModel",
    "Loc",
    "NotificationsModel",
    "PolicyModel",
    "ThresholdsModel",
    "TierModel",
    "TierThresholdsModel",
    "WebhookModel",
    "allowed_keys",
    "decimal_places",
    "describe",
    "number_hint",
    "render_json_schema",
    "semantic_issues",
]

SUPPORTED_VERSION = 1
TTL_MIN_SECONDS = 1
TTL_MAX_SECONDS = 86_400
DEFAULT_WARN_AT = Decimal("0.80")
DEFAULT_BLOCK_AT = Decimal("0.95")
DEFAULT_TTL_SECONDS = 300
#: A Commit may report at most this many times its estimate of a metric (policy default) ...
DEFAULT_COMMIT_RATIO = 10
#: ... and a policy may allow at most this many (a bound of its own: the bound must bound).
MAX_COMMIT_RATIO = 1_000_000
#: ``fail_open_allowance``: 5 % of each cap per replica and outage (on_store_error: allow).
DEFAULT_FAIL_OPEN_ALLOWANCE = Decimal("0.05")

#: Any number in a policy: at most this many significant digits ...
MAX_NUMBER_DIGITS = 40
#: ... and 0 or ``10**-MAX_NUMBER_EXPONENT <= abs(value) < 10**MAX_NUMBER_EXPONENT``.
MAX_NUMBER_EXPONENT = 40
#: Prices are multiples of 1e-18 USD (1e-12 micro-dollars): with at most 10 integer digits
#: (MAX_PRICE_USD) a cost that fits a counter then has at most 28 digits, the precision of
#: the default decimal context, so it is computed exactly.
MAX_PRICE_DECIMALS = 18
#: The largest price per unit (USD): one unit's cost must fit in a cost counter.
MAX_PRICE_USD = Decimal(MAX_UNITS).scaleb(-6)
#: Thresholds have at most 12 decimals: ``threshold * cap`` (cap < 2**53, 16 digits) then
#: has at most 28 digits and is exact in the default decimal context.
MAX_THRESHOLD_DECIMALS = 12
#: Most webhooks one policy may list, and the longest webhook URL (characters).
MAX_WEBHOOKS = 32
MAX_WEBHOOK_URL_CHARS = 2048
#: ``ledger_retention_days``: at least a day, at most a hundred years.
MAX_RETENTION_DAYS = 36_500
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
WEBHOOK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: Longest text of a value quoted in an error message.
_DESCRIBE_MAX_CHARS = 60

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
    ``null``, ``1.5``, ``a list``, ``a mapping``. Never long: a long string is cut
    (``'aaaa…' (5,000 characters)``), a huge or tiny number is shown with an exponent."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, StrEnum):
        return repr(value.value)
    if isinstance(value, str):
        if len(value) > _DESCRIBE_MAX_CHARS:
            return f"{value[: _DESCRIBE_MAX_CHARS - 20]!r}… ({len(value):,} characters)"
        return repr(value)
    if isinstance(value, Decimal):
        return _describe_decimal(value)
    if isinstance(value, int):
        return _describe_decimal(Decimal(value)) if abs(value) >= 10**MAX_NUMBER_DIGITS else str(value)
    if isinstance(value, float):
        return str(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def _describe_decimal(value: Decimal) -> str:
    """Plain digits (``0.0000006``) when that is short, else scientific (``1.0E+999999999``);
    never more than about 60 characters whatever the number."""
    digits = value.as_tuple().digits
    if value.is_finite() and len(digits) <= MAX_NUMBER_DIGITS and abs(value.adjusted()) <= MAX_NUMBER_EXPONENT:
        return format(value, "f")
    if len(digits) > _DESCRIBE_MAX_CHARS:
        sign = "-" if value.is_signed() else ""
        shown = "".join(map(str, digits[:20]))
        return f"{sign}{shown[0]}.{shown[1:]}…E{value.adjusted():+d} ({len(digits):,} digits)"
    return str(value)


def decimal_places(value: Decimal) -> int:
    """Digits after the decimal point of ``value``'s exact value, trailing zeros ignored
    (``1.50`` -> 1, ``1E+3`` -> 0). Exact: no decimal context (and so no rounding) involved."""
    _sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):  # NaN, Infinity: refused before this is asked
        return 0
    trailing = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    return max(0, -(exponent + trailing)) if any(digits) else 0


def _error(message: str) -> PydanticCustomError:
    # No context: the message is used verbatim, braces in user input included.
    return PydanticCustomError("policy", message)


# --- scalar types ---------------------------------------------------------------------


_LEADING_ZERO = re.compile(r"[-+]?0[0-9_]+")
_BASE_PREFIX = re.compile(r"([-+]?)0([xob])([0-9a-fA-F_]+)", re.IGNORECASE)
_SEXAGESIMAL = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?")
_THOUSANDS = re.compile(r"[-+]?[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]*)?")
_HINT_MAX_CHARS = 40


def number_hint(text: str) -> str:
    """Why ``text`` (a string where a number is expected) is not read as a number, and what
    to write instead; ``""`` when there is nothing more to say than "must be a number".

    The loader reads only plain decimal numbers (``1000``, ``1_000``, ``0.95``, ``1e3``);
    the YAML 1.1 forms that other tools read differently are left as text and explained
    here: a leading zero (octal in YAML 1.1, decimal in YAML 1.2), ``0x``/``0o``/``0b``
    prefixes, base 60 (``1:30`` is 90 in YAML 1.1) and thousands separators.
    """
    text = text.strip()
    if len(text) > _HINT_MAX_CHARS:
        return ""
    if _LEADING_ZERO.fullmatch(text):
        digits = text.replace("_", "").lstrip("+-").lstrip("0") or "0"
        sign = "-" if text.startswith("-") else ""
        return f"; write {sign}{digits} (a leading zero is read as octal in YAML 1.1)"
    based = _BASE_PREFIX.fullmatch(text)
    if based is not None:
        sign, kind, digits = based.groups()
        base = {"x": 16, "o": 8, "b": 2}[kind.lower()]
        try:
            decimal = int(digits.replace("_", ""), base)
        except ValueError:
            return "; write the number in decimal"
        names = {16: "hexadecimal", 8: "octal", 2: "binary"}
        return f"; write the decimal {sign if sign == '-' else ''}{decimal} ({names[base]} numbers are not accepted)"
    if _SEXAGESIMAL.fullmatch(text):
        whole, _, fraction = text.lstrip("+-").replace("_", "").partition(".")
        total = 0
        for part in whole.split(":"):
            total = total * 60 + int(part)
        value = f"{total}.{fraction}" if fraction else str(total)
        sign = "-" if text.startswith("-") else ""
        return f"; write the decimal {sign}{value} if that is meant (YAML 1.1 reads {text} as a base-60 number)"
    if _THOUSANDS.fullmatch(text):
        plain = text.replace(",", "")
        return f"; write {plain} or {text.replace(',', '_')} (commas are not digit separators)"
    return ""


def _to_decimal(value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        hint = number_hint(value) if isinstance(value, str) else ""
        raise _error(f"must be a number, got {describe(value)}{hint}")
    number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    if not number.is_finite():
        raise _error(f"must be a finite number, got {describe(value)}")
    if len(number.as_tuple().digits) > MAX_NUMBER_DIGITS:
        raise _error(f"{describe(number)} has more than {MAX_NUMBER_DIGITS} significant digits")
    if number and not -MAX_NUMBER_EXPONENT <= number.adjusted() < MAX_NUMBER_EXPONENT:
        raise _error(
            f"{describe(number)} is out of range: a number in a policy is 0 or between "
            f"1e-{MAX_NUMBER_EXPONENT} and 1e+{MAX_NUMBER_EXPONENT}"
        )
    return number


def _to_int(value: object) -> object:
    """An integer field: a YAML integer, nothing else (no ``true``, no ``300.0``, no ``"300"``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, Decimal) and value.is_finite():
        text = str(value) if len(value.as_tuple().digits) <= MAX_NUMBER_DIGITS else describe(value)
        raise _error(f"must be an integer written without a decimal point or exponent, got {text}")
    hint = number_hint(value) if isinstance(value, str) else ""
    raise _error(f"must be an integer, got {describe(value)}{hint}")


def _non_negative(value: Decimal) -> Decimal:
    if value < 0:
        raise _error(f"must not be negative, got {describe(value)}")
    return value


def _fraction(value: Decimal) -> Decimal:
    if not 0 < value <= 1:
        raise _error(f"must be greater than 0 and at most 1, got {describe(value)}")
    if decimal_places(value) > MAX_THRESHOLD_DECIMALS:
        raise _error(f"{describe(value)} has more than {MAX_THRESHOLD_DECIMALS} decimals")
    return value


def _commit_ratio(value: int) -> int:
    if not 1 <= value <= MAX_COMMIT_RATIO:
        raise _error(f"must be a whole number from 1 to {MAX_COMMIT_RATIO}, got {describe(value)}")
    return value


def _supported_version(value: int) -> int:
    if value != SUPPORTED_VERSION:
        raise _error(f"unsupported version {describe(value)}; this service reads version {SUPPORTED_VERSION}")
    return value


def _ttl_range(value: int) -> int:
    if not TTL_MIN_SECONDS <= value <= TTL_MAX_SECONDS:
        raise _error(f"must be between {TTL_MIN_SECONDS} and {TTL_MAX_SECONDS} seconds, got {describe(value)}")
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
    if isinstance(value, str) and not TIER_NAME.fullmatch(value):
        raise _error(
            f"invalid tier name {value!r}: use letters, digits, '_' and '-', "
            "starting with a letter or digit, at most 64 characters"
        )
    return value


def _canonical(what: str, value: str) -> str | None:
    """The canonical form of a feature, provider or model name (as requests are compared,
    see :mod:`quota_service.policy.validation`), or ``None`` when it is no valid name."""
    try:
        return canonical_name(what, value)
    except InvalidRequest:
        return None


def _price_pattern(value: object) -> object:
    if not isinstance(value, str):
        return value
    if not PRICE_PATTERN.fullmatch(value):
        raise _error(f"invalid price pattern {value!r}: expected 'provider/model', 'provider/*' or '*'")
    if value != "*":
        provider, _, model = value.partition("/")
        canonical = f"{_canonical('provider', provider)}/{model if model == '*' else _canonical('model', model)}"
        if "None" in canonical.split("/") or canonical != value:
            hint = f"write {canonical!r}" if "None" not in canonical.split("/") else "use a valid name"
            raise _error(
                f"invalid price pattern {value!r}: {hint}; providers and models are compared case-insensitively "
                "(Unicode NFKC, case-folded), so patterns are written in that form"
            )
    return value


def _feature_name(value: object) -> object:
    if not isinstance(value, str):
        return value
    if value == "*":
        return value
    if not FEATURE_NAME.fullmatch(value):
        raise _error(f"invalid feature name {value!r}: must be non-empty, without spaces")
    canonical = _canonical("feature", value)
    if canonical != value:
        hint = f"write {canonical!r}" if canonical is not None else "use a valid name"
        raise _error(
            f"invalid feature name {value!r}: {hint}; features are compared case-insensitively "
            "(Unicode NFKC, case-folded), so they are written in that form"
        )
    return value


def _webhook_url(value: str) -> str:
    if len(value) > MAX_WEBHOOK_URL_CHARS:
        raise _error(f"a webhook URL is at most {MAX_WEBHOOK_URL_CHARS} characters, got {len(value):,}")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise _error(f"webhook URL {describe(value)} contains spaces or control characters")
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https"):
        raise _error(f"webhook URL {describe(value)} must start with http:// or https://")
    try:
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise _error(f"webhook URL {describe(value)} has an invalid host or port") from None
    if not host:
        raise _error(f"webhook URL {describe(value)} has no host")
    if parts.username is not None or parts.password is not None:
        raise _error(
            f"webhook URL {describe(value)} carries credentials (user:password@); "
            "secrets never go in a policy file: the receiver checks the webhook-signature instead"
        )
    return value


def _env_name(value: str) -> str:
    if not ENV_NAME.fullmatch(value):
        raise _error(
            f"{describe(value)} is not an environment variable name (letters, digits and '_', "
            "not starting with a digit, at most 128 characters); name the variable that holds the secret, "
            "never the secret itself"
        )
    return value


def _event_kind(value: object) -> object:
    if not isinstance(value, str):
        return value
    name = value.removeprefix(EVENT_KIND_PREFIX)
    if name not in EVENT_KIND_NAMES:
        raise _error(f"unknown event kind {describe(value)}; expected one of: {', '.join(EVENT_KIND_NAMES)}")
    return name


def _webhook_name(value: str) -> str:
    if not WEBHOOK_NAME.fullmatch(value):
        raise _error(
            f"invalid webhook name {describe(value)}: use letters, digits, '_', '.' and '-', "
            "starting with a letter or digit, at most 64 characters"
        )
    return value


#: ``stop_subject_for``: a whole number then s, m, h or d ("90s", "30m", "1h", "2d").
_DURATION = re.compile(r"^([1-9][0-9]{0,6})([smhd])$")
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: A rule's stop lasts at least a second and at most 30 days.
MAX_STOP_SECONDS = 30 * 86400
CROSS_THRESHOLDS = ("warn", "block", "cap")


def _duration(value: object) -> object:
    """A duration: "<n>s|m|h|d" (or a whole number of seconds), as seconds."""
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        seconds = int(match.group(1)) * _DURATION_SECONDS[match.group(2)]
    else:
        raise _error(f'must be a duration such as "90s", "30m", "1h" or "2d", got {describe(value)}')
    if not 1 <= seconds <= MAX_STOP_SECONDS:
        raise _error(f"must be from 1 second to 30 days, got {describe(value)}")
    return seconds


def _cross_threshold(value: object) -> object:
    if not isinstance(value, str) or value not in CROSS_THRESHOLDS:
        raise _error(f"must be one of {', '.join(CROSS_THRESHOLDS)}, got {describe(value)}")
    return value


def _retention_days(value: int) -> int:
    if not 1 <= value <= MAX_RETENTION_DAYS:
        raise _error(f"must be a whole number of days from 1 to {MAX_RETENTION_DAYS}, got {describe(value)}")
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
    BeforeValidator(_to_int),
    AfterValidator(_ttl_range),
    WithJsonSchema({"type": "integer", "minimum": TTL_MIN_SECONDS, "maximum": TTL_MAX_SECONDS}),
]
CommitRatio = Annotated[
    int,
    BeforeValidator(_to_int),
    AfterValidator(_commit_ratio),
    WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_COMMIT_RATIO}),
]
"""How many times its estimate a Commit may report (per metric) before it is refused for review."""
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
StoreLostField = Annotated[StoreLostMode, BeforeValidator(_enum_parser(StoreLostMode))]

WebhookUrl = Annotated[
    str, AfterValidator(_webhook_url), WithJsonSchema({"type": "string", "pattern": "^[hH][tT][tT][pP][sS]?://"})
]
EnvName = Annotated[str, AfterValidator(_env_name), WithJsonSchema({"type": "string", "pattern": ENV_NAME.pattern})]
EventKindName = Annotated[str, BeforeValidator(_event_kind), WithJsonSchema({"enum": list(EVENT_KIND_NAMES)})]
WebhookName = Annotated[
    str, AfterValidator(_webhook_name), WithJsonSchema({"type": "string", "pattern": WEBHOOK_NAME.pattern})
]
StopFor = Annotated[
    int,
    BeforeValidator(_duration),
    WithJsonSchema({"type": ["string", "integer"], "pattern": _DURATION.pattern}),
]
CrossThreshold = Annotated[str, BeforeValidator(_cross_threshold), WithJsonSchema({"enum": list(CROSS_THRESHOLDS)})]
RetentionDays = Annotated[
    int,
    BeforeValidator(_to_int),
    AfterValidator(_retention_days),
    WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_RETENTION_DAYS}),
]

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


class CrossRuleModel(_StrictModel):
    """A rule that acts when a limit is crossed: stop the subject for a while (the burn-rate
    brake for runaway agent loops). Matches the subject's limits on ``metric`` and ``window``
    (the tier's, an override's or a hard stop's) when used + held reaches ``threshold``."""

    name: WebhookName | None = Field(
        default=None, description="A label for the stop and the events; defaults to metric-window-threshold."
    )
    metric: MetricKey = Field(description="The limit's metric, e.g. cost_usd.")
    window: WindowKey = Field(description="The limit's window: minute, hour, day or month.")
    threshold: CrossThreshold = Field(description="warn, block or cap: the line whose crossing acts.")
    stop_subject_for: StopFor = Field(
        description='How long the subject is stopped (EMERGENCY_STOP) after the crossing: "90s", "30m", "1h", "2d".'
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
    commit_max_ratio: CommitRatio | None = Field(
        default=None, description="Overrides the policy's commit_max_ratio for this tier."
    )
    on_cross: list[CrossRuleModel] = Field(
        default_factory=list, description="Rules for this tier's subjects, added to the policy's on_cross."
    )
    fail_open_allowance: Fraction | None = Field(
        default=None, description="Overrides the policy's fail_open_allowance for this tier."
    )


class WebhookModel(_StrictModel):
    """One webhook: where events are POSTed (Standard Webhooks), signed with the secret held
    by the environment variable ``secret_env`` (never the secret itself)."""

    name: WebhookName | None = Field(
        default=None, description="A label for quotactl and the logs; defaults to the URL's host."
    )
    url: WebhookUrl = Field(description="http:// or https:// URL the events are POSTed to.")
    secret_env: EnvName = Field(
        description='Environment variable holding the Standard Webhooks secret "whsec_<base64>".'
    )
    kinds: list[EventKindName] = Field(
        default_factory=list, description="Only these event kinds (EventKind names); empty or absent: every kind."
    )
    tiers: list[TierName] = Field(
        default_factory=list, description="Only events of subjects in these tiers; empty or absent: every tier."
    )


class NotificationsModel(_StrictModel):
    """Where events are delivered."""

    webhooks: list[WebhookModel] = Field(default_factory=list, description="Webhook endpoints.")


class PolicyModel(_StrictModel):
    """A whole policy (one file, or a directory's files merged)."""

    model_config = ConfigDict(title="quota-service policy", extra="forbid", strict=True, frozen=True)

    version: Annotated[int, BeforeValidator(_to_int), AfterValidator(_supported_version)] = Field(
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
    commit_max_ratio: CommitRatio = Field(
        default=DEFAULT_COMMIT_RATIO,
        description=(
            "A Commit reporting more than this many times its reservation's estimate of any metric (at least "
            "this many units) is refused for review (FAILED_PRECONDITION): one buggy caller cannot charge the "
            "company-wide counters past every cap."
        ),
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
    notifications: NotificationsModel = Field(
        default_factory=NotificationsModel, description="Where events are delivered (webhooks)."
    )
    ledger_retention_days: RetentionDays | None = Field(
        default=None, description="Events older than this many days are removed from the ledger; absent: kept."
    )
    on_store_lost: StoreLostField = Field(
        default=StoreLostMode.FAIL_CLOSED,
        description=(
            "When Redis comes back without its data: fail_closed (deny until an operator runs "
            "quota-service restore) or restore (one replica rebuilds it from the ledger at once)."
        ),
    )
    on_cross: list[CrossRuleModel] = Field(
        default_factory=list,
        description="Rules that act when a subject's limit is crossed (every tier), e.g. stop the subject for 1h.",
    )
    fail_open_allowance: Fraction = Field(
        default=DEFAULT_FAIL_OPEN_ALLOWANCE,
        json_schema_extra={"default": float(DEFAULT_FAIL_OPEN_ALLOWANCE)},
        description=(
            "With on_store_error: allow, what each replica may grant per subject and limit while Redis is "
            "unreachable, as a fraction of the cap, per outage; the grants are written back when it returns."
        ),
    )


# --- checks across fields ---------------------------------------------------------------


def _cap_issues(caps: Caps, loc: Loc) -> list[tuple[Loc, str]]:
    # Both checks are exact (digits and comparisons, no decimal context): exact_units() in
    # the compiler then only ever sees at most 16 + 6 digits, which it converts exactly.
    issues: list[tuple[Loc, str]] = []
    for metric, windows in caps.items():
        places = 6 if metric == COST_METRIC else 0
        for window, amount in windows.items():
            where: Loc = (*loc, metric, window.value)
            if decimal_places(amount) > places:
                what = "micro-dollars (at most 6 decimals)" if metric == COST_METRIC else metric
                issues.append((where, f"{describe(amount)} is not a whole number of {what}"))
            elif amount > Decimal(MAX_UNITS) / scale(metric):
                issues.append(
                    (where, f"{describe(amount)} is larger than the largest supported cap ({MAX_UNITS:,} units)")
                )
    return issues


def _price_issues(prices: dict[str, dict[str, Decimal]]) -> list[tuple[Loc, str]]:
    issues: list[tuple[Loc, str]] = []
    for pattern, rates in prices.items():
        for metric, rate in rates.items():
            where: Loc = ("prices", pattern, metric)
            if decimal_places(rate) > MAX_PRICE_DECIMALS:
                issues.append(
                    (where, f"{describe(rate)} has more than {MAX_PRICE_DECIMALS} decimals (prices are USD per unit)")
                )
            elif rate > MAX_PRICE_USD:
                issues.append(
                    (
                        where,
                        f"{describe(rate)} is larger than the largest supported price "
                        f"({MAX_PRICE_USD:,f} USD per unit: one unit's cost must fit in a cost counter)",
                    )
                )
    return issues


def semantic_issues(policy: PolicyModel) -> list[tuple[Loc, str]]:
    """Problems a valid :class:`PolicyModel` can still have, as ``(location, message)``:

    * ``default_tier`` does not name a tier;
    * a tier's thresholds merged over the defaults give ``warn_at > block_at``;
    * a cap is not a whole number of units (``cost_usd``: micro-dollars) or exceeds
      :data:`~quota_service.policy.units.MAX_UNITS`;
    * a price has more than :data:`MAX_PRICE_DECIMALS` decimals or exceeds :data:`MAX_PRICE_USD`.

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
    issues += _price_issues(policy.prices)
    issues += _notification_issues(policy)
    return issues


def _notification_issues(policy: PolicyModel) -> list[tuple[Loc, str]]:
    issues: list[tuple[Loc, str]] = []
    hooks = policy.notifications.webhooks
    if len(hooks) > MAX_WEBHOOKS:
        issues.append((("notifications", "webhooks"), f"{len(hooks)} webhooks; at most {MAX_WEBHOOKS}"))
    urls: dict[str, int] = {}
    names: dict[str, int] = {}
    for index, hook in enumerate(hooks):
        where: Loc = ("notifications", "webhooks", index)
        if hook.url in urls:
            issues.append(((*where, "url"), f"the same URL as webhooks[{urls[hook.url]}]; list each endpoint once"))
        urls.setdefault(hook.url, index)
        if hook.name is not None:
            if hook.name in names:
                issues.append(((*where, "name"), f"the same name as webhooks[{names[hook.name]}]"))
            names.setdefault(hook.name, index)
        for position, tier in enumerate(hook.tiers):
            if tier not in policy.tiers:
                defined = ", ".join(sorted(policy.tiers)) or "none"
                issues.append(((*where, "tiers", position), f"tier {tier!r} is not defined (defined: {defined})"))
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
    if len(shape) >= 2 and shape[0] == "on_cross" and isinstance(shape[1], int):
        shape = ("on_cross", "*", *shape[2:])
    if len(shape) >= 4 and shape[2] == "on_cross" and isinstance(shape[3], int):
        shape = (*shape[:3], "*", *shape[4:])
    if len(shape) >= 3 and shape[:2] == ("notifications", "webhooks") and isinstance(shape[2], int):
        shape = ("notifications", "webhooks", "*", *shape[3:])
    models: dict[tuple[str | int, ...], type[BaseModel]] = {
        (): PolicyModel,
        ("thresholds",): ThresholdsModel,
        ("hard_stops",): HardStopsModel,
        ("tiers", "*"): TierModel,
        ("tiers", "*", "thresholds"): TierThresholdsModel,
        ("notifications",): NotificationsModel,
        ("notifications", "webhooks", "*"): WebhookModel,
        ("on_cross", "*"): CrossRuleModel,
        ("tiers", "*", "on_cross", "*"): CrossRuleModel,
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
