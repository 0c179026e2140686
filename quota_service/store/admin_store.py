"""``RedisAdminStore``: the admin plane's :class:`~quota_service.admin.AdminStore` on Redis or Redis Cluster.

It shares the connections of a :class:`~quota_service.store.redis_store.RedisCounterStore`
(and delegates the per-subject config to it: tier and overrides, with their version bump).
What it adds lives in keys of their own slot each (see :mod:`quota_service.store.keys` for
the per-subject keys):

==========================  =============================================================================
key                          holds
==========================  =============================================================================
``s:{__stops__}``            hash: emergency stops, field ``GLOBAL`` or ``<SCOPE>:<target>`` -> JSON
                             ``{"scope", "target", "reason", "created_at" (unix s), "created_by"}``
``quota:stops:{__stops__}``  pub/sub channel (no key): ``"<put|delete> <field>"`` after every stop change
``quota:config:{__config__}`` pub/sub channel (no key): ``c:{S}`` (the subject's config key) after every
                             write of a subject's config (``config_write.lua``, in the same step); each
                             replica also hears its own heartbeats on ``<it>:heartbeat:<random>``
``x:{__overrides__}``        zset: subjects that have (or recently had) an override, scored by the unix
                             seconds of their last override write (ListOverrides of every subject)
``audit:{__audit__}``        stream (``MAXLEN ~ 100000``): one entry per admin change, fields ``at``
                             (unix ms), ``actor``, ``action``, ``target``, ``subject``, ``before``,
                             ``after`` (JSON), ``reason``
==========================  =============================================================================

A stop change is one script (``admin_stop.lua``): the hash write and the PUBLISH happen
together, so a replica that hears the message and re-reads the hash sees the change.
On a cluster, PUBLISH reaches subscribers on every node (classic, not sharded, pub/sub:
it works on Redis 6.2 too); a replica subscribes through the node that owns the stops' slot.

Scans (:meth:`RedisAdminStore.top_usage`, :meth:`RedisAdminStore.reset_usage`) use
``SCAN MATCH``: ResetUsage on the one node owning the subject's slot, TopUsage on every
master: O(keys), for the admin plane only.

Every Redis, connection or timeout error leaves as
:class:`~quota_service.errors.StoreUnavailable`; each round trip is bounded by the
counter store's ``timeout_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import importlib.resources
import json
import logging
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from quota_service.admin import AuditRecord, UsageRow
from quota_service.errors import StoreUnavailable
from quota_service.policy.domain import GLOBAL_SCOPE, OverrideRecord, SubjectConfig
from quota_service.policy.stops import EmergencyStop, StopScope
from quota_service.policy.windows import Window
from quota_service.store import keys
from quota_service.store.redis_store import RedisCounterStore, bounded_call

__all__ = [
    "AUDIT_KEY",
    "AUDIT_MAXLEN",
    "CONFIG_CHANNEL",
    "OVERRIDE_INDEX_KEY",
    "STOPS_CHANNEL",
    "STOPS_KEY",
    "RedisAdminStore",
    "parse_stops",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

STOPS_KEY: Final = "s:{__stops__}"
STOPS_CHANNEL: Final = "quota:stops:{__stops__}"
#: Written by ``config_write.lua`` (the same text there): the config key of each subject written.
CONFIG_CHANNEL: Final = "quota:config:{__config__}"
OVERRIDE_INDEX_KEY: Final = "x:{__overrides__}"
AUDIT_KEY: Final = "audit:{__audit__}"
#: The audit stream is trimmed to about this many entries (``XADD MAXLEN ~``).
AUDIT_MAXLEN: Final = 100_000
#: Keys asked per SCAN call, and counters read per pipeline.
SCAN_COUNT: Final = 1000
#: Candidates read past the n-th of a board, so that ties there are ranked by held.
TOP_TIES: Final = 20
#: Stream entries read per XREVRANGE when ListAudit filters by subject.
AUDIT_PAGE: Final = 500
#: How long the stop subscription waits for a message before looking again (seconds).
SUBSCRIPTION_POLL_SECONDS: Final = 1.0
#: The config subscription sends itself a heartbeat after this long without a message, and
#: yields each one it hears as a sign of life (seconds) ...
CONFIG_HEARTBEAT_SECONDS: Final = 0.2
#: ... and gives the subscription up (raises) after this long without hearing anything.
CONFIG_SILENCE_SECONDS: Final = 1.0

_SCRIPTS: Final = ("admin_stop", "admin_reset", "admin_prune_index")
_GLOB_SPECIAL: Final = frozenset("*?[]\\")


def _glob_escape(text: str) -> str:
    """``text`` as a literal inside a SCAN MATCH pattern."""
    return "".join("\\" + ch if ch in _GLOB_SPECIAL else ch for ch in text)


def _stop_field(scope: StopScope, target: str) -> str:
    return scope.value if scope is StopScope.GLOBAL else f"{scope.value}:{target}"


def _stop_json(stop: EmergencyStop) -> str:
    return json.dumps(
        {
            "scope": stop.scope.value,
            "target": stop.target,
            "reason": stop.reason,
            "created_at": stop.created_at,
            "created_by": stop.created_by,
            **({"expires_at": stop.expires_at} if stop.expires_at else {}),
        },
        sort_keys=True,
    )


def _stop_from(field: str, raw: str) -> EmergencyStop:
    """A stored stop. A damaged JSON body still yields the stop its field names: a stop
    is never dropped for a bad reason text."""
    scope_text, _, target = field.partition(":")
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not an object")
    except ValueError:
        log.error("emergency stop %r has a damaged record %r; enforcing it by its name", field, raw[:200])
        data = {}
    return EmergencyStop(
        scope=StopScope(str(data.get("scope", scope_text))),
        target=str(data.get("target", target)),
        reason=str(data.get("reason", "")),
        created_at=int(data.get("created_at", 0) or 0),
        created_by=str(data.get("created_by", "")),
        expires_at=int(data.get("expires_at", 0) or 0),
    )


def parse_stops(raw: dict[str, str]) -> list[EmergencyStop]:
    """The stops of an ``HGETALL s:{__stops__}``, by scope then target. A field with an
    unknown scope is logged and skipped (it could not cover anything)."""
    stops: list[EmergencyStop] = []
    for field, body in raw.items():
        try:
            stops.append(_stop_from(field, body))
        except ValueError:
            log.error("ignoring emergency stop field %r: unknown scope", field)
    order = list(StopScope)
    stops.sort(key=lambda s: (order.index(s.scope), s.target))
    return stops


def audit_record(entry_id: str, fields: Mapping[str, Any]) -> AuditRecord:
    """One entry of the audit stream (``AUDIT_KEY``) as a record; absent fields read empty
    (``before``/``after``: ``null``). ``at`` that is not a number raises ``ValueError``."""
    return AuditRecord(
        at_ms=int(fields.get("at", 0)),
        actor=str(fields.get("actor", "")),
        action=str(fields.get("action", "")),
        target=str(fields.get("target", "")),
        subject=str(fields.get("subject", "")),
        before=str(fields.get("before", "null")),
        after=str(fields.get("after", "null")),
        reason=str(fields.get("reason", "")),
        entry_id=entry_id,
    )


class RedisAdminStore:
    """Stops, the audit log, the override index and usage scans on the Redis of ``counters``.

    Concurrency: stop writes and usage resets are single scripts; ListOverrides' index is
    written before the override it names (a subject may be listed with nothing to show,
    never missed). Any number of replicas may call any method concurrently."""

    def __init__(self, *, counters: RedisCounterStore) -> None:
        self._counters = counters
        self._client: Redis | RedisCluster = counters.client
        self._timeout = counters.timeout_seconds
        lua = importlib.resources.files("quota_service.store").joinpath("lua")
        self._scripts: dict[str, AsyncScript] = {
            name: self._client.register_script(lua.joinpath(f"{name}.lua").read_text(encoding="utf-8"))
            for name in _SCRIPTS
        }

    # -- plumbing -------------------------------------------------------------------------

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        return await bounded_call(what, self._timeout, call)

    async def _script(self, name: str, script_keys: Sequence[str], args: Sequence[str | int]) -> Any:
        script = self._scripts[name]
        return await self._call(name, lambda: script(keys=list(script_keys), args=list(args)))

    async def _scan(self, pattern: str, node: Any = None) -> AsyncIterator[list[str]]:
        """Pages of keys matching ``pattern``: on one Redis, or on cluster ``node``."""
        client = self._client
        cursor = 0

        async def scan_once() -> Any:
            if isinstance(client, RedisCluster):
                # With one target node, the cluster client answers ({node name: cursor}, keys).
                return await client.scan(cursor, match=pattern, count=SCAN_COUNT, target_nodes=node)
            return await client.scan(cursor, match=pattern, count=SCAN_COUNT)

        while True:
            reply: Any = await self._call("scan", scan_once)
            raw_cursor, page = reply
            cursor = int(raw_cursor[node.name] if isinstance(raw_cursor, dict) else raw_cursor)
            if page:
                yield [str(k) for k in page]
            if cursor == 0:
                return

    async def _masters(self) -> list[Any]:
        """Every master of a cluster (``[None]``: the one Redis)."""
        client = self._client
        if not isinstance(client, RedisCluster):
            return [None]
        await self._call("cluster slots", client.initialize)  # idempotent: loads the slot map once
        return list(client.get_primaries())

    async def _read_counters(self, counter_keys: Sequence[str]) -> list[tuple[int, int]]:
        """``(used, held)`` of each key (absent: 0), pipelined."""
        client = self._client

        async def run() -> list[Any]:
            pipe = client.pipeline() if isinstance(client, RedisCluster) else client.pipeline(transaction=False)
            for key in counter_keys:
                pipe.hmget(key, ["used", "held"])
            return list(await pipe.execute())

        replies = await self._call("hmget", run)
        return [(int(r[0] or 0), int(r[1] or 0)) for r in replies]

    # -- subject config (delegated: one version bump per write) -----------------------------

    async def subject_config(self, subject: str, now_ms: int) -> SubjectConfig:
        return await self._counters.subject_config(subject, now_ms)

    async def set_tier(self, subject: str, tier: str | None) -> str | None:
        return await self._counters.set_tier(subject, tier)

    async def set_override(self, record: OverrideRecord) -> None:
        await self._counters.set_override(record)

    async def delete_override(self, subject: str, metric: str, window: Window) -> bool:
        return await self._counters.delete_override(subject, metric, window)

    # -- override index -----------------------------------------------------------------------

    async def note_overridden(self, subject: str, now_s: int) -> None:
        client = self._client
        await self._call("zadd", lambda: client.zadd(OVERRIDE_INDEX_KEY, {subject: now_s}))

    async def overridden_subjects(self) -> list[str]:
        client = self._client
        members = await self._call("zrange", lambda: client.zrange(OVERRIDE_INDEX_KEY, 0, -1))
        return [str(m) for m in members]

    async def prune_overridden(self, subject: str, written_before_s: int) -> None:
        await self._script("admin_prune_index", [OVERRIDE_INDEX_KEY], [subject, written_before_s])

    # -- emergency stops ----------------------------------------------------------------------

    async def put_stop(self, stop: EmergencyStop) -> EmergencyStop | None:
        """Store or replace ``stop`` and PUBLISH the change, atomically. Returns the replaced stop."""
        field = _stop_field(stop.scope, stop.target)
        previous, _ = await self._script("admin_stop", [STOPS_KEY], ["put", field, _stop_json(stop), STOPS_CHANNEL])
        return _stop_from(field, previous) if previous else None

    async def delete_stop(self, scope: StopScope, target: str) -> EmergencyStop | None:
        """Remove a stop and PUBLISH the change, atomically. ``None``: there was none (nothing published)."""
        field = _stop_field(scope, target)
        previous, _ = await self._script("admin_stop", [STOPS_KEY], ["delete", field, "", STOPS_CHANNEL])
        return _stop_from(field, previous) if previous else None

    async def list_stops(self) -> list[EmergencyStop]:
        """Every stop in force (one HGETALL), by scope then target."""
        client = self._client
        raw: dict[Any, Any] = await self._call("hgetall", lambda: client.hgetall(STOPS_KEY))
        return parse_stops({str(k): str(v) for k, v in raw.items()})

    async def _next_message(self, pubsub: Any, what: str, wait_seconds: float) -> Any:
        """The subscription's next message, or ``None`` after ``wait_seconds`` of silence. Raises
        :class:`StoreUnavailable` when it broke (through ``bounded_call``, like every call)."""
        return await bounded_call(
            what,
            wait_seconds + self._timeout,
            lambda: pubsub.get_message(ignore_subscribe_messages=True, timeout=wait_seconds),
            request_deadline=False,
        )

    async def stop_changes(self) -> AsyncGenerator[None, None]:
        """Yields once subscribed to the stops channel, then once per message on it.

        The caller re-reads the stops on every yield (the first one covers changes made
        before the subscription). Raises :class:`StoreUnavailable` when the subscription
        cannot be made or breaks; the caller subscribes again. Closing the iterator closes
        the subscription's connection."""
        pubsub = self._client.pubsub()
        try:
            await self._call("subscribe", lambda: pubsub.subscribe(STOPS_CHANNEL))
            yield None
            while True:
                message = await self._next_message(pubsub, "stop subscription", SUBSCRIPTION_POLL_SECONDS)
                if message is not None and message.get("type") == "message":
                    yield None
        finally:
            with contextlib.suppress(Exception):  # closing a broken subscription: nothing to tell
                async with asyncio.timeout(self._timeout):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def config_changes(self) -> AsyncGenerator[str | None, None]:
        """Yields ``None`` once subscribed to the config channel, then the subject of every
        config write, and ``None`` for every heartbeat: after
        :data:`CONFIG_HEARTBEAT_SECONDS` without a message it PUBLISHes an empty message on
        a heartbeat channel of its own (subscribed with the same connection) and yields when
        that comes back, so a follower knows the feed still delivers (a half-open connection
        that silently lost it does not). Raises :class:`StoreUnavailable` when the
        subscription cannot be made, breaks, or hears nothing for
        :data:`CONFIG_SILENCE_SECONDS`; the caller subscribes again. Closing the iterator
        closes the subscription's connection."""
        client = self._client
        heartbeat = f"{CONFIG_CHANNEL}:heartbeat:{secrets.token_hex(8)}"
        pubsub = client.pubsub()
        loop = asyncio.get_running_loop()
        try:
            await self._call("subscribe", lambda: pubsub.subscribe(CONFIG_CHANNEL, heartbeat))
            yield None
            heard = loop.time()
            while True:
                message = await self._next_message(pubsub, "config subscription", CONFIG_HEARTBEAT_SECONDS)
                now = loop.time()
                if message is None or message.get("type") != "message":
                    if now - heard > CONFIG_SILENCE_SECONDS:
                        raise StoreUnavailable(f"redis config subscription heard nothing for {now - heard:.1f}s")
                    await self._call("publish", lambda: client.publish(heartbeat, ""))
                    continue
                heard = now
                if message.get("channel") == heartbeat:
                    yield None
                    continue
                subject = _subject_of_config_key(str(message.get("data", "")))
                if subject is not None:
                    yield subject
        finally:
            with contextlib.suppress(Exception):  # closing a broken subscription: nothing to tell
                async with asyncio.timeout(self._timeout):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    # -- audit ----------------------------------------------------------------------------------

    async def append_audit(self, record: AuditRecord) -> str:
        """XADD one entry (the stream is trimmed to about :data:`AUDIT_MAXLEN`); returns its id."""
        fields: dict[str, str | int] = {
            "at": record.at_ms,
            "actor": record.actor,
            "action": record.action,
            "target": record.target,
            "subject": record.subject,
            "before": record.before,
            "after": record.after,
            "reason": record.reason,
        }
        client = self._client
        entry_id = await self._call(
            "xadd",
            lambda: client.xadd(AUDIT_KEY, fields, maxlen=AUDIT_MAXLEN, approximate=True),  # type: ignore[arg-type]
        )
        return str(entry_id)

    async def _xrevrange(self, upper: str, count: int) -> list[Any]:
        client = self._client

        async def read() -> list[Any]:
            return list(await client.xrevrange(AUDIT_KEY, max=upper, min="-", count=count) or [])

        return await self._call("xrevrange", read)

    async def list_audit(self, limit: int, subject: str) -> list[AuditRecord]:
        """Newest first, at most ``limit``. With ``subject``: pages back through the stream
        (at most its whole length, about :data:`AUDIT_MAXLEN` entries) until ``limit`` match."""
        found: list[AuditRecord] = []
        upper = "+"
        page_size = AUDIT_PAGE if subject else limit
        while len(found) < limit:
            page = await self._xrevrange(upper, page_size)
            for entry_id, fields in page:
                if subject and fields.get("subject") != subject:
                    continue
                found.append(audit_record(str(entry_id), fields))
                if len(found) == limit:
                    break
            if len(page) < page_size:
                break
            upper = "(" + str(page[-1][0])  # exclusive: Redis 6.2+
        return found

    # -- usage ----------------------------------------------------------------------------------

    async def reset_usage(self, subject: str, metric: str | None, window: Window | None) -> dict[str, int]:
        """Zero ``used`` (keep ``held``) on every stored counter of ``subject`` (of ``metric`` /
        ``window`` when given): a SCAN of the subject's node, then one atomic script.
        Returns ``{"<metric>:<window>:<window_id>": used before}`` for the counters zeroed."""
        prefix = f"q:{keys.tag(subject)}:"
        pattern = _glob_escape(prefix) + (metric or "*") + ":" + (window.value if window else "*") + ":*"
        node = None
        if isinstance(self._client, RedisCluster):
            client = self._client
            await self._call("cluster slots", client.initialize)  # idempotent: loads the slot map once
            node = client.get_node_from_key(prefix)
        found: list[str] = []
        async for page in self._scan(pattern, node):
            for key in page:
                suffix = key[len(prefix) :] if key.startswith(prefix) else ""
                parts = suffix.split(":", 2)
                if len(parts) != 3:
                    continue
                if (metric and parts[0] != metric) or (window and parts[1] != window.value):
                    continue
                found.append(key)
        reset: dict[str, int] = {}
        for start in range(0, len(found), SCAN_COUNT):
            flat = await self._script("admin_reset", found[start : start + SCAN_COUNT], [])
            for i in range(0, len(flat), 2):
                reset[str(flat[i])[len(prefix) :]] = int(flat[i + 1])
        await self._note_reset(subject, reset)
        return reset

    async def _note_reset(self, subject: str, reset: dict[str, int]) -> None:
        """The top spenders' boards follow a reset (the subject's used is 0 there now)."""
        if not self._counters.keeps_boards:
            return
        tag = self._counters.slot_tag(subject)
        client = self._client
        boards = []
        for name in reset:
            metric, window, window_id = name.split(":", 2)
            if window in (Window.DAY.value, Window.MONTH.value):
                boards.append(keys.board_key(tag, metric, window, window_id))

        async def zero() -> None:
            for board in boards:
                await client.zadd(board, {subject: 0}, xx=True)

        if boards:
            await self._call("zadd", zero)

    async def top_usage(self, metric: str, window: Window, window_id: str, n: int) -> list[UsageRow]:
        """The ``n`` subjects with the highest ``used`` in window ``window_id`` (ties: higher
        ``held``, then subject). Day and month windows are read from the top spenders'
        boards the scripts keep as used changes (one ZREVRANGE per slot board, then the
        candidates' counters): O(n) per board, whatever the number of keys. Other windows, or
        a window with no board (a service without a ledger keeps none), by the scan."""
        if self._counters.keeps_boards and window in (Window.DAY, Window.MONTH):
            found = await self._top_from_boards(metric, window, window_id, n)
            if found is not None:
                return found
        return await self._top_by_scan(metric, window, window_id, n)

    async def _top_from_boards(self, metric: str, window: Window, window_id: str, n: int) -> list[UsageRow] | None:
        tags = self._counters.slot_tags()
        boards = [keys.board_key(tag, metric, window.value, window_id) for tag in tags]
        extra = n + TOP_TIES  # ties at the n-th place are ranked by held, read below
        client = self._client

        async def read() -> list[Any]:
            pipe = client.pipeline()
            for board in boards:
                pipe.zrevrange(board, 0, extra - 1, withscores=True)
            return list(await pipe.execute())

        pages = await self._call("zrevrange", read)
        candidates = [(str(s), int(score)) for page in pages for s, score in (page or [])]
        if not candidates:
            return None
        candidates = heapq.nsmallest(extra, candidates, key=lambda c: (-c[1], c[0]))
        counter_keys = [f"q:{keys.tag(s)}:{metric}:{window.value}:{window_id}" for s, _ in candidates]
        values = await self._read_counters(counter_keys)
        rows = [
            UsageRow(s, used, held) for (s, _), (used, held) in zip(candidates, values, strict=True) if used or held
        ]
        return sorted(rows, key=_rank)[:n]

    async def _top_by_scan(self, metric: str, window: Window, window_id: str, n: int) -> list[UsageRow]:
        """SCAN every master for ``q:{*}:<metric>:<window>:<window_id>``, read ``used``/``held``
        pipelined, keep the best ``n`` (memory O(n + one page)). O(keys)."""
        suffix = f":{metric}:{window.value}:{window_id}"
        pattern = "q:{*}" + _glob_escape(suffix)
        best: list[UsageRow] = []
        for node in await self._masters():
            async for page in self._scan(pattern, node):
                found = [
                    (s, key) for key in page if (s := _subject_of_counter(key, suffix)) not in (None, GLOBAL_SCOPE)
                ]
                if not found:
                    continue
                values = await self._read_counters([key for _, key in found])
                best.extend(
                    UsageRow(str(s), used, held)
                    for (s, _), (used, held) in zip(found, values, strict=True)
                    if used or held
                )
                best = heapq.nsmallest(n, best, key=_rank)
        return sorted(best, key=_rank)


def _subject_of_config_key(key: str) -> str | None:
    """The subject of ``c:{S}`` (:func:`quota_service.store.keys.config_key`), else ``None``."""
    prefix, suffix = "c:{", "}"
    if not key.startswith(prefix) or not key.endswith(suffix) or len(key) <= len(prefix) + len(suffix):
        log.warning("ignoring config change notice %r: not a subject's config key", key[:200])
        return None
    subject = key[len(prefix) : -len(suffix)]
    return subject if keys.config_key(subject) == key else None


def _rank(row: UsageRow) -> tuple[int, int, str]:
    return (-row.used, -row.held, row.subject)


def _subject_of_counter(key: str, suffix: str) -> str | None:
    """The subject of ``q:{S}<suffix>``, or ``None`` when the key is not exactly that."""
    if not key.startswith("q:{") or not key.endswith("}" + suffix):
        return None
    subject = key[3 : -len(suffix) - 1]
    return subject if subject and "{" not in subject and "}" not in subject else None
