"""The master a set of Redis Sentinels watches: ``redis+sentinel://s1:p1,s2:p2,s3:p3/name[/db]``.

:func:`sentinel_master` builds a ``redis.asyncio.Redis`` whose connections ask the Sentinels
for the master's address whenever they connect. A failover reaches it in one of three ways:
a connection to the old master fails (killed: refused or reset), the old master, demoted,
refuses a write with ``READONLY`` (redis-py then disconnects and asks again), or a command
is cancelled by its request's deadline (frozen: the connection is dropped, the next one
asks). Each of those requests fails as an outage (``on_store_error``, ``UNAVAILABLE``), at
the one boundary; the first request after the promotion goes to the new master.

The Sentinels are asked with the store's per-call timeout, without Redis' credentials
(Sentinels usually have none, or their own: not supported here), one after the other, the
last one that answered first. :meth:`SentinelMaster.aclose` closes the Sentinel
connections too.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

__all__ = ["SentinelMaster", "sentinel_master"]


class SentinelMaster(Redis):
    """``Redis`` for a Sentinel-watched master; closing it closes the Sentinel clients too."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        try:
            await super().aclose(close_connection_pool)
        finally:
            for sentinel in getattr(manager, "sentinels", ()):
                await sentinel.aclose()


def sentinel_master(
    seeds: tuple[tuple[str, int], ...],
    service: str,
    *,
    timeout_seconds: float,
    connection_options: dict[str, Any],
) -> SentinelMaster:
    """The client of ``service``'s master, found through the Sentinels at ``seeds``.
    ``connection_options``: the Redis connections' options (timeouts, credentials, db, TLS)."""
    sentinels = Sentinel(  # type: ignore[no-untyped-call]
        list(seeds),
        sentinel_kwargs={
            "socket_timeout": timeout_seconds,
            "socket_connect_timeout": timeout_seconds,
            "decode_responses": True,
        },
        **connection_options,
    )
    client: SentinelMaster = sentinels.master_for(service, redis_class=SentinelMaster)
    return client
