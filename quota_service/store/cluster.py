"""``FailoverRedisCluster``: redis-py's asyncio cluster client, made to ride out a master's failover.

Issue 13 measured, with the plain client, a master's failover failing 80-100 % of *all*
requests for about 2 s, and 2.6-15.7 s passing after the replica's promotion before the
dead master's slots were served again. Read in redis-py 8.1's code, two reasons, both
made worse by a per-request deadline:

* a connection error marks the client for a topology reload, which the *next command*
  runs inline (``initialize()``). That command carries a request's deadline: when the
  deadline cancels it mid-reload, redis-py closes **every** node's connections
  (``except BaseException: nodes_manager.aclose()``), so requests in flight on healthy
  masters fail too (the ``AttributeError`` / ``TypeError`` seen from inside the client
  during failovers), and the reload never completes while every request is short;
* a ``CLUSTERDOWN`` answer (or too many ``MOVED``) makes it ``aclose()`` the whole client:
  the same collateral damage.

This subclass changes those two things and nothing else:

* a reload runs in a task of its own, outside any request: requests wait for it (shielded:
  a request's deadline ends its wait, never the reload), and one reload serves every
  request waiting meanwhile. Reloads start at most every :data:`MIN_REFRESH_INTERVAL_SECONDS`
  once the topology is known, so a dead master's failing requests refresh the topology
  continuously but cheaply: a promotion is picked up within that interval of the first
  node that knows it answering ``CLUSTER SLOTS``;
* ``aclose()`` called by the client itself from inside a command only marks the topology
  for a reload and leaves the connections alone; the store's own ``aclose()`` closes all.

The seeds are every node of the URL (``redis+cluster://h1:p1,h2:p2,h3:p3``): a reload asks
them (then every node learned since) in random order, the one that just failed last.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from typing import Any, Final

from redis.asyncio.cluster import RedisCluster

__all__ = ["MIN_REFRESH_INTERVAL_SECONDS", "FailoverRedisCluster"]

log = logging.getLogger(__name__)

#: The least time (seconds) between two topology reloads once the topology is known.
MIN_REFRESH_INTERVAL_SECONDS: Final = 0.1

#: True while this task runs a command inside the client (redis-py's own error handling).
_IN_COMMAND: contextvars.ContextVar[bool] = contextvars.ContextVar("quota_in_cluster_command", default=False)


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A reload's failure is its waiters' to see; with none left, it is only logged."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("cluster topology reload failed: %r", task.exception())


class FailoverRedisCluster(RedisCluster):
    """See the module docstring. Constructed like ``RedisCluster`` (``startup_nodes=[...]``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reload: asyncio.Task[None] | None = None
        self._reloaded_at = float("-inf")
        self.reloads = 0  # topology reloads completed (for tests and logs)

    @property
    def _known(self) -> bool:
        return bool(self.nodes_manager.slots_cache)

    async def initialize(self, *args: Any, **kwargs: Any) -> FailoverRedisCluster:
        if not self._initialize:
            return self
        task = self._reload
        if task is None or task.done():
            if self._known and time.monotonic() - self._reloaded_at < MIN_REFRESH_INTERVAL_SECONDS:
                return self  # reloaded a moment ago: go on with that topology
            # An empty context: no request's deadline belongs to the reload.
            task = asyncio.get_running_loop().create_task(
                self._run_reload(*args, **kwargs), name="cluster topology reload", context=contextvars.Context()
            )
            task.add_done_callback(_retrieve)
            self._reload = task
        await asyncio.shield(task)
        return self

    async def _run_reload(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().initialize(*args, **kwargs)
        finally:
            self._reloaded_at = time.monotonic()
        self.reloads += 1

    async def _execute_command(self, *args: Any, **kwargs: Any) -> Any:
        token = _IN_COMMAND.set(True)
        try:
            return await super()._execute_command(*args, **kwargs)
        finally:
            _IN_COMMAND.reset(token)

    async def aclose(self) -> None:
        if _IN_COMMAND.get():
            # redis-py's answer to CLUSTERDOWN / repeated MOVED: reload the topology, but keep
            # the connections other requests are using.
            self._initialize = True
            return
        task, self._reload = self._reload, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await super().aclose()
