"""diff-policy: exactly the changed caps, thresholds, prices, features and hard stops, and
nothing else; exit 0 / 2 / 1 like simulate."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from quota_service.cli import main
from quota_service.lifecycle.diff import Category, Standing, diff_policies, standing, standing_counters
from quota_service.policy.compiled import CompiledPolicy
from quota_service.policy.compiler import compile_policy
from quota_service.policy.domain import CounterValue, Decision, Reason, SubjectConfig
from quota_service.policy.loader import load_policy
from quota_service.policy.model import PolicyModel

pytestmark = pytest.mark.unit

ALPHA = Path(__file__).resolve().parents[3] / "policies" / "alpha.yaml"

BASE: dict[str, Any] = {
    "version": 1,
    "default_tier": "free",
    "timezone": "UTC",
    "thresholds": {"warn_at": "0.80", "block_at": "0.95"},
    "prices": {"openai/gpt-4o-mini": {"tokens": "0.0000006"}, "*": {"tokens": "0.0001", "images": "0.05"}},
    "hard_stops": {"per_subject": {"tokens": {"day": 1000}}, "global": {"cost_usd": {"day": "200.00"}}},
    "tiers": {
        "free": {
            "display_name": "Free",
            "features": ["blog_writer", "basic_seo"],
            "limits": {"tokens": {"day": 1000}, "images": {"day": 5}, "cost_usd": {"month": "10.00"}},
        },
        "pro": {
            "features": ["*"],
            "limits": {"tokens": {"day": 50000}},
            "hard_stops": {"tokens": {"day": 60000}},
            "thresholds": {"warn_at": "0.9"},
        },
    },
}


def _numbers(value: Any) -> Any:
    """Numbers written as text here (exact, as YAML gives them to the loader) as Decimal."""
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, str) and value.replace(".", "", 1).isdigit():
        return Decimal(value)
    return value


def _policy(document: dict[str, Any], version: str) -> CompiledPolicy:
    return compile_policy(PolicyModel.model_validate(_numbers(document)), files=("inline.yaml",), version=version)


def _changed(**edits: Any) -> dict[str, Any]:
    document = copy.deepcopy(BASE)
    for path, value in edits.items():
        node = document
        *parents, last = path.split("__")
        for part in parents:
            node = node[part]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return document


def _rows(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str, str, str | None, str | None]]:
    diff = diff_policies(_policy(old, "a"), _policy(new, "b"))
    return [(c.tier, c.category.value, c.key, c.before, c.after) for c in diff.changes]


def test_identical_policies_have_no_change() -> None:
    diff = diff_policies(_policy(BASE, "a"), _policy(copy.deepcopy(BASE), "b"))
    assert not diff.changed
    assert diff.changes == ()
    assert diff.text() == "no change: policy a and b decide the same"


def test_the_same_numbers_written_differently_are_no_change() -> None:
    # 0.8 == 0.80, 10 == 10.00: the engine decides the same.
    new = _changed(thresholds={"warn_at": "0.8", "block_at": "0.950"})
    new["tiers"]["free"]["limits"]["cost_usd"] = {"month": 10}
    assert _rows(BASE, new) == []


def test_a_cap_change_is_reported_in_its_tier_and_nothing_else() -> None:
    new = copy.deepcopy(BASE)
    new["tiers"]["free"]["limits"]["tokens"] = {"day": 500}
    assert _rows(BASE, new) == [("free", "cap", "tokens/day", "1000", "500")]


def test_a_money_cap_is_in_usd() -> None:
    new = copy.deepcopy(BASE)
    new["tiers"]["free"]["limits"]["cost_usd"] = {"month": "12.50"}
    diff = diff_policies(_policy(BASE, "a"), _policy(new, "b"))
    (change,) = diff.changes
    assert (change.before, change.after) == ("10", "12.5")
    assert change.line() == "cap cost_usd/month: $10.00 -> $12.50"


def test_caps_added_and_removed() -> None:
    new = copy.deepcopy(BASE)
    new["tiers"]["free"]["limits"] = {"tokens": {"day": 1000, "hour": 200}, "cost_usd": {"month": "10.00"}}
    assert _rows(BASE, new) == [
        ("free", "cap", "images/day", "5", None),
        ("free", "cap", "tokens/hour", None, "200"),
    ]


def test_a_default_threshold_change_shows_policy_wide_and_in_each_tier_that_inherits_it() -> None:
    new = _changed(thresholds={"warn_at": "0.70", "block_at": "0.95"})
    # pro sets its own warn_at: unchanged there.
    assert _rows(BASE, new) == [
        ("", "threshold", "warn_at", "0.8", "0.7"),
        ("free", "threshold", "warn_at", "0.8", "0.7"),
    ]


def test_a_tier_threshold_change() -> None:
    new = copy.deepcopy(BASE)
    new["tiers"]["pro"]["thresholds"] = {"warn_at": "0.9", "block_at": "0.99"}
    assert _rows(BASE, new) == [("pro", "threshold", "block_at", "0.95", "0.99")]


def test_price_changes_added_and_removed() -> None:
    new = copy.deepcopy(BASE)
    new["prices"] = {
        "openai/gpt-4o-mini": {"tokens": "0.0000012"},
        "stability/*": {"images": "0.04"},
        "*": {"tokens": "0.0001"},
    }
    assert _rows(BASE, new) == [
        ("", "price", "* images", "0.05", None),
        ("", "price", "openai/gpt-4o-mini tokens", "0.0000006", "0.0000012"),
        ("", "price", "stability/* images", None, "0.04"),
    ]


def test_feature_access() -> None:
    new = copy.deepcopy(BASE)
    new["tiers"]["free"]["features"] = ["blog_writer", "seo_analysis"]
    new["tiers"]["pro"]["features"] = ["blog_writer"]
    assert _rows(BASE, new) == [
        ("free", "feature", "basic_seo", "included", None),
        ("free", "feature", "seo_analysis", None, "included"),
        ("pro", "feature", "*", "included", None),
        ("pro", "feature", "blog_writer", None, "included"),
    ]


def test_hard_stops_per_subject_reach_every_tier_that_inherits_them() -> None:
    new = _changed(hard_stops={"per_subject": {"tokens": {"day": 800}}, "global": {"cost_usd": {"day": "200.00"}}})
    assert _rows(BASE, new) == [("free", "hard_stop", "tokens/day", "1000", "800")]  # pro has its own


def test_global_limits_timezone_and_settings() -> None:
    new = _changed(
        hard_stops={"per_subject": {"tokens": {"day": 1000}}, "global": {"cost_usd": {"day": "150"}}},
        timezone="Europe/Paris",
        unpriced="free",
    )
    assert _rows(BASE, new) == [
        ("", "global_limit", "cost_usd/day", "200", "150"),
        ("", "setting", "timezone", "UTC", "Europe/Paris"),
        ("", "setting", "unpriced", "deny", "free"),
    ]


def test_a_tier_added_and_one_removed() -> None:
    new = copy.deepcopy(BASE)
    del new["tiers"]["pro"]
    new["tiers"]["team"] = {"features": ["blog_writer"], "limits": {"tokens": {"day": 5000}}}
    diff = diff_policies(_policy(BASE, "a"), _policy(new, "b"))
    assert diff.tiers_added == ("team",)
    assert diff.tiers_removed == ("pro",)
    rows = {(c.tier, c.category, c.key): (c.before, c.after) for c in diff.changes}
    assert rows[("team", Category.CAP, "tokens/day")] == (None, "5000")
    assert rows[("team", Category.HARD_STOP, "tokens/day")] == (None, "1000")  # inherits per_subject
    assert rows[("pro", Category.CAP, "tokens/day")] == ("50000", None)
    assert rows[("pro", Category.TIER, "display_name")] == ("pro", None)
    assert {c.tier for c in diff.changes} == {"team", "pro"}
    assert "tier team (added):" in diff.text()
    assert "tier pro (removed):" in diff.text()


def test_text_groups_per_tier_and_json_round_trips() -> None:
    new = copy.deepcopy(BASE)
    new["tiers"]["free"]["limits"]["tokens"] = {"day": 500}
    new["prices"]["*"]["images"] = "0.06"
    diff = diff_policies(_policy(BASE, "a"), _policy(new, "b"))
    assert diff.text() == (
        "policy a -> b: 2 changes\n"
        "policy-wide:\n"
        "  price * images: $0.05 -> $0.06\n"
        "tier free:\n"
        "  cap tokens/day: 1,000 tokens -> 500 tokens"
    )
    assert diff.summary() == "policy: price * images: $0.05 -> $0.06; free: cap tokens/day: 1,000 tokens -> 500 tokens"
    obj = json.loads(json.dumps(diff.to_json_obj()))
    assert obj["changed"] is True
    assert obj["changes"][1] == {
        "tier": "free",
        "category": "cap",
        "key": "tokens/day",
        "change": "changed",
        "before": "1000",
        "after": "500",
    }


# -- the command ---------------------------------------------------------------------------


def _write(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(json.loads(json.dumps(_numbers(document), default=float))))
    return path


def test_cli_identical_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff-policy", str(ALPHA), str(ALPHA.parent)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("no change:")
    assert err == ""


def test_cli_changes_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = ALPHA.read_text()
    assert "      tokens: {day: 1000}\n" in text
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(text.replace("      tokens: {day: 1000}\n", "      tokens: {day: 400}\n", 1))
    assert main(["diff-policy", str(ALPHA), str(candidate)]) == 2
    out, _ = capsys.readouterr()
    assert out.splitlines()[1:] == ["tier free_alpha:", "  cap tokens/day: 1,000 tokens -> 400 tokens"]
    assert main(["diff-policy", "--json", str(ALPHA), str(candidate)]) == 2
    obj = json.loads(capsys.readouterr().out)
    assert [(c["tier"], c["key"], c["before"], c["after"]) for c in obj["changes"]] == [
        ("free_alpha", "tokens/day", "1000", "400")
    ]
    assert obj["old_version"] == load_policy(ALPHA).version


def test_cli_bad_file_exits_1_with_the_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = copy.deepcopy(BASE)
    bad["tiers"]["free"]["limits"]["tokens"] = {"day": -5}
    path = _write(tmp_path / "bad.yaml", bad)
    assert main(["diff-policy", str(ALPHA), str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert f"error: {path}:" in err
    assert "tiers.free.limits.tokens.day" in err
    assert "nothing compared" in err
    assert main(["diff-policy", str(tmp_path / "missing.yaml"), str(ALPHA)]) == 1
    assert "no such file or directory" in capsys.readouterr().err


# -- who would be WARN or DENY now ------------------------------------------------------------


def _standing_of(document: dict[str, Any], used_tokens: int, held_tokens: int = 0) -> Standing:
    policy = _policy(document, "p")
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    config = SubjectConfig(tier=None, overrides=(), version="0")
    values = {
        c.ref: CounterValue(used=used_tokens, held=held_tokens)
        for c in standing_counters(policy, "alice", config, now)
        if c.ref.metric == "tokens"
    }
    return standing(policy, "alice", config, values, now)


def test_standing_applies_the_rule_with_nothing_asked() -> None:
    tighter = copy.deepcopy(BASE)
    tighter["tiers"]["free"]["limits"]["tokens"] = {"day": 500}
    assert _standing_of(BASE, 700).decision is Decision.ALLOW  # 700 < 800 (warn line of 1000)
    found = _standing_of(tighter, 700)
    assert (found.decision, found.reason) == (Decision.DENY, Reason.BLOCK_THRESHOLD)  # 700 >= 475
    assert found.deciding is not None and found.deciding.limit.max_units == 500
    assert found.message == "tokens per day: 700 tokens used or held of 500 tokens (140%)"
    assert _standing_of(tighter, 300, 100).decision is Decision.WARN  # 400 >= 400, < 475
    assert _standing_of(tighter, 399).decision is Decision.ALLOW
    unknown = copy.deepcopy(BASE)
    unknown["tiers"]["free"]["limits"] = {}
    assert _standing_of(unknown, 10**6).deciding.limit.kind.value == "hard_stop"  # type: ignore[union-attr]
