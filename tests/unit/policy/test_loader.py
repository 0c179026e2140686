"""The load pipeline: one fixture per error, each asserted against its exact message."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from quota_service.errors import PolicyError
from quota_service.policy.compiled import CompiledPolicy, StoreErrorMode, UnpricedMode
from quota_service.policy.loader import dotted_key, load_policy, policy_files
from quota_service.policy.windows import Window

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
ALPHA = ROOT / "policies" / "alpha.yaml"
FIXTURES = ROOT / "tests" / "fixtures" / "policies"
INVALID = FIXTURES / "invalid"
VALID = FIXTURES / "valid"
MULTI = FIXTURES / "multi"

# fixture -> the complete message list; "{f}" is the fixture's path (a directory's files
# are "{f}/name").
EXPECTED: dict[str, list[str]] = {
    "uppercase_price_pattern.yaml": [
        "{f}:4: prices.\"OpenAI/GPT-4o\": invalid price pattern 'OpenAI/GPT-4o': write 'openai/gpt-4o'; "
        "providers and models are compared case-insensitively (Unicode NFKC, case-folded), so patterns are "
        "written in that form"
    ],
    "uppercase_feature.yaml": [
        "{f}:5: tiers.free.features[0]: invalid feature name 'Blog_Writer': write 'blog_writer'; features are "
        "compared case-insensitively (Unicode NFKC, case-folded), so they are written in that form"
    ],
    "unknown_top_level_key.yaml": [
        "{f}:3: limit_mode: unknown key; expected one of: version, default_tier, timezone, thresholds, "
        "reservation_ttl_seconds, commit_max_ratio, unpriced, on_store_error, prices, hard_stops, tiers, "
        "notifications, ledger_retention_days, on_store_lost, on_cross, fail_open_allowance"
    ],
    "unknown_tier_key.yaml": [
        "{f}:8: tiers.free.on_store_eror: unknown key (did you mean 'on_store_error'?); expected one of: "
        "display_name, features, limits, hard_stops, thresholds, on_store_error, reservation_ttl_seconds, "
        "commit_max_ratio, on_cross, fail_open_allowance"
    ],
    "negative_cap.yaml": ["{f}:8: tiers.free.limits.tokens.day: must not be negative, got -5"],
    "string_cap.yaml": ["{f}:8: tiers.free.limits.tokens.day: must be a number, got '1000'"],
    "bool_cap.yaml": ["{f}:8: tiers.free.limits.images.day: must be a number, got true"],
    "warn_above_block.yaml": ["{f}:3: thresholds: warn_at (0.96) must not be greater than block_at (0.95)"],
    "tier_warn_above_block.yaml": [
        "{f}:9: tiers.free.thresholds: warn_at (0.97) must not be greater than "
        "block_at (0.95, inherited from the top-level thresholds)"
    ],
    "threshold_zero.yaml": ["{f}:4: thresholds.warn_at: must be greater than 0 and at most 1, got 0"],
    "threshold_above_one.yaml": ["{f}:4: thresholds.block_at: must be greater than 0 and at most 1, got 1.5"],
    "missing_default_tier.yaml": ["{f}:2: default_tier: tier 'gold' is not defined under tiers (defined: free, pro)"],
    "unknown_window.yaml": [
        "{f}:8: tiers.free.limits.tokens.week: unknown window 'week'; expected one of: minute, hour, day, month"
    ],
    "bad_metric_name.yaml": [
        "{f}:7: tiers.free.limits.Tokens: invalid metric name 'Tokens': use lower-case letters, digits and '_', "
        "starting with a letter, at most 63 characters"
    ],
    "bad_timezone.yaml": [
        "{f}:3: timezone: unknown timezone 'Mars/Olympus_Mons'; expected an IANA name such as 'UTC' or 'Europe/Berlin'"
    ],
    "bad_yaml_syntax.yaml": [
        "{f}:6: invalid YAML: while parsing a flow sequence (line 5), expected ',' or ']', but got ':'"
    ],
    "duplicate_key.yaml": ["{f}:9: tiers.free.limits.tokens: duplicate key; first defined on line 7"],
    "fractional_micro_dollar.yaml": [
        "{f}:8: tiers.free.limits.cost_usd.month: 10.0000005 is not a whole number of micro-dollars "
        "(at most 6 decimals)"
    ],
    "fractional_token_cap.yaml": ["{f}:8: tiers.free.limits.tokens.day: 2.5 is not a whole number of tokens"],
    "bad_price_pattern.yaml": [
        "{f}:5: prices.openai: invalid price pattern 'openai': expected 'provider/model', 'provider/*' or '*'"
    ],
    "priced_cost.yaml": [
        '{f}:6: prices."*".cost_usd: cost_usd is derived from the other metrics\' prices and cannot be priced itself'
    ],
    "unpriced_maybe.yaml": ["{f}:3: unpriced: must be one of deny, free; got 'maybe'"],
    "unsupported_version.yaml": ["{f}:1: version: unsupported version 2; this service reads version 1"],
    "ttl_zero.yaml": ["{f}:3: reservation_ttl_seconds: must be between 1 and 86400 seconds, got 0"],
    "missing_limits.yaml": ["{f}:4: tiers.free.limits: required key is missing"],
    "missing_version.yaml": ["{f}: version: required key is missing"],
    "not_a_mapping.yaml": ["{f}:2: the file must contain a mapping of policy settings, got a list"],
    "empty.yaml": ["{f}: the file is empty; expected a mapping of policy settings"],
    "duplicate_tier_dir": [
        "{f}/b.yaml:7: tiers.free: also defined in {f}/a.yaml:4; "
        "each tier, price pattern and top-level setting may be defined in one file only"
    ],
    "duplicate_setting_dir": [
        "{f}/b.yml:1: timezone: also defined in {f}/a.yaml:3; "
        "each tier, price pattern and top-level setting may be defined in one file only"
    ],
    "no_policy_files_dir": ["{f}: no *.yaml or *.yml policy files in this directory"],
    "not_utf8.yaml": ["{f}:3: the file is not valid UTF-8 text"],
    # keys are their literal text: YAML 1.1 would read "on" as the boolean true
    "yaml_boolean_word_key.yaml": [
        "{f}:8: tiers.free.limits.tokens.on: unknown window 'on'; expected one of: minute, hour, day, month"
    ],
    "recursive_alias.yaml": ["{f}:8: tiers.free.thresholds: recursive alias"],
    "complex_key.yaml": ["{f}:3: mapping keys must be plain names, not lists or mappings"],
    "two_documents.yaml": [
        "{f}:2: invalid YAML: expected a single document in the stream (line 1), but found another document"
    ],
    # --- hostile input: refused with file, line and key, never another exception ----------
    "nul_byte.yaml": ["{f}:63: the file contains a NUL byte; a policy file is UTF-8 text"],
    "utf16_bom.yaml": ["{f}:1: the file is UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8"],
    "utf16_no_bom.yaml": ["{f}:1: the file contains NUL bytes: it looks like UTF-16 or UTF-32 text; save it as UTF-8"],
    "control_character.yaml": ["{f}:4: the file contains the control character U+0001, which YAML does not allow"],
    "surrogate_escape.yaml": [
        "{f}:4: timezone: contains an escaped surrogate (\\ud800 to \\udfff), which is not valid text"
    ],
    "deep_lists.yaml": ["{f}:2: nested more than 64 levels deep"],
    "deep_mappings.yaml": ["{f}:2: nested more than 64 levels deep"],
    "alias_bomb.yaml": [
        "{f}:6: e[0]: aliases expand to more than 10,000 YAML nodes (keys, values, items); "
        "write the values out, or share less through anchors"
    ],
    "merge_not_mapping.yaml": ["{f}:6: tiers.free: a merge key (<<) takes a mapping or a list of mappings"],
    "recursive_merge.yaml": ["{f}:6: tiers.free: recursive alias"],
    "binary_tag.yaml": [
        "{f}:9: tiers.free.limits.tokens.day: the YAML tag '!!binary' is not supported; write plain values"
    ],
    "bad_int_tag.yaml": ["{f}:9: tiers.free.limits.tokens.day: 'twelve' is not a decimal integer"],
    # --- YAML 1.1 number forms: text, refused where a number is expected, with a hint ------
    "octal_cap.yaml": [
        "{f}:9: tiers.free.limits.tokens.day: must be a number, got '010'; "
        "write 10 (a leading zero is read as octal in YAML 1.1)"
    ],
    "hex_cap.yaml": [
        "{f}:9: tiers.free.limits.tokens.day: must be a number, got '0x10'; "
        "write the decimal 16 (hexadecimal numbers are not accepted)"
    ],
    "binary_cap.yaml": [
        "{f}:9: tiers.free.limits.tokens.day: must be a number, got '0b101'; "
        "write the decimal 5 (binary numbers are not accepted)"
    ],
    "sexagesimal_cap.yaml": [
        "{f}:9: tiers.free.limits.tokens.day: must be a number, got '1:30'; "
        "write the decimal 90 if that is meant (YAML 1.1 reads 1:30 as a base-60 number)"
    ],
    "thousands_cap.yaml": [
        "{f}:9: tiers.free.limits.tokens.day: must be a number, got '1,000'; "
        "write 1000 or 1_000 (commas are not digit separators)"
    ],
    "yes_cap.yaml": ["{f}:9: tiers.free.limits.tokens.day: must be a number, got 'yes'"],
    "octal_ttl.yaml": [
        "{f}:4: reservation_ttl_seconds: must be an integer, got '030'; "
        "write 30 (a leading zero is read as octal in YAML 1.1)"
    ],
    "decimal_ttl.yaml": [
        "{f}:4: reservation_ttl_seconds: must be an integer written without a decimal point or exponent, got 3E+2"
    ],
    # --- numbers that cannot be used where they are used --------------------------------
    "long_integer_cap.yaml": [
        "{f}:9: tiers.free.limits.tokens.day: a number of 41 characters is too long (at most 40)"
    ],
    "huge_exponent_cap.yaml": [
        "{f}:9: tiers.free.limits.tokens.day: 1E+50 is out of range: a number in a policy is 0 or "
        "between 1e-40 and 1e+40"
    ],
    "too_large_cap.yaml": [
        "{f}:9: tiers.free.limits.tokens.day: 100000000000000000000 is larger than the largest supported cap "
        "(9,007,199,254,740,991 units)"
    ],
    "precise_threshold.yaml": ["{f}:4: thresholds.warn_at: 0.8000000000001 has more than 12 decimals"],
    "huge_price.yaml": [
        '{f}:5: prices."openai/gpt-4o-mini".tokens: 1.0E+999999999 is out of range: a number in a policy is 0 '
        "or between 1e-40 and 1e+40"
    ],
    "nan_price.yaml": ['{f}:5: prices."*".tokens: must be a finite number, got NaN'],
    "infinite_price.yaml": ['{f}:5: prices."*".images: must be a finite number, got Infinity'],
    "negative_price.yaml": ['{f}:5: prices."*".tokens: must not be negative, got -0.000001'],
    "precise_price.yaml": [
        '{f}:5: prices."*".tokens: 0.0000000000000000001 has more than 18 decimals (prices are USD per unit)'
    ],
    "expensive_price.yaml": [
        '{f}:5: prices."*".images: 10000000000 is larger than the largest supported price '
        "(9,007,199,254.740991 USD per unit: one unit's cost must fit in a cost counter)"
    ],
}


def _messages(path: Path) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    return [str(issue) for issue in caught.value.issues]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_invalid_fixture_gives_its_exact_message(name: str) -> None:
    path = INVALID / name
    assert _messages(path) == [message.format(f=path) for message in EXPECTED[name]]


def test_every_invalid_fixture_has_an_expected_message() -> None:
    assert sorted(p.name for p in INVALID.iterdir()) == sorted(EXPECTED)


def test_policy_error_text_lists_every_issue() -> None:
    path = INVALID / "negative_cap.yaml"
    with pytest.raises(PolicyError) as caught:
        load_policy(str(path))
    assert str(caught.value) == f"{path}:8: tiers.free.limits.tokens.day: must not be negative, got -5"
    issue = caught.value.issues[0]
    assert (issue.file, issue.line, issue.key) == (str(path), 8, "tiers.free.limits.tokens.day")


def test_all_validation_errors_of_a_file_are_reported_in_line_order() -> None:
    path = MULTI / "many_errors.yaml"
    assert _messages(path) == [
        f"{path}:3: colour: unknown key; expected one of: version, default_tier, timezone, thresholds, "
        "reservation_ttl_seconds, commit_max_ratio, unpriced, on_store_error, prices, hard_stops, tiers, "
        "notifications, ledger_retention_days, on_store_lost, on_cross, fail_open_allowance",
        f"{path}:4: thresholds.warn_at: must be greater than 0 and at most 1, got 1.2",
        f"{path}:9: tiers.free.limits.tokens.day: must not be negative, got -1",
        f"{path}:10: tiers.free.limits.images.fortnight: unknown window 'fortnight'; "
        "expected one of: minute, hour, day, month",
        f"{path}:11: tiers.pro.limits: required key is missing",
    ]


def test_all_semantic_errors_are_reported() -> None:
    path = MULTI / "many_semantic_errors.yaml"
    assert _messages(path) == [
        f"{path}:2: default_tier: tier 'gold' is not defined under tiers (defined: free)",
        f"{path}:7: tiers.free.limits.tokens.day: 0.5 is not a whole number of tokens",
        f"{path}:8: tiers.free.thresholds: warn_at (0.80, inherited from the top-level thresholds) "
        "must not be greater than block_at (0.5)",
    ]


def test_every_duplicate_key_is_reported() -> None:
    path = MULTI / "duplicate_keys.yaml"
    assert _messages(path) == [
        f"{path}:3: version: duplicate key; first defined on line 1",
        f"{path}:8: tiers.free.limits.tokens.day: duplicate key; first defined on line 8",
    ]


def test_missing_path_is_an_issue() -> None:
    path = FIXTURES / "no-such-policy.yaml"
    assert _messages(path) == [f"{path}: no such file or directory"]


def test_shipped_alpha_policy_loads() -> None:
    policy = load_policy(ALPHA)
    assert isinstance(policy, CompiledPolicy)
    assert policy.files == (str(ALPHA),)
    assert list(policy.tiers) == ["free_alpha", "basic_alpha", "pro_alpha"]
    assert policy.default_tier == "free_alpha"
    assert policy.timezone.key == "UTC"
    assert policy.unpriced is UnpricedMode.DENY
    assert policy.on_store_error is StoreErrorMode.DENY
    assert policy.reservation_ttl_seconds == 300


def test_yaml_floats_are_exact_decimals() -> None:
    policy = load_policy(ALPHA)
    assert policy.thresholds.warn_at == Decimal("0.80")
    assert policy.thresholds.block_at == Decimal("0.95")
    assert str(policy.thresholds.block_at) == "0.95"
    assert policy.prices.rate("openai", "gpt-4o-mini", "tokens") == Decimal("0.0000006")


def test_shipped_policies_directory_loads_like_the_file() -> None:
    from_dir = load_policy(ALPHA.parent)
    from_file = load_policy(ALPHA)
    assert from_dir.files == (str(ALPHA),)  # schema.json is not a policy file
    assert from_dir.version == from_file.version


def test_version_is_a_stable_content_hash() -> None:
    first, second = load_policy(ALPHA), load_policy(ALPHA)
    assert first.version == second.version
    assert len(first.version) == 16
    int(first.version, 16)
    assert load_policy(VALID / "anchors.yaml").version != first.version


def test_directory_files_are_merged_in_name_order() -> None:
    directory = VALID / "split_dir"
    policy = load_policy(directory)
    assert policy.files == tuple(str(directory / name) for name in ("00-settings.yaml", "10-free.yaml", "20-team.yml"))
    assert list(policy.tiers) == ["free", "team"]
    assert list(policy.prices.entries) == ["*", "openai/*", "openai/gpt-4.1"]
    assert policy.timezone.key == "Europe/Berlin"
    assert policy.tiers["team"].display_name == "Team"
    assert policy.prices.rate("openai", "gpt-4.1", "tokens") == Decimal("0.000008")
    assert policy.prices.rate("openai", "o3", "tokens") == Decimal("0.000002")


def test_yaml_anchors_and_merge_keys_work() -> None:
    policy = load_policy(VALID / "anchors.yaml")
    large = policy.tiers["large"]
    assert large.display_name == "Large"
    assert large.features == frozenset({"blog_writer"})
    assert [(limit.metric, limit.window, limit.max_units) for limit in large.limits] == [
        ("tokens", Window.DAY, 1_000_000)
    ]


def test_policy_files_lists_a_directory_sorted_and_skips_other_files() -> None:
    directory = VALID / "split_dir"
    assert [p.name for p in policy_files(directory)] == ["00-settings.yaml", "10-free.yaml", "20-team.yml"]
    assert policy_files(ALPHA) == [ALPHA]


@pytest.mark.parametrize(
    ("loc", "expected"),
    [
        (("tiers", "free_alpha", "limits", "tokens", "day"), "tiers.free_alpha.limits.tokens.day"),
        (("tiers", "free", "features", 1), "tiers.free.features[1]"),
        (("prices", "openai/gpt-4o", "tokens"), 'prices."openai/gpt-4o".tokens'),
        (("prices", "*"), 'prices."*"'),
        ((), ""),
    ],
)
def test_dotted_key(loc: tuple[str | int, ...], expected: str) -> None:
    assert dotted_key(loc) == expected
