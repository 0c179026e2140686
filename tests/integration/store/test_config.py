"""Per-subject admin config in Redis: tier, overrides, and the version every write bumps."""

from __future__ import annotations

import pytest
import redis.asyncio
from support.charges import NOW_MS

from quota_service.errors import InvalidRequest
from quota_service.policy.domain import OverrideRecord, SubjectConfig
from quota_service.policy.windows import Window
from quota_service.store import keys
from quota_service.store.redis_store import RedisCounterStore

pytestmark = pytest.mark.redis

NOW_S = NOW_MS // 1000


def override(
    metric: str = "tokens",
    window: Window = Window.DAY,
    max_units: int = 5000,
    expires_at: int = 0,
    *,
    reason: str = "",
    created_at: int = 0,
    created_by: str = "",
) -> OverrideRecord:
    return OverrideRecord("alice", metric, window, max_units, expires_at, reason, created_at, created_by)


async def test_a_subject_nobody_touched(store: RedisCounterStore) -> None:
    assert await store.subject_config("alice", NOW_MS) == SubjectConfig(tier=None, overrides=(), version="0")


async def test_set_tier_returns_the_previous_one_and_bumps_the_version(store: RedisCounterStore) -> None:
    assert await store.set_tier("alice", "pro_alpha") is None
    assert await store.subject_config("alice", NOW_MS) == SubjectConfig("pro_alpha", (), "1")
    assert await store.set_tier("alice", "free_alpha") == "pro_alpha"
    assert await store.set_tier("alice", None) == "free_alpha"
    assert await store.subject_config("alice", NOW_MS) == SubjectConfig(None, (), "3")
    assert (await store.subject_config("bob", NOW_MS)).version == "0"  # per subject


async def test_overrides_round_trip_and_bump_the_version(store: RedisCounterStore) -> None:
    big = 2**53 - 1  # exact through JSON and Lua
    await store.set_override(override(max_units=big, expires_at=0, reason="launch", created_at=NOW_S, created_by="ops"))
    await store.set_override(override("images", Window.MONTH, 7))
    await store.set_override(override("images", Window.DAY, 3))
    config = await store.subject_config("alice", NOW_MS)
    assert config.version == "3"
    assert config.overrides == (
        override("images", Window.DAY, 3),
        override("images", Window.MONTH, 7),
        override(max_units=big, reason="launch", created_at=NOW_S, created_by="ops"),
    )
    assert (await store.subject_config("alice", NOW_MS)).overrides == config.overrides

    await store.set_override(override(max_units=10))  # replaces the one for tokens/day
    assert [o.max_units for o in (await store.subject_config("alice", NOW_MS)).overrides] == [3, 7, 10]

    assert await store.delete_override("alice", "images", Window.MONTH) is True
    assert await store.delete_override("alice", "images", Window.MONTH) is False
    config = await store.subject_config("alice", NOW_MS)
    assert config.version == "5"  # the no-op delete changed nothing
    assert [(o.metric, o.window) for o in config.overrides] == [("images", Window.DAY), ("tokens", Window.DAY)]


async def test_expired_overrides_vanish(store: RedisCounterStore, raw: redis.asyncio.Redis) -> None:
    await store.set_override(override(expires_at=NOW_S + 60))
    await store.set_override(override("images", expires_at=0))
    assert len((await store.subject_config("alice", NOW_MS)).overrides) == 2
    assert len((await store.subject_config("alice", (NOW_S + 59) * 1000 + 999)).overrides) == 2

    at_expiry = await store.subject_config("alice", (NOW_S + 60) * 1000)
    assert [o.metric for o in at_expiry.overrides] == ["images"]
    assert await raw.hkeys(keys.overrides_key("alice")) == ["images:day"]  # cleaned lazily
    assert at_expiry.version == "2"  # the cleanup is no admin write

    await store.set_override(override(expires_at=NOW_S - 1))  # born expired: never returned
    assert [o.metric for o in (await store.subject_config("alice", NOW_MS)).overrides] == ["images"]
    # deleting an override that already expired reports False: it was not there for anyone
    assert await store.delete_override("alice", "tokens", Window.DAY) is False


async def test_bad_admin_writes_are_refused(store: RedisCounterStore, raw: redis.asyncio.Redis) -> None:
    for subject in ("", "a{b}", "has space", "__global__"):
        with pytest.raises(InvalidRequest):
            await store.set_tier(subject, "pro_alpha")
    with pytest.raises(InvalidRequest):
        await store.set_tier("alice", "")
    with pytest.raises(InvalidRequest):
        await store.set_override(override(max_units=-1))
    with pytest.raises(InvalidRequest):
        await store.set_override(override(metric="Tokens"))
    assert await raw.dbsize() == 0
