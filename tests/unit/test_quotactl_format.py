"""quotactl's value formatting: money, counts, ratios, times, durations, tables."""

from __future__ import annotations

import pytest

from quota_service import quotactl_format as fmt

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("usd", "shown"),
    [
        (0.0, "$0.00"),
        (1.5, "$1.50"),
        (1.23, "$1.23"),
        (200.0, "$200.00"),
        (1234.5, "$1,234.50"),
        (0.0006, "$0.0006"),
        (0.000001, "$0.000001"),
        (1.0000000000000002, "$1.00"),  # float noise never shows: whole micro-dollars
        (0.1 + 0.2, "$0.30"),
        (-2.0, "-$2.00"),
        (0.0000004, "$0.00"),  # below a micro-dollar
    ],
)
def test_money(usd: float, shown: str) -> None:
    assert fmt.money(usd) == shown


@pytest.mark.parametrize(
    ("value", "shown"), [(0, "0"), (950, "950"), (12000, "12,000"), (1_000_000, "1,000,000"), (2.5, "2.5")]
)
def test_count(value: float, shown: str) -> None:
    assert fmt.count(value) == shown


def test_amount_is_money_only_for_cost_usd() -> None:
    assert fmt.amount("cost_usd", 5) == "$5.00"
    assert fmt.amount("tokens", 5) == "5"
    assert fmt.amount("images", 1200) == "1,200"


@pytest.mark.parametrize(
    ("ratio", "shown"),
    [
        (0.0, "0.0%"),
        (0.94, "94.0%"),
        (0.29, "29.0%"),
        (0.95, "95.0%"),
        (0.9499, "94.9%"),  # truncated: never shows a block threshold not yet reached
        (1.0, "100.0%"),
        (1.2345, "123.4%"),
        (float("nan"), "-"),
        (float("inf"), "-"),
    ],
)
def test_percent(ratio: float, shown: str) -> None:
    assert fmt.percent(ratio) == shown


def test_timestamps_are_iso_8601_utc() -> None:
    assert fmt.timestamp(1795564800) == "2026-11-25T00:00:00Z"
    assert fmt.timestamp(0) == "-"
    assert fmt.timestamp(0, zero="never") == "never"
    assert fmt.timestamp_ms(1795564800123) == "2026-11-25T00:00:00.123Z"
    assert fmt.timestamp_ms(1795564800005) == "2026-11-25T00:00:00.005Z"
    assert fmt.timestamp_ms(0) == "-"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0),
        ("3600", 3600),
        ("90s", 90),
        ("30m", 1800),
        ("2h", 7200),
        ("7d", 604800),
        ("1w", 604800),
        ("12H", 43200),
    ],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert fmt.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "-5", "1.5h", "2y", "h", "1h30m"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        fmt.parse_duration(text)


def test_duration() -> None:
    assert fmt.duration(0) == "0s"
    assert fmt.duration(5400) == "1h30m"
    assert fmt.duration(90061) == "1d1h1m1s"


def test_table_aligns_text_left_and_numbers_right() -> None:
    text = fmt.table(["SUBJECT", "USED", "NOTE"], [["alice", "1,000", "x"], ["bob", "5", ""]], right=(1,))
    assert text.splitlines() == [
        "SUBJECT   USED  NOTE",
        "alice    1,000  x",
        "bob          5",
    ]


def test_table_refuses_ragged_rows() -> None:
    with pytest.raises(ValueError, match="2 cells"):
        fmt.table(["A", "B", "C"], [["1", "2"]])


def test_fields_align_values_and_indent_continuation_lines() -> None:
    text = fmt.fields([("version", "abc"), ("error", ["line one", "line two"]), ("empty", ""), ("none", [])])
    assert text.splitlines() == [
        "version  abc",
        "error    line one",
        "         line two",
        "empty",
        "none",
    ]


@pytest.mark.parametrize(
    ("before", "after", "shown"),
    [
        ('{"tier": null}', '{"tier": "basic_alpha"}', "tier: null -> basic_alpha"),
        ('{"tier": "a", "x": 1}', '{"tier": "b", "x": 1}', "tier: a -> b"),
        ('{"used": 5}', '{"counters_reset": 1}', '{"used":5} -> {"counters_reset":1}'),
        ("null", '{"scope": "SUBJECT", "created_at": 1, "created_by": "token:x"}', 'set {"scope":"SUBJECT"}'),
        ("null", '{"max": 20.0, "metric": "images"}', 'set {"max":20.0,"metric":"images"}'),
        ('{"scope": "GLOBAL"}', "null", 'removed {"scope":"GLOBAL"}'),
        ("", "", "null -> null"),
        ('{"a": 1}', '{"a": 1}', "no change"),
        ("not json", "{}", "not json -> {}"),
    ],
)
def test_describe_change(before: str, after: str, shown: str) -> None:
    assert fmt.describe_change(before, after) == shown


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text, 100 % ok: é ü 漢字 🚀 \\ back\\slash", "plain text, 100 % ok: é ü 漢字 🚀 \\ back\\slash"),
        ("a\nb", "a\\nb"),
        ("a\r\nb\tc", "a\\r\\nb\\tc"),
        ("\x00\x07\x08\x0b\x0c\x1b[31m\x7f", "\\x00\\x07\\x08\\x0b\\x0c\\x1b[31m\\x7f"),
        ("\x85\x9b31m", "\\x85\\x9b31m"),  # C1 controls: NEL, CSI
        ("\u202a\u202b\u202c\u202d\u202e", "\\u202a\\u202b\\u202c\\u202d\\u202e"),  # bidi embeddings, overrides
        ("\u2066\u2067\u2068\u2069", "\\u2066\\u2067\\u2068\\u2069"),  # bidi isolates
        ("\u200b\u200e\u200f\u2060\ufeff\u00ad", "\\u200b\\u200e\\u200f\\u2060\\ufeff\\xad"),  # invisible
        ("\u2028\u2029", "\\u2028\\u2029"),  # line and paragraph separators
        ("\U000e0041", "\\U000e0041"),  # a tag character (invisible text smuggling)
        ("", ""),
    ],
)
def test_visible_escapes_what_would_act_on_the_terminal_or_hide(text: str, shown: str) -> None:
    assert fmt.visible(text) == shown
    assert fmt.visible(shown) == shown  # what it shows is safe to show again


def test_every_table_cell_and_field_value_is_escaped() -> None:
    forged = "ok\nbob    999  FORGED\x1b[2J\u202e"
    text = fmt.table(["SUBJECT", "NOTE"], [["alice", forged]])
    assert text.splitlines() == [
        "SUBJECT  NOTE",
        "alice    ok\\nbob    999  FORGED\\x1b[2J\\u202e",
    ]
    assert fmt.fields([("reason", "a\nb\x1b[2J\u2066"), ("error", ["one\n", "two\r"])]).splitlines() == [
        "reason  a\\nb\\x1b[2J\\u2066",  # a value is one line
        "error   one\\n",  # lines given as lines stay lines, each escaped
        "        two\\r",
    ]


def test_a_crossing_and_a_usage_record_read_as_a_sentence() -> None:
    assert (
        fmt.event_detail(
            "THRESHOLD_CROSSED",
            "",
            "",
            "tokens",
            "day",
            threshold="THRESHOLD_WARN",
            limit_used=860,
            limit_max=1000,
            limit_kind="LIMIT_KIND_HARD_STOP",
        )
        == "WARN (hard stop) tokens/day 860 of 1,000 (86%)"
    )
    committed = fmt.event_detail(
        "COMMITTED", "{}", "", "", "", decision="WARN", actual={"tokens": 280, "cost_usd": 168}
    )
    assert committed == "WARN tokens=280"


def test_a_shadow_divergence_says_the_pair_the_reason_and_the_limit() -> None:
    detail = '{"divergence":"ALLOW->DENY","live":{"decision":"ALLOW"},"shadow":{"decision":"DENY"}}'
    text = fmt.event_detail("SHADOW_DIVERGED", detail, "BLOCK_THRESHOLD", "tokens", "day")
    assert text == "shadow ALLOW->DENY BLOCK_THRESHOLD tokens/day"
