"""LivePolicy (quota_service/reload.py): a failed reload, of any kind, is recorded and keeps
the last good policy; the watcher survives failing reloads and its own failures.

The file watcher is replaced by a fake ``watchfiles.awatch`` fed by the test, so nothing
here waits on the file system; each test's waits are on events it controls."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import watchfiles
from prometheus_client import REGISTRY

from quota_service.errors import PolicyError
from quota_service.policy.compiled import CompiledPolicy
from quota_service.policy.loader import load_policy
from quota_service.reload import LivePolicy

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
ALPHA = ROOT / "policies" / "alpha.yaml"
ALIAS_BOMB = ROOT / "tests" / "fixtures" / "policies" / "invalid" / "alias_bomb.yaml"
FREE_TOKENS = "      tokens: {day: 1000}\n      images: {day: 5}"


def failures() -> float:
    return REGISTRY.get_sample_value("quota_policy_reload_failures_total") or 0.0


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "alpha.yaml"
    path.write_bytes(ALPHA.read_bytes())
    return path


def free_tokens_cap(live: LivePolicy) -> int:
    return next(limit.max_units for limit in live.current.tiers["free_alpha"].limits if limit.metric == "tokens")


def test_a_nul_byte_is_a_recorded_policy_error_and_the_last_good_policy_stays(policy_file: Path) -> None:
    live = LivePolicy(policy_file)
    before, failed = live.current.version, failures()
    policy_file.write_bytes(ALPHA.read_bytes().replace(b"free_alpha:", b"free_alpha:\x00", 1))
    with pytest.raises(PolicyError):
        live.reload()
    status = live.status()
    assert status.last_error == f"{policy_file}:63: the file contains a NUL byte; a policy file is UTF-8 text"
    assert status.last_error_at > 0 and status.version == before
    assert failures() == failed + 1


@pytest.mark.parametrize(
    "hostile",
    [
        "utf-16",
        b"version: " + b"[" * 1000 + b"]" * 1000,
        b"version: " + b"{a: " * 1000 + b"1" + b"}" * 1000,
        "digits",
        "alias bomb",
    ],
)
def test_every_hostile_edit_is_a_recorded_policy_error(policy_file: Path, hostile: str | bytes) -> None:
    live = LivePolicy(policy_file)
    good = ALPHA.read_text()
    if hostile == "utf-16":
        content = good.encode("utf-16-le")
    elif hostile == "digits":
        content = good.replace(FREE_TOKENS, FREE_TOKENS.replace("1000", "9" * 100_000)).encode()
    elif hostile == "alias bomb":
        content = ALIAS_BOMB.read_bytes()
    else:
        assert isinstance(hostile, bytes)
        content = hostile
    policy_file.write_bytes(content)
    with pytest.raises(PolicyError):
        live.reload()
    assert live.status().last_error.startswith(f"{policy_file}:")


def test_an_unexpected_loader_exception_is_recorded_and_raised(
    policy_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    def loader(path: str | Path) -> CompiledPolicy:
        nonlocal calls
        calls += 1
        if calls == 1:
            return load_policy(path)
        raise RuntimeError("a bug in the loader")

    live = LivePolicy(policy_file, loader=loader)
    before, failed = live.current.version, failures()
    with pytest.raises(RuntimeError), caplog.at_level(logging.ERROR, logger="quota_service.reload"):
        live.reload()
    status = live.status()
    assert status.last_error == f"{policy_file}: unexpected error while loading: RuntimeError: a bug in the loader"
    assert status.version == before and failures() == failed + 1
    assert any(record.exc_info for record in caplog.records), "logged with its traceback"


class FakeWatcher:
    """Stands in for ``watchfiles.awatch``: each call is one watcher run, which yields the
    batches the test puts in its queue; ``None`` ends the run, an exception makes it fail."""

    def __init__(self) -> None:
        self.batches: asyncio.Queue[object] = asyncio.Queue()
        self.runs = 0

    def __call__(self, *paths: Any, stop_event: asyncio.Event | None = None, **options: Any) -> AsyncIterator[object]:
        self.runs += 1
        return self._run(stop_event)

    async def _run(self, stop: asyncio.Event | None) -> AsyncIterator[object]:
        while stop is None or not stop.is_set():
            batch = await self.batches.get()
            if batch is None:
                return
            if isinstance(batch, BaseException):
                raise batch
            yield batch


async def until(predicate: Callable[[], bool]) -> None:
    while not predicate():  # noqa: ASYNC110  # state of the object under test; no event to wait on
        await asyncio.sleep(0.005)  # the hang guard is each test's asyncio.timeout


async def test_the_watcher_survives_any_failing_reload_and_picks_up_the_next_good_edit(
    policy_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeWatcher()
    monkeypatch.setattr(watchfiles, "awatch", fake)
    outcomes: list[object] = []

    def loader(path: str | Path) -> CompiledPolicy:
        if outcomes:
            outcome = outcomes.pop(0)
            if isinstance(outcome, BaseException):
                raise outcome
        return load_policy(path)

    live = LivePolicy(policy_file, loader=loader)
    stop = asyncio.Event()
    async with asyncio.timeout(20):
        task = asyncio.create_task(live.watch(stop=stop, restart_delay_seconds=0))
        # A bad file, then a bug in the loader, then a real hostile edit, then a good edit.
        outcomes += [RecursionError("maximum recursion depth exceeded"), MemoryError()]
        for _ in range(2):
            await fake.batches.put({"change"})
        await until(lambda: not outcomes)
        await until(lambda: "MemoryError" in live.status().last_error)
        policy_file.write_bytes(b"version: " + b"[" * 1000)
        await fake.batches.put({"change"})
        await until(lambda: "nested more than 64 levels deep" in live.status().last_error)
        policy_file.write_text(ALPHA.read_text().replace(FREE_TOKENS, FREE_TOKENS.replace("1000", "3000")))
        await fake.batches.put({"change"})
        await until(lambda: free_tokens_cap(live) == 3000)
        assert live.status().last_error == "" and not task.done()
        stop.set()
        await fake.batches.put({"change"})
        await task
    assert fake.runs == 1


async def test_a_failing_watcher_is_restarted_and_catches_up_on_missed_edits(
    policy_file: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeWatcher()
    monkeypatch.setattr(watchfiles, "awatch", fake)
    live = LivePolicy(policy_file)
    stop = asyncio.Event()
    async with asyncio.timeout(20):
        task = asyncio.create_task(live.watch(stop=stop, restart_delay_seconds=0))
        await until(lambda: fake.runs == 1)
        # The watcher dies; an edit lands while nothing watches; the restart reloads it.
        policy_file.write_text(ALPHA.read_text().replace(FREE_TOKENS, FREE_TOKENS.replace("1000", "4000")))
        with caplog.at_level(logging.ERROR, logger="quota_service.reload"):
            await fake.batches.put(OSError("inotify watch limit reached"))
            await until(lambda: free_tokens_cap(live) == 4000)
        assert fake.runs == 2
        assert any("watcher failed" in record.getMessage() and record.exc_info for record in caplog.records)
        # A watcher that ends by itself is restarted too.
        await fake.batches.put(None)
        await until(lambda: fake.runs == 3)
        policy_file.write_text(ALPHA.read_text().replace(FREE_TOKENS, FREE_TOKENS.replace("1000", "5000")))
        await fake.batches.put({"change"})
        await until(lambda: free_tokens_cap(live) == 5000)
        stop.set()
        await fake.batches.put({"change"})
        await task
