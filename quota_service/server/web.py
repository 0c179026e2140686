"""The HTTP face: the dashboard, the JSON API, live events, health and metrics (``serve --http``).

One aiohttp server in the gRPC server's process and event loop (aiohttp installs no signal
handlers, so SIGTERM stays with ``serve``'s graceful drain):

==============================  ===============================================================
path                            what
==============================  ===============================================================
``GET /``                       the dashboard (static files shipped in ``quota_service/dashboard``)
``GET /static/<file>``          its script, style sheet and icon
``GET /healthz``                liveness: 200 while the process serves (503 once draining)
``GET /readyz``                 readiness (JSON): the policy is loaded, Redis answers and the
                                stops are read (else 503); a ledger that does not answer is
                                ``"degraded"`` but still 200 (the quota path does not need it)
``GET /metrics``                Prometheus (every worker's sum under ``serve --workers`` with
                                ``PROMETHEUS_MULTIPROC_DIR`` set)
``GET /session``                the role of the ``Authorization`` token (admin or viewer)
``GET /events``                 Server-Sent Events: the event feed's live tail (viewer or admin
                                token, as WatchEvents), a ``tick`` every second; resumes after
                                ``Last-Event-ID``
``POST /quota.v1.*/<Method>``   every unary RPC in Connect's unary JSON form
                                (:mod:`quota_service.server.connect`)
==============================  ===============================================================

Credentials travel only in the ``Authorization`` header (the page keeps its token in
session storage and reads ``/events`` with ``fetch``, never ``EventSource``, which cannot
send headers): nothing secret in a URL or an access log; no cookies, so no CSRF. The access
log is off (gRPC calls are not logged one by one either).

Shutdown (:meth:`WebServer.close`): ``/healthz`` and ``/readyz`` answer 503, every SSE
stream ends at once (their handlers wait on the closing event besides the feed), then the
listener closes and in-flight JSON calls get the grace period to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format

from quota_service.errors import QuotaServiceError
from quota_service.ledger.convert import event_to_proto
from quota_service.ledger.errors import EventNotFound
from quota_service.ledger.events import Event, EventKind
from quota_service.ledger.feed import EventFeed
from quota_service.server.app import AddressInUse, ConfigurationError, ListenAddress
from quota_service.server.auth import AccessTokens, authorize
from quota_service.server.connect import ConnectHandler, error_of, error_response, metadata_of, procedures

log = logging.getLogger(__name__)

#: Seconds between ``tick`` messages on an SSE stream: the page refreshes its snapshot on
#: them and takes their absence as a dead connection.
TICK_SECONDS = 1.0
#: Events buffered per SSE stream before the tail waits for the client.
STREAM_BUFFER = 1000
#: Seconds a readiness probe waits for Redis or the ledger.
PROBE_SECONDS = 1.0

STATIC_FILES = {
    "app.js": "text/javascript",
    "charts.js": "text/javascript",
    "style.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)

Probe = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Readiness:
    """What ``/readyz`` checks. ``store``: pings Redis (raises when it does not answer);
    ``stops_loaded``: the emergency stops were read; ``ledger``: pings the ledger store
    (``None``: no ledger), once ``ledger_migrated`` says its schema is up to date."""

    store: Probe
    stops_loaded: Callable[[], bool]
    policy_version: Callable[[], str]
    ledger: Probe | None = None
    ledger_migrated: Callable[[], bool] = lambda: True

    async def check(self) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, str] = {"policy": "ok", "stops": "ok" if self.stops_loaded() else "not read yet"}
        checks["redis"] = await _probe(self.store)
        ready = checks["redis"] == "ok" and checks["stops"] == "ok"
        status = "ok" if ready else "not ready"
        if self.ledger is not None:
            checks["ledger"] = await _probe(self.ledger) if self.ledger_migrated() else "schema not migrated yet"
            if ready and checks["ledger"] != "ok":
                status = "degraded"
        return ready, {"status": status, "policy_version": self.policy_version(), "checks": checks}


async def _probe(probe: Probe) -> str:
    try:
        async with asyncio.timeout(PROBE_SECONDS):
            await probe()
    except TimeoutError:
        return f"no answer within {PROBE_SECONDS:g} s"
    except (QuotaServiceError, OSError) as exc:
        return f"unavailable: {exc}"[:200]
    return "ok"


@dataclass
class WebServer:
    """Build with the shared servicers, :meth:`start`, :meth:`close` on shutdown."""

    quota_servicer: object
    admin_servicer: object | None
    tokens: AccessTokens | None
    feed: EventFeed | None = None
    readiness: Readiness | None = None
    grace_seconds: float = 5.0
    #: Why the store is not trusted ("" when it is): a Redis that lost its data (the store
    #: identity guard, :mod:`quota_service.server.store_identity`) makes /readyz answer 503.
    store_lost: Callable[[], str] = lambda: ""
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    def application(self) -> web.Application:
        app = web.Application(middlewares=[_security_headers], client_max_size=1 << 20)
        connect = ConnectHandler(
            procedures=procedures(
                quota_servicer=self.quota_servicer, admin_servicer=self.admin_servicer, tokens=self.tokens
            ),
            tokens=self.tokens,
        )
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/events", self._events)
        app.router.add_get("/session", self._session)
        app.router.add_route("*", "/quota.v1.{service}/{method}", connect)
        return app

    async def start(self, listen: str, *, reuse_port: bool = False) -> int:
        """Listen on ``listen`` (``HOST:PORT``; port 0 picks one) and return the bound port.
        A port in use is :class:`AddressInUse` (unless ``reuse_port`` shares it)."""
        address = ListenAddress.parse(listen)
        if address is None:
            raise ConfigurationError(f"--http must be HOST:PORT, not {listen!r}")
        runner = web.AppRunner(self.application(), access_log=None, shutdown_timeout=self.grace_seconds)
        await runner.setup()
        site = web.TCPSite(runner, address.host or None, address.port, reuse_port=reuse_port or None)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            if exc.errno == 98:  # EADDRINUSE
                raise AddressInUse(address) from None
            raise ConfigurationError(f"could not listen on {listen} (--http): {exc.strerror or exc}") from None
        self._runner = runner
        bound = runner.addresses
        return int(bound[0][1]) if bound else address.port

    async def close(self) -> None:
        """End every SSE stream now, stop listening, give JSON calls the grace period."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- pages --------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return _file("index.html", "text/html")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            raise web.HTTPNotFound()
        return _file(name, STATIC_FILES[name])

    # -- health -------------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        if self._closing.is_set():
            return web.Response(status=503, text="draining\n")
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.StreamResponse:
        if self._closing.is_set():
            return web.json_response({"status": "draining"}, status=503)
        lost = self.store_lost()
        if lost:
            return web.json_response({"status": "not ready", "store": f"lost its data: {lost}"}, status=503)
        if self.readiness is None:
            return web.json_response({"status": "ok"})
        ready, body = await self.readiness.check()
        return web.json_response(body, status=200 if ready else 503)

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

        registry: Any = REGISTRY
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = await asyncio.to_thread(generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _session(self, request: web.Request) -> web.StreamResponse:
        """The role of the request's token (``{"role": "admin"}`` or ``"viewer"``), so the page
        shows the admin controls only to an admin (the server refuses them anyway)."""
        if self.tokens is None:
            return error_response(grpc.StatusCode.UNIMPLEMENTED, "AdminService is not served (no tokens)")
        try:
            role = authorize(self.tokens, "GetSubject", metadata_of(request))
        except QuotaServiceError as exc:
            return error_of(exc)
        return web.json_response({"role": role.value}, headers={"Cache-Control": "no-store"})

    # -- live events ----------------------------------------------------------------------

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """``text/event-stream``: ``event: <KIND>`` / ``id: <event id>`` / ``data: <Event JSON>``
        for each stored event (``?kinds=THRESHOLD_CROSSED,STOP_CHANGED`` filters), ``event:
        tick`` every :data:`TICK_SECONDS`, ``event: reset`` when ``Last-Event-ID`` is no longer
        in the ledger (the tail restarts from now: reload what you show)."""
        if self.tokens is None:
            return error_response(grpc.StatusCode.UNIMPLEMENTED, "AdminService is not served: no live events")
        try:
            authorize(self.tokens, "WatchEvents", metadata_of(request))
        except QuotaServiceError as exc:
            return error_of(exc)
        try:
            kinds = tuple(
                EventKind[name.strip().upper()] for name in request.query.get("kinds", "").split(",") if name.strip()
            )
        except KeyError as exc:
            return error_response(grpc.StatusCode.INVALID_ARGUMENT, f"unknown event kind {exc}")
        after_id = request.headers.get("Last-Event-ID", "").strip()
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        queue: asyncio.Queue[Event | str] = asyncio.Queue(STREAM_BUFFER)
        pump = asyncio.create_task(self._pump(queue, kinds, after_id)) if self.feed is not None else None
        closing = asyncio.create_task(self._closing.wait())
        loop = asyncio.get_running_loop()
        ticked = loop.time()
        try:
            await response.write(b"retry: 1000\n\n")
            while not self._closing.is_set():
                getter = asyncio.create_task(queue.get())
                waiting: set[asyncio.Future[Any]] = {getter, closing}
                if pump is not None:
                    waiting.add(pump)
                done, _ = await asyncio.wait(waiting, timeout=TICK_SECONDS, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await getter
                if closing in done:
                    break
                if getter in done:
                    await response.write(_sse(getter.result()))
                elif pump is not None and pump in done:
                    break  # the ledger failed: the client reconnects (and resumes)
                if loop.time() - ticked >= TICK_SECONDS:  # a tick a second, busy or not
                    ticked = loop.time()
                    await response.write(b"event: tick\ndata: {}\n\n")
        except ConnectionResetError:
            pass  # the client went away
        finally:
            closing.cancel()
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await response.write_eof()
        return response

    async def _pump(self, queue: asyncio.Queue[Event | str], kinds: tuple[EventKind, ...], after_id: str) -> None:
        assert self.feed is not None
        try:
            async for event in _watch(self.feed, kinds, after_id):
                await queue.put(event)
        except EventNotFound:
            await queue.put("reset")
            async for event in _watch(self.feed, kinds, ""):
                await queue.put(event)


def _watch(feed: EventFeed, kinds: tuple[EventKind, ...], after_id: str) -> AsyncIterator[Event]:
    return feed.watch(kinds=kinds, after_id=after_id)


def _sse(item: Event | str) -> bytes:
    if isinstance(item, str):
        return f"event: {item}\ndata: {{}}\n\n".encode()
    data = json_format.MessageToJson(event_to_proto(item), indent=None)
    return f"id: {item.id}\nevent: {item.kind.name}\ndata: {data}\n\n".encode()


def _file(name: str, content_type: str) -> web.Response:
    body = (resources.files("quota_service") / "dashboard" / name).read_bytes()
    charset = "utf-8" if content_type.startswith("text/") else None
    return web.Response(body=body, content_type=content_type, charset=charset, headers={"Cache-Control": "no-cache"})


@web.middleware
async def _security_headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    response = await handler(request)
    if not response.prepared:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Frame-Options", "DENY")
    return response


async def start_http(
    listen: str,
    *,
    quota_servicer: object,
    admin_servicer: object | None,
    tokens: AccessTokens | None,
    feed: EventFeed | None,
    readiness: Readiness,
    reuse_port: bool,
    port_file: str = "",
) -> WebServer:
    """``serve --http``: start the HTTP face, log its URL, write its port to ``port_file``."""
    server = WebServer(
        quota_servicer=quota_servicer, admin_servicer=admin_servicer, tokens=tokens, feed=feed, readiness=readiness
    )
    port = await server.start(listen, reuse_port=reuse_port)
    address = ListenAddress.parse(listen)
    log.info("dashboard and JSON API on %s", describe(address.host if address else "", port))
    if port_file:
        await asyncio.to_thread(_write_port, port_file, port)
    return server


def _write_port(path: str, port: int) -> None:
    from pathlib import Path

    tmp = Path(path + ".tmp")
    tmp.write_text(f"{port}\n")
    tmp.replace(path)


def describe(host: str, port: int) -> str:
    """The dashboard's URL for the log (``0.0.0.0`` shown as ``127.0.0.1``)."""
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else ("[::1]" if host == "::" else host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


__all__ = ["Readiness", "WebServer", "describe", "start_http"]
