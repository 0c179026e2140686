"""``on_cross`` rules in a policy file: the policy's rules apply to every tier and a tier's are
added to them; durations and thresholds are checked with the file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from quota_service.errors import PolicyError
from quota_service.policy.compiled import CrossRule
from quota_service.policy.loader import load_policy
from quota_service.policy.windows import Window

pytestmark = pytest.mark.unit

BASE = """\
version: 1
default_tier: free
on_cross:
  - {name: burn, metric: cost_usd, window: hour, threshold: cap, stop_subject_for: 1h}
tiers:
  free:
    features: [chat]
    limits:
      tokens: {minute: 100}
      cost_usd: {hour: 1.00}
    on_cross:
      - {metric: tokens, window: minute, threshold: RULE_THRESHOLD, stop_subject_for: RULE_FOR}
  pro:
    features: [chat]
    limits:
      cost_usd: {hour: 10.00}
"""


def write(tmp_path: Path, threshold: str = "block", duration: str = "90s") -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(BASE.replace("RULE_THRESHOLD", threshold).replace("RULE_FOR", duration))
    return path


def test_a_whole_number_is_seconds(tmp_path: Path) -> None:
    assert load_policy(write(tmp_path, duration="90")).tiers["free"].on_cross[1].stop_seconds == 90


def test_the_policy_rules_apply_to_every_tier_and_a_tier_adds_its_own(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path))
    burn = CrossRule("burn", "cost_usd", Window.HOUR, "cap", 3600)
    assert policy.tiers["pro"].on_cross == (burn,)
    assert policy.tiers["free"].on_cross == (
        burn,
        CrossRule("tokens-minute-block", "tokens", Window.MINUTE, "block", 90),
    )
    assert policy.tiers["free"].on_cross[1].matches("tokens", Window.MINUTE, "block")
    assert not policy.tiers["free"].on_cross[1].matches("tokens", Window.MINUTE, "warn")


@pytest.mark.parametrize(
    ("threshold", "duration", "message"),
    [
        ("block", "90x", 'must be a duration such as "90s", "30m", "1h" or "2d", got \'90x\''),
        ("block", "31d", "must be from 1 second to 30 days, got '31d'"),
        ("block", "0s", 'must be a duration such as "90s", "30m", "1h" or "2d", got \'0s\''),
        ("half", "1m", "must be one of warn, block, cap, got 'half'"),
    ],
)
def test_a_bad_rule_is_refused_with_its_line(tmp_path: Path, threshold: str, duration: str, message: str) -> None:
    path = write(tmp_path, threshold, duration)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    (issue,) = [str(i) for i in caught.value.issues]
    assert issue.startswith(f"{path}:12: tiers.free.on_cross[0].")
    assert message in issue
