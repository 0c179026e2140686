"""LivePolicy keeps the last swap's change (diff and time); a dry-run load swaps and records
nothing, whether the files are good or bad."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from quota_service.clock import ManualClock
from quota_service.errors import PolicyError
from quota_service.reload import LivePolicy

pytestmark = pytest.mark.unit

ALPHA = Path(__file__).resolve().parents[3] / "policies" / "alpha.yaml"
FREE_TOKENS = "      tokens: {day: 1000}\n      images: {day: 5}"


def test_a_swap_keeps_its_diff_and_time_and_an_unchanged_reload_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "alpha.yaml"
    original = ALPHA.read_text()
    path.write_text(original)
    clock = ManualClock(datetime(2026, 11, 24, 12, 0, tzinfo=UTC))
    live = LivePolicy(path, clock=clock)
    first = live.current.version
    assert live.status().last_change is None

    clock.advance(30)
    path.write_text(original.replace(FREE_TOKENS, FREE_TOKENS.replace("5}", "7}")))
    assert live.reload() is True
    change = live.status().last_change
    assert change is not None
    assert change.at == live.status().loaded_at == int(clock.now().timestamp())
    assert (change.diff.old_version, change.diff.new_version) == (first, live.current.version)
    assert change.diff.summary() == "free_alpha: cap images/day: 5 images -> 7 images"

    assert live.reload() is False  # the same files: no swap, the last change stays
    assert live.status().last_change == change


def test_load_candidate_swaps_and_records_nothing(tmp_path: Path) -> None:
    path = tmp_path / "alpha.yaml"
    original = ALPHA.read_text()
    path.write_text(original)
    live = LivePolicy(path)
    before = live.status()
    path.write_text(original.replace(FREE_TOKENS, FREE_TOKENS.replace("1000", "10")))
    candidate = live.load_candidate()
    assert candidate.version != before.version
    assert live.current.version == before.version and live.status() == before
    path.write_text(original.replace(FREE_TOKENS, FREE_TOKENS.replace("1000", "-10")))
    with pytest.raises(PolicyError):
        live.load_candidate()
    assert live.status() == before  # a refused dry run leaves no error behind
