"""``FailoverRedisCluster``: redis-py's asyncio cluster client, made to ride out a master's failover.

Issue 13 measured, with the plain client, a master's failover failing 80-100 % of *all*
requests for about 2 s, and 2.6-15.7 s passing after the replica's promotion before the
dead master's slots were served again. What redis-py 8.1 does, read in its code and
measured here (tests/integration/store/test_cluster_failover.py):

* it reloads the topology only after a connection error or a redirection. A master that
  is frozen or unreachable answers nothing: the request's deadline cancels the command
  first, redis-py sees no error, and keeps routing the slots to it (measured: served again
  4.1-4.3 s after the promotion, with this service's 0.25 s store timeout);
* the reload runs inline in the next command, under that request's deadline: cancelled
  mid-reload, redis-py closes **every** node's connections (``except BaseException:
  nodes_manager.aclose()``), and so does a reload that fails (nodes disagreeing for a
  moment); requests in flight on healthy masters then fail too, with the
  ``AttributeError: 'NoneType' object has no attribute 'writelines'`` seen from inside the
  client during failovers;
* a ``CLUSTERDOWN`` answer (or too many ``MOVED``) makes it ``aclose()`` the whole client:
  the same collateral damage.

This subclass changes those things and nothing else:

* a command cancelled by its request's deadline marks the topology for a reload, as a
  connection error does (measured: the frozen master's slots served again 0.04-0.44 s
  after the promotion; a killed one's 0.0-0.09 s);
* a reload runs in a task of its own, outside any request, and a failed one keeps the
  connections and the last topology. Requests wait for a reload in flight at most
  :data:`RELOAD_WAIT_SECONDS` (shielded: a request's deadline ends its wait, never the
  reload), then go on with the topology they have. Reloads start at most every
  :data:`MIN_REFRESH_INTERVAL_SECONDS` once the topology is known, so a dead master's
  failing requests refresh the topology continuously but cheaply: a promotion is picked
  up within that interval of the first node that knows it answering ``CLUSTER SLOTS``;
* ``aclose()`` called by the client itself from inside a command or a pipeline (redis-py's
  ``ClusterPipeline.execute`` closes the whole client on a retryable error of one node; the
  usage relay's outbox scan is a pipeline) only marks the topology for a reload and leaves
  the connections alone; the store's own ``aclose()`` closes all.

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

from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import RedisClusterException

__all__ = ["MIN_REFRESH_INTERVAL_SECONDS", "RELOAD_WAIT_SECONDS", "FailoverRedisCluster"]

log = logging.getLogger(__name__)

#: The least time (seconds) between two topology reloads once the topology is known.
MIN_REFRESH_INTERVAL_SECONDS: Final = 0.1
#: How long (seconds) a request waits for a reload in flight before going on with the
#: topology it has (a reload that asks a frozen node first takes its socket timeout).
RELOAD_WAIT_SECONDS: Final = 0.05

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
        self._commands_known = False  # COMMAND read once: it does not change with the topology
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
        if not self._known:
            await asyncio.shield(task)  # nothing to route by yet
            return self
        # A stale topology at worst sends a request to the node that just failed; a reload
        # that hangs on a frozen node must not hold up the requests of the healthy ones.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(RELOAD_WAIT_SECONDS):
                await asyncio.shield(task)
        return self

    async def _run_reload(self, *args: Any, **kwargs: Any) -> None:
        # RedisCluster.initialize's steps, but a failed reload (the nodes disagreeing for a
        # moment during a failover, say) keeps every connection: the last topology stays in
        # use and the next failure reloads again. (redis-py closes all of them instead.)
        try:
            await self.nodes_manager.initialize(*args, **kwargs)
            if self._commands_known:
                self.commands_parser.node = self.nodes_manager.default_node  # asked for movable keys
            else:
                await self.commands_parser.initialize(self.nodes_manager.default_node)
                self._commands_known = True
            self._initialize = False
        finally:
            self._reloaded_at = time.monotonic()
        self.reloads += 1

    async def _execute_command(self, target_node: Any, *args: Any, **kwargs: Any) -> Any:
        token = _IN_COMMAND.set(True)
        try:
            return await super()._execute_command(target_node, *args, **kwargs)
        except asyncio.CancelledError:
            # The request's deadline ended the command before redis-py's own socket timeout:
            # the node may be gone without a word (frozen, unreachable), and redis-py, which
            # never saw an error, would keep routing to it. Reload soon, as on an error.
            self._initialize = True
            self.nodes_manager.move_node_to_end_of_cached_nodes(target_node.name)
            raise
        finally:
            _IN_COMMAND.reset(token)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return _FailoverPipeline(self, transaction)  # type: ignore[abstract]  # as redis-py builds its own

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


class _FailoverPipeline(ClusterPipeline):
    """A pipeline whose failures (redis-py ``aclose()``s the whole client when one node of a
    pipeline fails) only mark the topology for a reload, as a command's do."""

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        token = _IN_COMMAND.set(True)
        try:
            return await super().execute(*args, **kwargs)
        finally:
            _IN_COMMAND.reset(token)
