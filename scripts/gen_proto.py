"""Generate the Python code of proto/quota/v1 into the client package.

The one place generated code comes from (``make proto``). The server and the
client import the same copy (``quota.v1`` inside ``clients/python``), so they
cannot drift. ``tests/unit/test_generated_code.py`` regenerates into a temporary
directory and fails when the committed files differ.

Usage: python scripts/gen_proto.py [OUT_DIR]   (default: clients/python/src)
"""

from __future__ import annotations

import shutil
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
DEFAULT_OUT = ROOT / "clients" / "python" / "src"
PACKAGE = Path("quota") / "v1"


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / PACKAGE).glob("*.proto"))


def generate(out: Path) -> list[Path]:
    """Write ``*_pb2.py``, ``*_pb2.pyi``, ``*_pb2_grpc.py`` and ``*_pb2_grpc.pyi`` under ``out``."""
    target = out / PACKAGE
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.glob("*_pb2*"):
        stale.unlink()
    well_known = resources.files("grpc_tools") / "_proto"
    plugin = shutil.which("protoc-gen-mypy_grpc", path=str(Path(sys.executable).parent))
    if plugin is None:
        raise SystemExit("protoc-gen-mypy_grpc not found next to the interpreter: pip install mypy-protobuf")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy_grpc={plugin}",
        f"--mypy_grpc_out={out}",
        *[str(p.relative_to(PROTO_ROOT)) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for init in (out / "quota" / "__init__.py", target / "__init__.py"):
        if not init.exists():
            init.write_text('"""Generated from proto/quota/v1 by scripts/gen_proto.py; do not edit."""\n')
    return sorted(p for p in target.iterdir() if p.is_file())


if __name__ == "__main__":
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    for path in generate(out_dir):
        print(path.relative_to(out_dir))
