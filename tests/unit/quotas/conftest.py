"""The quota path on the in-memory store: no I/O, a manual clock, instant withdraw retries."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
from quota_time import Monotonic

from quota_service.clock import ManualClock, to_ms
from quota_service.quotas import Backoff, Quotas, SubjectConfigCache
from quota_service.reload import LivePolicy
from quota_service.store.memory_store import MemoryCounterStore

ROOT = Path(__file__).resolve().parents[3]
ALPHA = ROOT / "policies" / "alpha.yaml"
START = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def store(clock: ManualClock) -> MemoryCounterStore:
    return MemoryCounterStore(clock_ms=lambda: to_ms(clock.now()), timeout_seconds=5.0)


@pytest.fixture
def monotonic() -> Monotonic:
    return Monotonic()


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "alpha.yaml"
    path.write_text(ALPHA.read_text())
    return path


@pytest.fixture
def quotas(store: MemoryCounterStore, clock: ManualClock, monotonic: Monotonic, policy_file: Path) -> Quotas:
    return Quotas(
        policy=LivePolicy(policy_file, clock=clock),
        store=store,
        clock=clock,
        config_cache=SubjectConfigCache(monotonic=monotonic),
        withdraw_backoff=Backoff(base=0.001, cap=0.002, attempts=4),
        rng=random.Random(7),
    )
