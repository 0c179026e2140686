"""Request validation at the edge: names, sizes and amounts, one set of rules for every RPC.

Every name a caller sends (subject, feature, provider, model, request id, stop target) is
checked here before anything else sees it:

* 1 to :data:`MAX_NAME_BYTES` bytes of UTF-8;
* no whitespace, no braces (names end up inside Redis keys and hash tags), and none of
  the characters that look like nothing or like something else: control characters (C0
  and C1), format characters (zero-width spaces, bidi overrides and isolates, ...),
  surrogates, private-use and unassigned code points;
* subjects may not start with ``__`` (``__global__`` and friends are the service's own scopes).

**Canonical form.** Features, providers and models are case-insensitive: they are
compared, priced, stopped and recorded in their canonical form, Unicode NFKC then
case-folded (``OpenAI`` is ``openai``; full-width letters fold to ASCII). Policy files
must write them canonically (the loader says so otherwise). Subjects, request ids and
tier names are exact: a user id is whatever the backend says it is.

Values echoed in error messages are cut short (:func:`quota_service.errors.shown`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

from quota_service.errors import InvalidRequest, shown
from quota_service.policy.domain import GLOBAL_SCOPE
from quota_service.policy.units import parse_usage

#: The longest name (subject, feature, provider, model, request id, stop target), in UTF-8 bytes.
MAX_NAME_BYTES = 256
#: The longest free text an admin may attach (a reason), in UTF-8 bytes.
MAX_REASON_BYTES = 1024
#: The longest reservation TTL a request may ask for (seconds).
MAX_TTL_SECONDS = 86_400
#: Prefix of the service's own scopes (``__global__``): never a subject.
RESERVED_PREFIX = "__"

_ASCII_NAME = re.compile(r"[!-z|~]+")  # printable ASCII without space, '{' and '}'
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})


def _bad_character(value: str) -> str | None:
    """The first character a name may not contain, or ``None``."""
    for ch in value:
        if ch in "{}" or unicodedata.category(ch) in _REFUSED_CATEGORIES:
            return ch
    return None


def validate_name(field_name: str, value: str, *, required: bool = True) -> str:
    """Check a name (see the module docstring) and return it unchanged; ``""`` is allowed
    when not ``required``. :class:`InvalidRequest` names the field and the character."""
    if not value:
        if required:
            raise InvalidRequest(f"{field_name} is required")
        return value
    if len(value) > MAX_NAME_BYTES or len(value.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidRequest(f"{field_name} {shown(value)} is too long: at most {MAX_NAME_BYTES} bytes of UTF-8")
    if value.isascii() and _ASCII_NAME.fullmatch(value):
        return value
    bad = _bad_character(value)
    if bad is not None:
        raise InvalidRequest(
            f"{field_name} {shown(value)} is not valid: it contains {_describe_char(bad)}; names may not contain "
            "whitespace, braces, control, format (invisible or bidi) or unassigned characters"
        )
    return value


def validate_subject(value: str, *, field_name: str = "subject") -> str:
    """A subject: a name (exact, case-sensitive) that is not one of the service's own scopes."""
    validate_name(field_name, value)
    if value == GLOBAL_SCOPE:
        raise InvalidRequest(
            f"{GLOBAL_SCOPE} is the company-wide scope, not a subject; its counters are nobody's to change "
            "and end with their window"
        )
    if value.startswith(RESERVED_PREFIX):
        raise InvalidRequest(
            f"{field_name} {shown(value)} is not valid: names starting with {RESERVED_PREFIX!r} are reserved "
            "for the service's own scopes (__global__ is the company-wide one)"
        )
    return value


def canonical_name(field_name: str, value: str, *, required: bool = True) -> str:
    """A feature, provider or model name, validated and in its canonical form (NFKC,
    case-folded). ``""`` when not given and not ``required``."""
    validate_name(field_name, value, required=required)
    if value.isascii():
        return value.lower()
    canonical = unicodedata.normalize("NFKC", value).casefold()
    if canonical != value:
        # Compatibility forms can fold into refused characters (U+FE5B SMALL LEFT CURLY BRACKET -> "{").
        validate_name(field_name, canonical)
    return canonical


def validate_reason(reason: str) -> str:
    """An admin's free-text reason (kept in the audit log): at most :data:`MAX_REASON_BYTES`
    bytes of UTF-8; newlines allowed, no other control character (category Cc: NUL, ESC,
    tab, CR, DEL, C1 controls). Format characters (right-to-left marks) are allowed, since
    right-to-left text needs them; ``quotactl`` shows them escaped. :class:`InvalidRequest`
    names the limit or the character, never echoing the reason."""
    size = len(reason.encode("utf-8", errors="surrogatepass"))
    if size > MAX_REASON_BYTES:
        raise InvalidRequest(f"reason is {size} bytes; at most {MAX_REASON_BYTES} bytes (UTF-8) are allowed")
    for position, ch in enumerate(reason):
        if ch != "\n" and unicodedata.category(ch) == "Cc":
            raise InvalidRequest(
                f"reason holds U+{ord(ch):04X} at character {position}: "
                "no control characters other than newlines are allowed"
            )
    return reason


def _describe_char(ch: str) -> str:
    name = unicodedata.name(ch, "")
    return f"U+{ord(ch):04X}" + (f" ({name})" if name else "")


@dataclass(frozen=True, slots=True)
class QuotaRequest:
    """A validated CheckAndReserve request. ``usage`` is in whole units, zero amounts
    dropped, never ``cost_usd``. ``feature``, ``provider`` and ``model`` are canonical.
    ``ttl_seconds`` 0 means the policy default."""

    subject: str
    feature: str
    provider: str
    model: str
    usage: Mapping[str, int]
    request_id: str = ""
    dry_run: bool = False
    ttl_seconds: int = 0


def build_request(
    *,
    subject: str,
    feature: str,
    provider: str,
    model: str,
    usage: Mapping[str, float],
    request_id: str = "",
    dry_run: bool = False,
    ttl_seconds: int = 0,
) -> QuotaRequest:
    """Validate wire values into a :class:`QuotaRequest`; :class:`InvalidRequest` otherwise."""
    validate_subject(subject)
    feature = canonical_name("feature", feature)
    provider = canonical_name("provider", provider, required=False)
    model = canonical_name("model", model, required=False)
    validate_name("request_id", request_id, required=False)
    if model and not provider:
        raise InvalidRequest("model given without provider")
    if ttl_seconds < 0 or ttl_seconds > MAX_TTL_SECONDS:
        raise InvalidRequest(f"reservation_ttl_seconds must be between 0 and {MAX_TTL_SECONDS}")
    units = parse_usage(dict(usage))
    if not units:
        raise InvalidRequest("usage must name at least one metric with a positive amount")
    return QuotaRequest(subject, feature, provider, model, units, request_id, dry_run, ttl_seconds)


__all__ = [
    "MAX_NAME_BYTES",
    "MAX_REASON_BYTES",
    "MAX_TTL_SECONDS",
    "QuotaRequest",
    "build_request",
    "canonical_name",
    "validate_name",
    "validate_reason",
    "validate_subject",
]
