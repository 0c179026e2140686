"""Names and sizes at the edge (issue 12 #6, #7): one validation for every RPC."""

from __future__ import annotations

import pytest

from quota_service.errors import InvalidRequest, shown
from quota_service.policy.validation import (
    MAX_NAME_BYTES,
    MAX_REASON_BYTES,
    build_request,
    canonical_name,
    validate_name,
    validate_reason,
    validate_subject,
)

pytestmark = pytest.mark.unit

LOOK_ALIKES = [
    "openai\u200b",  # ZERO WIDTH SPACE (Cf)
    "\u202eopenai",  # RIGHT-TO-LEFT OVERRIDE (Cf)
    "openai\x9b",  # C1 control CSI (Cc)
    "open\u2066ai",  # LEFT-TO-RIGHT ISOLATE (Cf)
    "openai\ufeff",  # BYTE ORDER MARK / ZWNBSP (Cf)
    "open\u00adai",  # SOFT HYPHEN (Cf)
    "openai\u00a0",  # NO-BREAK SPACE (Zs)
    "open ai",
    "openai\n",
    "open{ai}",
    "openai\x00",
    "openai\ue000",  # private use (Co)
    "openai\U000e0001",  # LANGUAGE TAG (Cf)
]


@pytest.mark.parametrize("value", LOOK_ALIKES)
@pytest.mark.parametrize("field", ["feature", "provider", "model", "request_id", "subject"])
def test_invisible_bidi_control_and_space_characters_are_refused_in_every_name(field: str, value: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        validate_name(field, value)
    assert field in str(refused.value)
    assert "U+" in str(refused.value) or "too long" in str(refused.value)


@pytest.mark.parametrize("value", LOOK_ALIKES)
def test_look_alike_providers_are_refused_by_build_request(value: str) -> None:
    with pytest.raises(InvalidRequest, match="provider"):
        build_request(subject="u1", feature="chat", provider=value, model="m", usage={"tokens": 1})


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("OpenAI", "openai"),
        ("OPENAI", "openai"),
        ("openai", "openai"),
        ("\uff4f\uff50\uff45\uff4e\uff41\uff49", "openai"),  # full-width letters
        ("Stra\u00dfe", "strasse"),  # case folding, not just lower()
        ("meta-llama/Llama-3-70B", "meta-llama/llama-3-70b"),
    ],
)
def test_features_providers_and_models_compare_on_one_canonical_form(written: str, canonical: str) -> None:
    assert canonical_name("provider", written) == canonical
    request = build_request(subject="U-1", feature=written, provider=written, model=written, usage={"tokens": 1})
    assert (request.feature, request.provider, request.model) == (canonical, canonical, canonical)
    assert request.subject == "U-1"  # subjects are exact


def test_compatibility_forms_that_fold_into_refused_characters_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="U\\+007B"):
        canonical_name("feature", "a\ufe5bb")  # SMALL LEFT CURLY BRACKET folds to "{"


def test_names_are_bounded_in_utf8_bytes_not_characters() -> None:
    assert validate_name("subject", "a" * MAX_NAME_BYTES)
    with pytest.raises(InvalidRequest, match="too long"):
        validate_name("subject", "a" * (MAX_NAME_BYTES + 1))
    with pytest.raises(InvalidRequest, match="too long"):
        validate_name("subject", "\u00e9" * (MAX_NAME_BYTES // 2 + 1))  # 2 bytes each


def test_a_refused_value_is_never_echoed_whole() -> None:
    huge = "x" * 20_000 + "\n"
    with pytest.raises(InvalidRequest) as refused:
        validate_name("model", huge)
    assert len(str(refused.value)) < 300
    assert "20001 bytes" in str(refused.value)
    assert len(shown("y" * 20_000)) < 100
    assert shown("a\x1bb") == repr("a\x1bb")  # control characters escaped


def test_reserved_scopes_are_not_subjects() -> None:
    with pytest.raises(InvalidRequest, match="company-wide scope, not a subject"):
        validate_subject("__global__")
    for name in ("__stops__", "__anything"):
        with pytest.raises(InvalidRequest, match="reserved"):
            validate_subject(name)
    with pytest.raises(InvalidRequest, match="company-wide"):
        build_request(subject="__global__", feature="f", provider="", model="", usage={"tokens": 1})
    assert validate_subject("_single_underscore") == "_single_underscore"


def test_reasons_are_bounded_and_free_of_terminal_control_codes() -> None:
    assert validate_reason("line one\nline two") == "line one\nline two"
    with pytest.raises(InvalidRequest, match="at most 1024 bytes"):
        validate_reason("r" * (MAX_REASON_BYTES + 1))
    for bad in ("\x1b[2J", "a\x00b", "bell\x07", "tab\there"):
        with pytest.raises(InvalidRequest, match="U\\+"):
            validate_reason(bad)


def test_a_trailing_newline_is_not_a_valid_metric_name() -> None:
    from quota_service.policy.units import parse_usage, validate_metric_name

    with pytest.raises(InvalidRequest, match="metric name"):
        validate_metric_name("tokens\n")
    with pytest.raises(InvalidRequest, match="metric name"):
        parse_usage({"tokens\n": 1.0})
