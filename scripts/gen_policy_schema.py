"""Write policies/schema.json, the JSON Schema of policy files, from the pydantic model.

    .venv/bin/python scripts/gen_policy_schema.py

tests/unit/policy/test_schema.py fails when the committed file differs from the model.
"""

from __future__ import annotations

from pathlib import Path

from quota_service.policy.model import render_json_schema

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "policies" / "schema.json"


def main() -> None:
    SCHEMA_PATH.write_text(render_json_schema(), encoding="utf-8")
    print(f"wrote {SCHEMA_PATH}")


if __name__ == "__main__":
    main()
