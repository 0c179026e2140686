"""RedisCounterStore.from_url: the URL scheme picks the client; nothing connects before the first call."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from quota_service.errors import StoreUnavailable
from quota_service.store.embedded import EmbeddedRedis, free_port
from quota_service.store.redis_store import RedisCounterStore

pytestmark = pytest.mark.redis


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "127.0.0.1:6379", "redis+sentinel://x:1", ""])
def test_unsupported_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="unsupported Redis URL"):
        RedisCounterStore.from_url(url)


async def test_a_unix_socket_url(tmp_path: Path) -> None:
    socket_path = tmp_path / "redis.sock"
    with EmbeddedRedis(data_dir=tmp_path, persistence=False, extra_args=("--unixsocket", str(socket_path))):
        store = RedisCounterStore.from_url(f"unix://{socket_path}")
        try:
            await store.ping()
            assert (await store.subject_config("alice", 0)).version == "0"
        finally:
            await store.close()


@pytest.mark.parametrize("scheme", ["redis", "redis+cluster"])
async def test_nothing_listening_is_store_unavailable(scheme: str) -> None:
    store = RedisCounterStore.from_url(f"{scheme}://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(StoreUnavailable):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.subject_config("alice", 0)
    finally:
        with contextlib.suppress(StoreUnavailable):
            await store.close()
