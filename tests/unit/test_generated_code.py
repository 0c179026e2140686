"""The committed generated code must be exactly what `make proto` produces from proto/."""

from __future__ import annotations

import filecmp
import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "clients" / "python" / "src" / "quota" / "v1"


def _generator() -> object:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    generated = _generator().generate(tmp_path)  # type: ignore[attr-defined]
    names = sorted(p.name for p in generated)
    committed = sorted(p.name for p in COMMITTED.iterdir() if p.is_file() and p.name != "__pycache__")
    assert names == committed, "run `make proto` and commit the result"
    stale = [
        name for name in names if not filecmp.cmp(tmp_path / "quota" / "v1" / name, COMMITTED / name, shallow=False)
    ]
    assert not stale, f"generated code is stale ({', '.join(stale)}): run `make proto` and commit the result"
    # Every generated module has its .pyi stub.
    assert {n[:-3] for n in names if n.endswith(".py") and n != "__init__.py"} == {
        n[:-4] for n in names if n.endswith(".pyi")
    }
