"""policies/schema.json is what the pydantic model generates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quota_service.policy.model import render_json_schema

pytestmark = pytest.mark.unit

SCHEMA = Path(__file__).resolve().parents[3] / "policies" / "schema.json"


def test_committed_schema_matches_the_model() -> None:
    assert SCHEMA.read_text(encoding="utf-8") == render_json_schema(), (
        "policies/schema.json is out of date with quota_service/policy/model.py; "
        "regenerate it with: .venv/bin/python scripts/gen_policy_schema.py"
    )


def test_schema_describes_the_top_level_keys() -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"version", "default_tier", "tiers"}
    assert list(schema["properties"]) == [
        "version",
        "default_tier",
        "timezone",
        "thresholds",
        "reservation_ttl_seconds",
        "commit_max_ratio",
        "unpriced",
        "on_store_error",
        "prices",
        "hard_stops",
        "tiers",
        "notifications",
        "ledger_retention_days",
        "on_store_lost",
        "on_cross",
        "fail_open_allowance",
    ]
