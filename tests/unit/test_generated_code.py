"""The committed generated code must be exactly what `make proto` produces from proto/."""

from __future__ import annotations

import filecmp
import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "clients" / "python" / "src" / "quota" / "v1"
SYNC_CLIENT = ROOT / "clients" / "python" / "src" / "quota_client" / "client.py"


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


def _sync_client_generator() -> object:
    spec = importlib.util.spec_from_file_location("gen_sync_client", ROOT / "scripts" / "gen_sync_client.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sync_client_is_up_to_date_with_the_async_one() -> None:
    expected = _sync_client_generator().generate()  # type: ignore[attr-defined]
    assert SYNC_CLIENT.read_text(encoding="utf-8") == expected, (
        "quota_client/client.py is stale (generated from aio.py): run `make sync-client` and commit the result"
    )
    assert expected.startswith("# generated from aio.py by scripts/gen_sync_client.py; do not edit")
