"""scripts/gen_sync_client.py: how the sync client is written from the async one, and when
the generator refuses (the committed copy itself is checked in tests/unit/test_generated_code.py)."""

from __future__ import annotations

import importlib.util
import tokenize
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_sync_client", ROOT / "scripts" / "gen_sync_client.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SOURCE = '''"""The async module."""

import time


class AsyncThing:
    """Use as ``async with AsyncThing() as t:``, then ``await t.go()``. Loop-bound."""

    async def __aenter__(self) -> AsyncThing:
        return self

    async def go(self) -> str:
        await async_sleep(1)  # an AsyncThing waits
        return f"{self!r} went"
'''

EXPECTED = '''# header
"""The sync module."""

import time


class Thing:
    """Use as ``with Thing() as t:``, then ``t.go()``. Thread-safe."""

    def __enter__(self) -> Thing:
        return self

    def go(self) -> str:
        sleep(1)  # an Thing waits
        return f"{self!r} went"
'''

RENAMES = {"AsyncThing": "Thing", "__aenter__": "__enter__", "async_sleep": "sleep"}
PHRASES = [(" Loop-bound.", " Thread-safe.")]


def unasync(gen: ModuleType, source: str, **rules: object) -> str:
    options: dict[str, object] = {
        "renames": RENAMES,
        "phrases": PHRASES,
        "docstring": '"""The sync module."""',
        "header": "# header\n",
    }
    options.update(rules)
    result: str = gen.unasync(source, **options)
    return result


def test_drops_async_and_await_and_renames_in_code_docstrings_and_comments(gen: ModuleType) -> None:
    assert unasync(gen, SOURCE) == EXPECTED


def test_a_rule_that_no_longer_matches_is_refused(gen: ModuleType) -> None:
    with pytest.raises(gen.StaleRules, match=r"no longer match.*'AsyncGone'"):
        unasync(gen, SOURCE, renames={**RENAMES, "AsyncGone": "Gone"})
    with pytest.raises(gen.StaleRules, match=r"no longer match.*'not there'"):
        unasync(gen, SOURCE, phrases=[*PHRASES, ("not there", "")])


def test_an_async_name_without_a_sync_twin_is_refused(gen: ModuleType) -> None:
    with pytest.raises(gen.StaleRules, match="'aio' has no sync twin: add it to RENAMES"):
        unasync(gen, SOURCE.replace("import time", "import grpc.aio"))
    with pytest.raises(gen.StaleRules, match="'asyncio' has no sync twin"):
        unasync(gen, SOURCE.replace("import time", "import asyncio"))
    # a longer name is not renamed by a prefix of it
    source = SOURCE.replace("return self\n", "return AsyncThingy\n")
    with pytest.raises(gen.StaleRules, match="'AsyncThingy' has no sync twin"):
        unasync(gen, source)


def test_the_source_must_open_with_its_docstring(gen: ModuleType) -> None:
    with pytest.raises(gen.StaleRules, match="module docstring"):
        unasync(gen, "import time\n", renames={}, phrases=[])


def test_every_rule_is_used_by_aio_and_the_output_has_no_async_left(gen: ModuleType) -> None:
    generated = gen.generate()
    assert generated.startswith(gen.HEADER)
    names = {
        token.string
        for token in tokenize.generate_tokens(iter(generated.splitlines(keepends=True)).__next__)
        if token.type == tokenize.NAME
    }
    assert not names & {"async", "await", "asyncio", *gen.RENAMES}
    assert {"QuotaClient", "Reservation", "__enter__", "__exit__"} <= names
