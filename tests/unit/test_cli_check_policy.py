"""quota-service check-policy: a summary and exit 0, or the errors on stderr and exit 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from quota_service.cli import main

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
ALPHA = ROOT / "policies" / "alpha.yaml"
MULTI = ROOT / "tests" / "fixtures" / "policies" / "multi"


def test_valid_policy_prints_the_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-policy", str(ALPHA)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith("policy version   ")
    assert "tier free_alpha (default): Free Alpha" in out
    assert "    cost_usd  month   $10.00        $8.00       $9.50" in out


def test_shipped_policies_directory_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-policy", str(ALPHA.parent)]) == 0
    assert f"files            {ALPHA}\n" in capsys.readouterr().out


def test_invalid_policy_prints_every_error(capsys: pytest.CaptureFixture[str]) -> None:
    path = MULTI / "many_semantic_errors.yaml"
    assert main(["check-policy", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"error: {path}:2: default_tier: tier 'gold' is not defined under tiers (defined: free)",
        f"error: {path}:7: tiers.free.limits.tokens.day: 0.5 is not a whole number of tokens",
        f"error: {path}:8: tiers.free.thresholds: warn_at (0.80, inherited from the top-level thresholds) "
        "must not be greater than block_at (0.5)",
        f"{path}: 3 error(s)",
    ]


def test_missing_path_fails(capsys: pytest.CaptureFixture[str]) -> None:
    path = ROOT / "tests" / "fixtures" / "policies" / "nowhere"
    assert main(["check-policy", str(path)]) == 1
    assert capsys.readouterr().err.splitlines() == [f"error: {path}: no such file or directory", f"{path}: 1 error(s)"]
