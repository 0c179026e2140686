"""``quota-service serve``: wire the parts together, serve, drain gracefully.

Start-up order: the options (an inconsistent set, or a listen address already in use
without ``--reuse-port``, exits 2 with one line before anything is started), the policy (a
bad file stops start-up with its errors), the store (an embedded redis-server when no URL
is given), the emergency stops (read before the first request is served; if the store
cannot be read, the replica serves but denies everything until it can, see
:mod:`quota_service.stops`), the gRPC server and, with ``--http``, the HTTP face
(:mod:`quota_service.server.web`: dashboard, JSON API, SSE, health, metrics) on the same
servicers and loop. SIGTERM/SIGINT: health goes NOT_SERVING, the HTTP face ends its event
streams and closes, in-flight calls get ``--grace`` seconds to finish, then the stop
watcher, the store (and an embedded Redis) shut down. SIGHUP reloads the policy files; so
does an edit of them unless ``--no-watch``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grpc_health.v1 import health_pb2

from quota_service.admin import Admin
from quota_service.background import survived
from quota_service.errors import PolicyError, QuotaServiceError, StoreUnavailable
from quota_service.ledger.errors import LedgerUnavailable
from quota_service.ledger.feed import EventFeed
from quota_service.ledger.rollup import RollupKeeper
from quota_service.ledger.store import Ledger, ledger_from_url
from quota_service.lifecycle.shadow import Shadow
from quota_service.policy.compiled import CompiledPolicy, StoreLostMode
from quota_service.quotas import Quotas
from quota_service.reload import LivePolicy
from quota_service.server.admin import AdminServicer
from quota_service.server.app import ConfigurationError, TlsFiles, admin_mode, create_server, ensure_free
from quota_service.server.audit_relay import AuditRelay
from quota_service.server.auth import AccessTokens
from quota_service.server.cross_rules import CrossRules
from quota_service.server.notifications import Notifications, checked_loader
from quota_service.server.servicers import QuotaServicer
from quota_service.server.store_identity import IdentityGuard, StoreIdentity
from quota_service.server.usage_relay import UsageRelay
from quota_service.server.web import Readiness, WebServer, start_http
from quota_service.stops import StopWatcher
from quota_service.store.embedded import EmbeddedRedisError

if TYPE_CHECKING:
    from quota_service.store.redis_store import RedisCounterStore

log = logging.getLogger("quota_service")

DRAIN_SECONDS = 5.0


def serve_from_args(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    """``argv``: the serve options as given, which ``--workers N`` (N > 1) hands to every worker."""
    from quota_service.server.supervisor import WORKER_ID_ENV, supervise, worker_count

    try:
        workers = worker_count(str(args.workers))
    except ValueError:
        print(f"quota-service: --workers must be a count, 0 or auto, not {args.workers!r}", file=sys.stderr)
        return 2
    if workers > 1:
        return supervise(argv, args, workers)
    # A supervisor's worker says which one it is in every line.
    worker = os.environ.get(WORKER_ID_ENV, "")
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s {'worker=' + worker + ' ' if worker else ''}%(name)s: %(message)s",
    )
    try:
        return asyncio.run(serve(args))
    except PolicyError as exc:
        for issue in exc.issues:
            print(f"error: {issue}", file=sys.stderr)
        print("quota-service: the policy files are not valid; not starting", file=sys.stderr)
        return 2
    except (QuotaServiceError, EmbeddedRedisError) as exc:
        print(f"quota-service: {exc}", file=sys.stderr)
        return 2


async def serve(args: argparse.Namespace) -> int:
    from quota_service.store.admin_store import RedisAdminStore
    from quota_service.store.embedded import EmbeddedRedis
    from quota_service.store.redis_store import RedisCounterStore

    token = admin_mode(
        listen=args.listen,
        admin_token=args.admin_token,
        insecure_admin=args.insecure_admin,
        viewer_token=args.viewer_token,
    )
    # Any TLS option asks for TLS: TlsFiles refuses an incomplete set, so a client CA without a
    # server certificate never ends up serving plaintext without the client check it asked for.
    # Checked before anything is started, so a refusal leaves no process behind.
    wants_tls = any((args.tls_cert, args.tls_key, args.tls_client_ca))
    tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca) if wants_tls else None
    if not args.reuse_port:
        # Before the embedded Redis or anything else: a port in use leaves nothing behind.
        # (A port shared on purpose is checked by the bind itself, in create_server.)
        await asyncio.to_thread(ensure_free, args.listen)
        if args.http:
            await asyncio.to_thread(ensure_free, args.http)
    # Before the embedded Redis: a bad --ledger-url leaves nothing behind.
    ledger = ledger_from_url(args.ledger_url or f"sqlite:///{Path(args.data_dir).resolve() / 'ledger.db'}")
    try:
        # Every load (this one and each reload) also checks that each webhook's secret is in
        # the environment: a missing one stops start-up, or keeps the last good policy.
        policy = LivePolicy(args.policies, loader=checked_loader(ledger_on=ledger is not None))
    except BaseException:
        if ledger is not None:
            await ledger.close()
        raise
    shadow_policy: LivePolicy | None = None
    if getattr(args, "shadow_policies", ""):
        if args.shadow_samples_per_second < 0:
            raise ConfigurationError("--shadow-samples-per-second must not be negative")
        try:
            shadow_policy = LivePolicy(args.shadow_policies)  # a bad shadow file stops start-up too
        except BaseException:
            if ledger is not None:
                await ledger.close()
            raise
    embedded: EmbeddedRedis | None = None
    redis_url = args.redis_url
    if not redis_url:
        embedded = EmbeddedRedis(data_dir=Path(args.data_dir), persistence=True, appendfsync=args.redis_appendfsync)
        # In the main thread, not a worker thread: the server's PR_SET_PDEATHSIG follows the
        # thread that spawned it (see store.embedded). Nothing is served yet; the wait is short.
        embedded.start()
        redis_url = embedded.url
        store_desc = f"embedded redis-server at {redis_url} (append-only file in {Path(args.data_dir).resolve()})"
    else:
        store_desc = _redact(redis_url)
    web: WebServer | None = None
    ledger_ready = asyncio.create_task(_migrate(ledger)) if ledger is not None else None
    feed = EventFeed(ledger=ledger) if ledger is not None else None
    store = RedisCounterStore.from_url(
        redis_url,
        timeout_seconds=args.store_timeout,
        grace_seconds=args.grace_seconds,
        outbox=ledger is not None,  # no ledger: the scripts append no usage records
        wait_replicas=args.redis_wait_replicas,
        wait_ms=args.redis_wait_ms,
    )
    admin_store = RedisAdminStore(counters=store)
    stops = StopWatcher(store=admin_store)
    notifications = Notifications(ledger=ledger, policy=policy) if ledger is not None else None

    def stored() -> None:  # new events in the ledger: wake the live tails and the deliverer
        if feed is not None:
            feed.notify()
        if notifications is not None:
            notifications.wake()

    relay = AuditRelay(counters=store, ledger=ledger, on_stored=stored) if ledger is not None else None
    # The usage relay drains the outboxes into the ledger; its reaper runs with or without one.
    usage = UsageRelay(store=store, ledger=ledger, on_stored=stored)
    shadow = (
        Shadow(
            policy=shadow_policy,
            read_counters=store.usage,
            record=usage.record if ledger is not None else None,
            samples_per_second=args.shadow_samples_per_second,
        )
        if shadow_policy is not None
        else None
    )
    quotas = Quotas(
        policy=policy,
        store=store,
        stops=stops,
        request_budget_seconds=args.request_budget,
        records=usage.record if ledger is not None else None,
        observer=shadow,
    )
    admin_core = Admin(
        quotas=quotas,
        store=admin_store,
        stops=stops,
        audit_sink=relay.record if relay is not None else None,
    )
    rules = CrossRules(admin=admin_core, policy=policy)  # on_cross: act on crossings the relay stores
    usage.on_new = rules.on_new
    rollups = RollupKeeper(ledger, lambda: policy.current.timezone) if ledger is not None else None
    background = (
        asyncio.create_task(_start_background(ledger_ready, relay, notifications, usage, rollups))
        if ledger_ready is not None and relay is not None and notifications is not None
        else asyncio.create_task(usage.start())
    )
    try:
        await _check_eviction(store, allow=args.allow_eviction)
        # Before serving: a replica never answers without knowing the emergency stops.
        await stops.start()
        # One servicer of each service, shared by gRPC and the HTTP face (--http).
        quota_servicer = QuotaServicer(quotas=quotas)
        admin_servicer = AdminServicer(
            admin=admin_core,
            feed=feed,
            webhooks=notifications.deliverer if notifications is not None else None,
            shadow=shadow,
        )
        server, port, health_servicer = await create_server(
            quotas=quotas,
            listen=args.listen,
            admin=admin_servicer,
            quota_servicer=quota_servicer,
            admin_token=args.admin_token,
            insecure_admin=args.insecure_admin,
            viewer_token=args.viewer_token,
            tls=tls,
            reuse_port=args.reuse_port,
        )
        if args.http:
            web = await start_http(
                args.http,
                quota_servicer=quota_servicer,
                admin_servicer=admin_servicer,
                tokens=token,
                feed=feed,
                readiness=Readiness(
                    store=store.ping,
                    stops_loaded=lambda: stops.loaded,
                    policy_version=lambda: policy.current.version,
                    ledger=ledger.ping if ledger is not None else None,
                    ledger_migrated=lambda: ledger_ready is not None and ledger_ready.done(),
                ),
                reuse_port=args.reuse_port,
                port_file=args.http_port_file,
            )
    except BaseException:
        await _stop_background(background, relay, notifications, usage, rollups)
        await _close_ledger(ledger, ledger_ready)
        await stops.close()
        await store.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        raise
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr="127.0.0.1" if args.listen.startswith("127.") else "0.0.0.0")
    guard = _identity_guard(store, ledger, quotas, stops, health_servicer)
    if web is not None:
        web.store_lost = lambda: guard.lost  # /readyz: not ready while the store has lost its data
    if ledger_ready is not None:
        await asyncio.wait([ledger_ready], timeout=5.0)  # the ledger remembers the store's identity
    await guard.start()  # a store that lost its data is served failing closed, not ready
    await server.start()
    await rules.start()
    host = args.listen.rsplit(":", 1)[0]
    status = policy.status()
    log.info("listening on %s:%d (%s)", host, port, "TLS" if tls else "plaintext")
    log.info("policy version %s from %s; tiers: %s", status.version, ", ".join(status.files), ", ".join(status.tiers))
    if shadow_policy is not None:
        shadow_status = shadow_policy.status()
        log.info(
            "shadow policy version %s from %s: decided on every request, never enforced",
            shadow_status.version,
            ", ".join(shadow_status.files),
        )
    log.info("store: %s", store_desc)
    _check_budget(args.request_budget, args.store_timeout)
    log.info("admin service: %s", _describe_access(token))
    if args.port_file:
        Path(args.port_file).write_text(f"{port}\n")

    stop = asyncio.Event()
    watcher = asyncio.create_task(policy.watch(stop=stop)) if args.watch else None
    shadow_watcher = (
        asyncio.create_task(shadow_policy.watch(stop=stop)) if args.watch and shadow_policy is not None else None
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloaded = (policy,) if shadow_policy is None else (policy, shadow_policy)
    loop.add_signal_handler(signal.SIGHUP, lambda: [asyncio.ensure_future(_reload(p)) for p in reloaded])
    try:
        await stop.wait()
    finally:
        log.info("draining: health NOT_SERVING, %.0f s grace for in-flight calls", DRAIN_SECONDS)
        await health_servicer.enter_graceful_shutdown()
        if web is not None:  # SSE streams end now; JSON calls in flight get the grace
            await web.close()
        with contextlib.suppress(Exception):
            await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.stop(DRAIN_SECONDS)
        for task in (watcher, shadow_watcher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if shadow is not None:
            await shadow.close()
        await quotas.drain()  # for as long as the withdraw retries can last (about 10 s)
        await rules.stop()
        await guard.stop()
        await _stop_background(background, relay, notifications, usage, rollups)
        await _close_ledger(ledger, ledger_ready)
        await stops.close()
        await store.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        log.info("stopped")
    return 0


def _check_budget(request_budget: float, store_timeout: float) -> None:
    """Say so when the budget is not below the Python client's default attempt timeout. A
    caller's own gRPC deadline (less ``quotas.REPLY_MARGIN_SECONDS``) bounds its request anyway;
    the budget bounds the requests whose deadline is longer, or absent, and is what a
    client's attempt timeout must stay above so that a slow store gets it an answer (the
    on_store_error decision, or a retryable UNAVAILABLE) rather than a timed-out attempt."""
    from quota_client.options import ClientOptions

    attempt = ClientOptions().attempt_timeout
    if request_budget >= attempt:
        log.warning(
            "--request-budget %.3g s is not below the Python client's default attempt timeout (%.3g s): "
            "callers without a deadline of their own may wait longer than such a client's attempt during "
            "a store failover; keep the budget below every client's attempt timeout",
            request_budget,
            attempt,
        )
    log.info(
        "deadlines: %.3g s per request at most (every store call within it), %.3g s per store call",
        request_budget,
        min(store_timeout, request_budget),
    )


async def _reload(policy: LivePolicy) -> None:
    # Any failure (a bad file, or a loader bug) is recorded and logged by LivePolicy, with its
    # traceback; the last good policy stays. Nothing may escape into the loop's task handler.
    with contextlib.suppress(Exception):
        await asyncio.to_thread(policy.reload)


async def _check_eviction(store: RedisCounterStore, *, allow: bool) -> None:
    """Refuse to serve on a Redis that may evict keys (unless ``allow``): an evicted counter
    hands spent money back, an evicted reservation or stop is silently lost."""
    try:
        problem = await store.check_eviction_policy()
    except StoreUnavailable as exc:
        log.warning("could not check Redis' maxmemory-policy now (%s); it must be 'noeviction'", exc)
        return
    if problem is None:
        return
    if problem.refuse and not allow:
        raise ConfigurationError(problem.message)
    log.warning("%s", problem.message)


async def _migrate(ledger: Ledger) -> None:
    """Bring the ledger's schema up to date, retrying while the store is down: the quota path
    never waits for the ledger (records wait in Redis meanwhile)."""
    delay = 0.5
    while True:
        try:
            await ledger.migrate()
            log.info("ledger: %s, schema up to date", ledger.describe())
            return
        except LedgerUnavailable as exc:
            log.error("ledger unavailable (%s); retrying in %.0f s", exc, delay)
        except Exception as exc:  # the relay and the webhooks wait on it: never give up
            survived("ledger migration", exc)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30.0)


async def _start_background(
    ready: asyncio.Task[None],
    relay: AuditRelay,
    notifications: Notifications,
    usage: UsageRelay,
    rollups: RollupKeeper | None,
) -> None:
    """Once the ledger's schema is up to date: the usage and audit relays, the webhook
    deliverer and the analytics rollups."""
    await ready
    await usage.start()
    await relay.start()
    await notifications.start()
    if rollups is not None:
        await rollups.start()
    names = ", ".join(e.name or e.id for e in notifications.deliverer.endpoints) or "none"
    log.info("webhooks: %s", names)


async def _stop_background(
    background: asyncio.Task[None] | None,
    relay: AuditRelay | None,
    notifications: Notifications | None,
    usage: UsageRelay,
    rollups: RollupKeeper | None = None,
) -> None:
    if rollups is not None:
        await rollups.stop()
    if background is not None and not background.done():
        background.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await background
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5.0):
            await usage.relay_once()  # the last records of this replica reach the ledger (best effort)
    await usage.stop()
    if relay is not None:
        with contextlib.suppress(Exception):
            await relay.drain()  # the last admin changes of this replica reach the ledger
        await relay.stop()
    if notifications is not None:
        await notifications.stop()


async def _close_ledger(ledger: Ledger | None, ready: asyncio.Task[None] | None) -> None:
    if ready is not None and not ready.done():
        ready.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ready
    if ledger is not None:
        await ledger.close()


async def _restore_automatically(store: RedisCounterStore, ledger: Ledger, policy: CompiledPolicy) -> None:
    """``on_store_lost: restore``: one replica (the one that claims the empty store's identity
    key first) rebuilds the store from the ledger; the others keep failing closed until the
    new identity appears, within a second."""
    from quota_service.restore import restore
    from quota_service.server.store_identity import IDENTITY_KEY

    claim = f"restoring:{os.getpid()}"
    if not await store.client.set(IDENTITY_KEY, claim, nx=True, ex=300):
        log.warning("the store lost its data; another replica is restoring it from the ledger")
        return
    try:
        report = await restore(ledger=ledger, counters=store, policy=policy, force=True)
        log.warning("the store lost its data and was restored from the ledger automatically: %s", report.text())
    except Exception:
        log.exception("restoring the store from the ledger failed; still failing closed (run quota-service restore)")
        with contextlib.suppress(Exception):
            if await store.client.get(IDENTITY_KEY) == claim:
                await store.client.delete(IDENTITY_KEY)


def _identity_guard(
    store: RedisCounterStore,
    ledger: Ledger | None,
    quotas: Quotas,
    stops: StopWatcher,
    health: Any,
) -> IdentityGuard:
    """The store identity guard (:mod:`quota_service.server.store_identity`) wired to this replica."""

    async def lost(why: str) -> None:
        quotas.lost = why
        stops.freeze(True)
        with contextlib.suppress(Exception):
            await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        policy = quotas.policy.current
        if ledger is not None and policy.on_store_lost is StoreLostMode.RESTORE:
            await _restore_automatically(store, ledger, policy)

    async def recovered() -> None:
        quotas.configs.forget_all()
        stops.freeze(False)
        with contextlib.suppress(Exception):
            await stops.refresh()
        quotas.lost = ""
        with contextlib.suppress(Exception):
            await health.set("", health_pb2.HealthCheckResponse.SERVING)

    identity = StoreIdentity(client=store.client, ledger=ledger, timeout_seconds=max(store.timeout_seconds, 1.0))
    return IdentityGuard(identity=identity, on_lost=lost, on_recovered=recovered)


def _describe_access(tokens: AccessTokens | None) -> str:
    if tokens is None:
        return "off (no --admin-token or --viewer-token)"
    if tokens.insecure:
        return "INSECURE (no token, loopback only)"
    roles = [name for name, token in (("admin", tokens.admin), ("viewer (read-only)", tokens.viewer)) if token]
    return "tokens: " + ", ".join(roles)


def _redact(url: str) -> str:
    """The store URL for logs, without a password."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
