"""Webhook delivery of ledger events with the Standard Webhooks conventions: persisted,
retried for more than a day, never on the request path.

What a receiver gets
--------------------
``POST <url>`` with the event as proto3 JSON (:func:`quota_service.ledger.convert.event_to_json`,
``Content-Type: application/json``) and the headers

* ``webhook-id``: the event id, the same on every attempt (receivers de-duplicate on it);
* ``webhook-timestamp``: unix seconds of *this* attempt;
* ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "<webhook-id>.<webhook-timestamp>.<body>">``,
  the key being the base64-decoded part of the secret ``whsec_<base64>`` (:func:`sign`).

A 2xx answer delivers; anything else (another status, a redirect, which is not followed, a
connection error, no answer within ``request_timeout_seconds``) is a failed attempt.

Guarantees
----------
* **At least once, persisted.** Deliveries live in the ledger database (``webhook_deliveries``,
  one row per endpoint and event): a restart, or another replica on the same database,
  resumes every pending delivery. A deliverer that dies mid-attempt leaves the delivery
  leased until ``now + lease``; it is then attempted again (the receiver may see that
  attempt twice: de-duplicate on ``webhook-id``).
* **The schedule.** The first attempt is due as soon as the event is matched; after the
  n-th failed attempt the next is due ``schedule[n-1]`` seconds later
  (:data:`RETRY_SCHEDULE_SECONDS`: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: eight attempts over
  about 27.6 hours); after the last one fails the delivery is ``dead``: kept, counted
  (``quota_webhook_given_up_total``, ``quota_webhook_dead_deliveries``) and listed by
  :meth:`WebhookDeliverer.deliveries`.
* **Matching.** Each endpoint follows the ledger's tail (insertion order) from a persisted
  cursor (``webhook_cursors``), so every event stored after the endpoint was first seen is
  matched once, including records that reached the ledger late. An endpoint seen for the
  first time starts at the newest event: history is not replayed to a new endpoint.
  ``kinds`` empty: every kind; ``tiers`` empty: every tier, else only events whose ``tier``
  is listed (events without a tier, e.g. a global stop, then do not match).
* **Never on the request path.** Only the deliverer's own task talks to endpoints, with at
  most ``concurrency`` requests in flight; a slow or dead endpoint delays nothing but its
  own deliveries. A ledger outage pauses matching and recording (logged, retried each poll).

Several replicas may run deliverers on one PostgreSQL ledger: claiming a due delivery is a
conditional update, so one replica attempts it; matching is idempotent (primary key) and
cursors only move forward.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
import sqlalchemy as sa

from quota_service.clock import Clock, SystemClock, to_ms
from quota_service.ledger import metrics
from quota_service.ledger.convert import event_to_json
from quota_service.ledger.errors import LedgerConfigError, LedgerError
from quota_service.ledger.events import Event, EventKind
from quota_service.ledger.schema import (
    DELIVERY_DEAD,
    DELIVERY_DELIVERED,
    DELIVERY_PENDING,
    webhook_cursors,
    webhook_deliveries,
)
from quota_service.ledger.store import Ledger, translate_errors

__all__ = [
    "RETRY_SCHEDULE_SECONDS",
    "SECRET_PREFIX",
    "Delivery",
    "WebhookDeliverer",
    "WebhookEndpoint",
    "parse_secret",
    "sign",
    "webhook_headers",
]

log = logging.getLogger(__name__)

#: Seconds to wait after the 1st, 2nd, ... failed attempt (the Standard Webhooks / Svix schedule).
RETRY_SCHEDULE_SECONDS: tuple[float, ...] = (5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600)
SECRET_PREFIX = "whsec_"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ERROR_CHARS = 500
_USER_AGENT = "quota-service-webhooks/1"


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    """One ``notifications.webhooks`` entry of the policy: where to POST which events.

    ``secret_env`` names the environment variable holding the secret (never the secret
    itself: secrets stay out of policy files). ``kinds``/``tiers``: empty means every one.
    :class:`LedgerConfigError` for a URL that is not ``http(s)://host...`` or a bad name."""

    url: str
    secret_env: str
    kinds: frozenset[EventKind] = field(default_factory=frozenset)
    tiers: frozenset[str] = field(default_factory=frozenset)
    name: str = ""  # the operator's label (quotactl webhooks, logs); "" shows the id

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise LedgerConfigError(f"webhook url {self.url[:200]!r} must be http(s)://host/...")
        if not _ENV_NAME.fullmatch(self.secret_env):
            raise LedgerConfigError(f"webhook secret_env {self.secret_env[:64]!r} is not an environment variable name")
        object.__setattr__(self, "kinds", frozenset(EventKind(k) for k in self.kinds))
        object.__setattr__(self, "tiers", frozenset(self.tiers))

    @property
    def id(self) -> str:
        """``ep_`` + 16 hex of SHA-256 of the URL: stable across restarts and filter edits
        (the URL is what identifies an endpoint; two entries may not share one)."""
        return "ep_" + hashlib.sha256(self.url.encode()).hexdigest()[:16]

    def wants(self, event: Event) -> bool:
        return (not self.kinds or event.kind in self.kinds) and (not self.tiers or event.tier in self.tiers)


def parse_secret(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: base64-decode what follows ``whsec_``
    (the prefix is optional, as in the reference libraries). :class:`LedgerConfigError`
    when it is not base64 or decodes to nothing."""
    body = secret.strip().removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise LedgerConfigError("a webhook secret must be whsec_<base64>") from exc
    if not key:
        raise LedgerConfigError("a webhook secret must be whsec_<base64> of at least one byte")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "<msg_id>.<timestamp>.<body>">`` (Standard Webhooks)."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def webhook_headers(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, msg_id, timestamp, body),
    }


def _prepare(
    endpoints: Sequence[WebhookEndpoint], env: Mapping[str, str]
) -> tuple[dict[str, WebhookEndpoint], dict[str, bytes]]:
    """The endpoints by id and their HMAC keys, read from ``env``; :class:`LedgerConfigError`
    naming the webhook and the variable (never the value) for a missing or malformed secret."""
    found: dict[str, WebhookEndpoint] = {}
    keys: dict[str, bytes] = {}
    for endpoint in endpoints:
        label = f"webhook {endpoint.name!r}" if endpoint.name else f"webhook {endpoint.url[:200]!r}"
        if endpoint.id in found:
            raise LedgerConfigError(f"webhook url {endpoint.url[:200]!r} is listed twice")
        secret = env.get(endpoint.secret_env)
        if not secret:
            raise LedgerConfigError(f"{label}: environment variable {endpoint.secret_env} is not set")
        try:
            keys[endpoint.id] = parse_secret(secret)
        except LedgerConfigError as exc:
            raise LedgerConfigError(f"{label}: {endpoint.secret_env}: {exc}") from None
        found[endpoint.id] = endpoint
    return found, keys


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery's stored state (``quotactl webhooks``, tests). Times in unix ms;
    ``last_status`` 0: no HTTP answer (see ``last_error``)."""

    endpoint_id: str
    event_id: str
    state: str
    attempts: int
    next_attempt_at_ms: int
    last_status: int
    last_error: str
    created_at_ms: int
    updated_at_ms: int


@dataclass(frozen=True, slots=True)
class _Claim:
    endpoint: WebhookEndpoint
    key: bytes
    event_id: str
    attempts: int  # attempts made before this one: the fence for recording its result


class WebhookDeliverer:
    """Matches ledger events to endpoints and delivers them; see the module docstring.

    ``clock`` decides what is due and stamps ``webhook-timestamp``; ``schedule`` the waits
    between attempts (seconds); ``poll_interval_seconds`` how often the ledger is looked at
    when nothing wakes the deliverer (:meth:`wake`); ``lease_seconds`` how long a claimed
    delivery is held before another deliverer may attempt it (default: the request timeout
    plus 30 s). Secrets are read from ``environ`` once, here: a missing or malformed one is
    a :class:`LedgerConfigError` naming the endpoint and the variable, never the value."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        endpoints: Sequence[WebhookEndpoint],
        environ: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        schedule: Sequence[float] = RETRY_SCHEDULE_SECONDS,
        concurrency: int = 8,
        request_timeout_seconds: float = 10.0,
        poll_interval_seconds: float = 1.0,
        lease_seconds: float | None = None,
        batch_size: int = 200,
    ) -> None:
        if concurrency < 1 or request_timeout_seconds <= 0 or poll_interval_seconds <= 0 or batch_size < 1:
            raise ValueError("concurrency, timeouts, poll interval and batch size must be positive")
        if any(s < 0 for s in schedule):
            raise ValueError("retry waits must not be negative")
        self._ledger = ledger
        self._endpoints, self._keys = _prepare(endpoints, os.environ if environ is None else environ)
        self._clock: Clock = clock or SystemClock()
        self._schedule = tuple(float(s) for s in schedule)
        self._concurrency = concurrency
        self._timeout = request_timeout_seconds
        self._poll = poll_interval_seconds
        self._lease_ms = int(1000 * (request_timeout_seconds + 30.0 if lease_seconds is None else lease_seconds))
        self._batch = batch_size
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._cursors_ready = False
        self._gauges_at = 0.0

    @property
    def endpoints(self) -> list[WebhookEndpoint]:
        return list(self._endpoints.values())

    def set_endpoints(self, endpoints: Sequence[WebhookEndpoint], environ: Mapping[str, str] | None = None) -> None:
        """Replace the endpoints (a policy reload), checked as in the constructor: on a
        :class:`LedgerConfigError` nothing changes. A new endpoint starts at the newest event;
        one that stays (same URL) keeps its cursor and deliveries; a removed one's pending
        deliveries stay stored and resume if it comes back. Attempts in flight finish."""
        found, keys = _prepare(endpoints, os.environ if environ is None else environ)
        if list(found.values()) == list(self._endpoints.values()) and keys == self._keys:
            return
        self._endpoints, self._keys = found, keys
        self._cursors_ready = False
        self._wake.set()

    def _now_ms(self) -> int:
        return to_ms(self._clock.now())

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open the HTTP client and start the background task. The cursors of endpoints seen
        for the first time are placed at the newest event now (when the ledger answers;
        otherwise on the task's first successful pass)."""
        if self._task is not None:
            return
        self._stopping = False
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout), headers={"user-agent": _USER_AGENT}
        )
        try:
            await self._ensure_cursors()
        except LedgerError as exc:
            log.warning("webhooks: ledger not ready at start (%s); retrying in the background", exc)
        self._task = asyncio.create_task(self._run(), name="webhook deliverer")

    async def stop(self, grace_seconds: float | None = None) -> None:
        """Stop the task; attempts in flight get ``grace_seconds`` (default: the request
        timeout) to finish, then are cancelled (their deliveries stay pending, leased)."""
        grace = self._timeout if grace_seconds is None else grace_seconds
        self._stopping = True
        self._wake.set()
        pending = {t for t in (self._task, *self._inflight) if t is not None}
        if pending:
            # The loop ends after its current pass, attempts after their request (or timeout).
            _, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def wake(self) -> None:
        """Look at the ledger now rather than at the next poll (after an insert, in tests
        after moving the clock)."""
        self._wake.set()

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self.match_new_events()
                await self._dispatch_due()
                await self._refresh_gauges(force=False)
            except LedgerError as exc:
                log.warning("webhooks: ledger unavailable, retrying: %s", exc)
            except Exception:  # the deliverer must outlive any one bad pass
                log.exception("webhooks: delivery pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll)

    # -- matching events to endpoints -------------------------------------------------

    async def _ensure_cursors(self) -> None:
        if self._cursors_ready or not self._endpoints:
            self._cursors_ready = True
            return
        head = await self._ledger.head_position()
        now_ms = self._now_ms()
        rows = [{"endpoint_id": e, "position": head, "updated_at_ms": now_ms} for e in self._endpoints]
        with translate_errors("webhook_cursors"):
            async with self._ledger.transaction(write=True) as conn:
                statement = self._ledger.dialect_insert(webhook_cursors).on_conflict_do_nothing(
                    index_elements=[webhook_cursors.c.endpoint_id]
                )
                await conn.execute(statement, rows)
        self._cursors_ready = True

    async def _cursor(self, endpoint_id: str) -> int:
        with translate_errors("webhook_cursors"):
            async with self._ledger.transaction(write=False) as conn:
                position = (
                    await conn.execute(
                        sa.select(webhook_cursors.c.position).where(webhook_cursors.c.endpoint_id == endpoint_id)
                    )
                ).scalar_one()
        return int(position)

    async def match_new_events(self) -> int:
        """Turn events stored since each endpoint's cursor into pending deliveries (one
        transaction per page: the deliveries and the cursor move together); how many new."""
        await self._ensure_cursors()
        created = 0
        for endpoint in self._endpoints.values():
            position = await self._cursor(endpoint.id)
            while True:
                page = await self._ledger.events_after(after_position=position, kinds=endpoint.kinds, limit=self._batch)
                wanted = [e for e in page.events if endpoint.wants(e)]
                if page.position == position and not wanted:
                    break
                created += await self._enqueue(endpoint, wanted, page.position)
                position = page.position
                if len(page.events) < self._batch:
                    break
        if created:
            self._wake.set()
        return created

    async def _enqueue(self, endpoint: WebhookEndpoint, found: Iterable[Event], position: int) -> int:
        now_ms = self._now_ms()
        rows = [
            {
                "endpoint_id": endpoint.id,
                "event_id": e.id,
                "state": DELIVERY_PENDING,
                "attempts": 0,
                "next_attempt_at_ms": now_ms,
                "last_status": 0,
                "last_error": "",
                "created_at_ms": now_ms,
                "updated_at_ms": now_ms,
            }
            for e in found
        ]
        created = 0
        with translate_errors("webhook_enqueue"):
            async with self._ledger.transaction(write=True) as conn:
                if rows:
                    statement = (
                        self._ledger.dialect_insert(webhook_deliveries)
                        .on_conflict_do_nothing(
                            index_elements=[webhook_deliveries.c.endpoint_id, webhook_deliveries.c.event_id]
                        )
                        .returning(webhook_deliveries.c.event_id)
                    )
                    created = len((await conn.execute(statement, rows)).all())
                await conn.execute(
                    sa.update(webhook_cursors)
                    .where(webhook_cursors.c.endpoint_id == endpoint.id, webhook_cursors.c.position < position)
                    .values(position=position, updated_at_ms=now_ms)
                )
        return created

    # -- attempts ----------------------------------------------------------------------

    async def _claim(self, limit: int) -> list[_Claim]:
        now_ms = self._now_ms()
        d = webhook_deliveries.c
        due = (
            d.state == DELIVERY_PENDING,
            d.next_attempt_at_ms <= now_ms,
            d.endpoint_id.in_(list(self._endpoints)),
        )
        claims: list[_Claim] = []
        with translate_errors("webhook_claim"):
            async with self._ledger.transaction(write=True) as conn:
                candidates = (
                    await conn.execute(
                        sa.select(d.endpoint_id, d.event_id)
                        .where(*due)
                        .order_by(d.next_attempt_at_ms, d.event_id)
                        .limit(limit)
                    )
                ).all()
                for endpoint_id, event_id in candidates:
                    # Conditional: a replica that claimed it first has moved next_attempt_at_ms on.
                    claimed = (
                        await conn.execute(
                            sa.update(webhook_deliveries)
                            .where(d.endpoint_id == endpoint_id, d.event_id == event_id, *due)
                            .values(next_attempt_at_ms=now_ms + self._lease_ms)
                            .returning(d.attempts)
                        )
                    ).first()
                    if claimed is not None:
                        claims.append(
                            _Claim(
                                self._endpoints[endpoint_id], self._keys[endpoint_id], event_id, int(claimed.attempts)
                            )
                        )
        return claims

    async def _dispatch_due(self) -> None:
        free = self._concurrency - len(self._inflight)
        if free <= 0 or not self._endpoints or self._stopping:
            return
        claims = await self._claim(free)
        if not claims:
            return
        bodies = await self._ledger.get_events(sorted({c.event_id for c in claims}))
        for claim in claims:
            task = asyncio.create_task(
                self._attempt(claim, bodies.get(claim.event_id)), name=f"webhook {claim.event_id}"
            )
            self._inflight.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("webhooks: attempt failed unexpectedly", exc_info=task.exception())
        self._wake.set()

    async def _attempt(self, claim: _Claim, event: Event | None) -> None:
        if event is None:  # removed from the ledger (retention keeps pending ones; a manual delete)
            await self._record(claim, status=0, error="event no longer in the ledger", final=True)
            return
        assert self._session is not None
        body = event_to_json(event)
        timestamp = int(self._clock.now().timestamp())
        headers = webhook_headers(claim.key, event.id, timestamp, body)
        status, error = 0, ""
        try:
            async with self._session.post(
                claim.endpoint.url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                status = resp.status
                if not 200 <= status < 300:
                    snippet = (await resp.content.read(200)).decode("utf-8", "replace")
                    error = f"HTTP {status}: {snippet}".strip()
        except TimeoutError:
            error = f"no answer within {self._timeout:g} s"
        except aiohttp.ClientError as exc:
            error = f"{type(exc).__name__}: {exc}"
        try:
            await self._record(claim, status=status, error=error, final=False)
        except LedgerError as exc:  # the lease runs out and the delivery is attempted again
            log.warning("webhooks: could not record the attempt on %s: %s", claim.event_id, exc)

    async def _record(self, claim: _Claim, *, status: int, error: str, final: bool) -> None:
        now_ms = self._now_ms()
        attempts = claim.attempts + 1
        delivered = not error and 200 <= status < 300
        values: dict[str, object] = {
            "attempts": attempts,
            "last_status": status,
            "last_error": error[:_ERROR_CHARS],
            "updated_at_ms": now_ms,
        }
        if delivered:
            values["state"] = DELIVERY_DELIVERED
        elif final or attempts > len(self._schedule):
            values["state"] = DELIVERY_DEAD
        else:
            values["next_attempt_at_ms"] = now_ms + int(self._schedule[attempts - 1] * 1000)
        d = webhook_deliveries.c
        with translate_errors("webhook_record"):
            async with self._ledger.transaction(write=True) as conn:
                result = await conn.execute(
                    sa.update(webhook_deliveries)
                    .where(
                        d.endpoint_id == claim.endpoint.id,
                        d.event_id == claim.event_id,
                        d.state == DELIVERY_PENDING,
                        d.attempts == claim.attempts,  # only this attempt's claimant records it
                    )
                    .values(**values)
                )
        if result.rowcount != 1:
            return
        endpoint_id = claim.endpoint.id
        if delivered:
            metrics.WEBHOOK_DELIVERED.labels(endpoint_id).inc()
            return
        metrics.WEBHOOK_FAILED_ATTEMPTS.labels(endpoint_id).inc()
        if values.get("state") == DELIVERY_DEAD:
            metrics.WEBHOOK_GAVE_UP.labels(endpoint_id).inc()
            log.error(
                "webhooks: gave up on %s to %s after %d attempts: %s",
                claim.event_id,
                claim.endpoint.url,
                attempts,
                error,
            )
        else:
            log.info("webhooks: attempt %d of %s to %s failed: %s", attempts, claim.event_id, claim.endpoint.url, error)

    # -- visibility --------------------------------------------------------------------

    async def deliveries(
        self, *, endpoint_id: str = "", state: str = "", limit: int = 1000, newest_first: bool = False
    ) -> list[Delivery]:
        """Stored deliveries, oldest first (``newest_first``: by last update, newest first;
        ``endpoint_id``/``state`` ``""``: any)."""
        d = webhook_deliveries.c
        order = (d.updated_at_ms.desc(), d.event_id.desc()) if newest_first else (d.created_at_ms, d.event_id)
        query = sa.select(webhook_deliveries).order_by(*order).limit(limit)
        if endpoint_id:
            query = query.where(d.endpoint_id == endpoint_id)
        if state:
            query = query.where(d.state == state)
        with translate_errors("webhook_deliveries"):
            async with self._ledger.transaction(write=False) as conn:
                rows = (await conn.execute(query)).all()
        return [Delivery(**row._mapping) for row in rows]

    async def counts(self) -> dict[tuple[str, str], int]:
        """``{(endpoint_id, state): deliveries}`` over every stored delivery (every replica's)."""
        d = webhook_deliveries.c
        query = sa.select(d.endpoint_id, d.state, sa.func.count()).group_by(d.endpoint_id, d.state)
        with translate_errors("webhook_counts"):
            async with self._ledger.transaction(write=False) as conn:
                return {(e, s): int(n) for e, s, n in (await conn.execute(query)).all()}

    async def _refresh_gauges(self, *, force: bool) -> None:
        if not force and time.monotonic() - self._gauges_at < 5.0:
            return
        await self.refresh_gauges()

    async def refresh_gauges(self) -> None:
        """Set the pending/dead gauges from the stored deliveries (all replicas' together)."""
        d = webhook_deliveries.c
        query = (
            sa.select(d.endpoint_id, d.state, sa.func.count())
            .where(d.state.in_([DELIVERY_PENDING, DELIVERY_DEAD]))
            .group_by(d.endpoint_id, d.state)
        )
        with translate_errors("webhook_gauges"):
            async with self._ledger.transaction(write=False) as conn:
                counts = {(e, s): int(n) for e, s, n in (await conn.execute(query)).all()}
        for endpoint_id in self._endpoints:
            metrics.WEBHOOK_PENDING.labels(endpoint_id).set(counts.get((endpoint_id, DELIVERY_PENDING), 0))
            metrics.WEBHOOK_DEAD.labels(endpoint_id).set(counts.get((endpoint_id, DELIVERY_DEAD), 0))
        self._gauges_at = time.monotonic()
