"""The ledger store: every :class:`~quota_service.ledger.events.Event`, in SQLite or PostgreSQL.

Chosen by URL (:func:`ledger_from_url`):

* ``sqlite:///PATH`` (``sqlite+aiosqlite`` underneath): one file, the default
  (``ledger.db`` in the data dir); WAL journal, ``synchronous=FULL`` (a record acknowledged
  to its outbox must survive a power cut), a busy timeout so several processes on one host
  can share the file. ``:memory:`` is refused: a ledger that vanishes is a misconfiguration.
* ``postgresql://...`` / ``postgres://...`` (``postgresql+asyncpg`` underneath): production,
  shared by every replica.
* ``none``: no ledger; :func:`ledger_from_url` returns ``None`` and the caller runs without
  records (nothing is written anywhere, nothing waits for it).

One SQLAlchemy Core table definition (:mod:`quota_service.ledger.schema`) serves both; the
schema is made by the alembic migrations shipped in ``migrations/`` and applied by
:meth:`Ledger.migrate` at start (idempotent; PostgreSQL replicas starting together take an
advisory lock and migrate one at a time).

Contract
--------
* **Idempotent on id.** :meth:`Ledger.insert` is ``INSERT ... ON CONFLICT (id) DO NOTHING``
  through the dialect's own insert; a row is never overwritten, so a retried or replayed
  batch (the same ids) changes nothing and reports 0 new rows. One call is one transaction:
  all of the batch is stored, or (on an error) none of it.
* **Two orders.** :meth:`Ledger.list_events` pages by *time*: ``(at_ms, id)`` ascending,
  keyset pagination with an opaque token, so no row is skipped or repeated across pages of
  one unchanging ledger. A record that reaches the ledger late (it waited in an outbox while
  the store was down) with an ``at_ms`` before pages already read is not in them: the time
  order is for reports and exports over a settled past. :meth:`Ledger.events_after` follows
  *insertion*: every row gets ``seq``, strictly increasing **in commit order** (writers
  serialise on an in-process lock plus, on PostgreSQL, a transaction-scoped advisory lock,
  SQLite serialises writers itself with ``BEGIN IMMEDIATE``), so every reader sees a prefix
  of ``seq`` and a tail resumed after an event has no gap and no duplicate, whatever
  ``at_ms`` the late rows carry.
* **Retention.** :meth:`Ledger.delete_older_than` removes events with ``at_ms`` before the
  cut in chunks, except the newest row (so ``seq`` never goes back and is never reused) and
  events a pending webhook delivery still needs; finished deliveries older than the cut go
  too. A tail cannot resume from a removed event (:class:`EventNotFound`).
* **When the store is down** every method raises :class:`LedgerUnavailable` within about
  ``timeout_seconds`` (connect, statement and pool timeouts), having written nothing;
  connections are checked before use, so the next call after the store returns works.
  Other store errors (a schema mismatch, a constraint other than the id) raise
  :class:`LedgerError`: a bug, not an outage. Callers keep records in their outbox until
  ``insert`` returns, then acknowledge them.

Not thread-safe; one :class:`Ledger` per event loop. Times are unix milliseconds.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from quota_service.clock import Clock, SystemClock, to_ms
from quota_service.errors import InvalidRequest
from quota_service.ledger import metrics
from quota_service.ledger.errors import EventNotFound, LedgerConfigError, LedgerError, LedgerUnavailable
from quota_service.ledger.events import Event, EventKind, LimitSnapshot, Threshold
from quota_service.ledger.schema import DELIVERY_PENDING, events, relay_cursors, webhook_deliveries
from quota_service.policy.domain import Decision, Reason

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_TIMEOUT_SECONDS",
    "MAX_PAGE_SIZE",
    "MIGRATIONS_DIR",
    "ROLLUP_LOCK_KEY",
    "EventRow",
    "Ledger",
    "TailPage",
    "amounts_json",
    "event_of",
    "ledger_from_url",
    "row_of",
    "translate_errors",
]

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
DEFAULT_TIMEOUT_SECONDS = 5.0
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# PostgreSQL advisory lock keys (bigint): "quota" in ASCII, then a number per purpose.
_SEQ_LOCK_KEY = 0x71756F7461_0001
_MIGRATE_LOCK_KEY = 0x71756F7461_0002
#: Held by the step that adds records to the analytics rollups (:mod:`quota_service.ledger.rollup`).
ROLLUP_LOCK_KEY = 0x71756F7461_0003
_DELETE_CHUNK = 5000
_TOKEN_PREFIX = "t1."
# SQLSTATE classes of an outage: 08 connection exception, 53 insufficient resources,
# 57 operator intervention (admin shutdown, cannot connect now), 58 system error (I/O).
_UNAVAILABLE_SQLSTATE = ("08", "53", "57", "58")
# SQLite OperationalError texts that mean "not now", as opposed to "no such table".
_SQLITE_TRANSIENT = ("locked", "busy", "unable to open", "disk i/o", "readonly", "full")


def _redacted(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return url.split("@")[-1]


def _sqlstate(exc: BaseException) -> str:
    for candidate in (exc, getattr(exc, "orig", None), getattr(getattr(exc, "orig", None), "__cause__", None)):
        state = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(state, str):
            return state
    return ""


def _transient(exc: sa_exc.DBAPIError) -> bool:
    if exc.connection_invalidated or isinstance(exc, sa_exc.InterfaceError):
        return True
    state = _sqlstate(exc)
    if state:
        return state[:2] in _UNAVAILABLE_SQLSTATE
    if isinstance(exc, sa_exc.OperationalError):
        text = str(exc.orig).lower()
        return not text or any(marker in text for marker in _SQLITE_TRANSIENT) or "connect" in text
    return isinstance(exc.orig, OSError | TimeoutError)


def _describe(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    name = type(orig if orig is not None else exc).__name__
    return f"{name}: {text[0]}" if text else name


@contextlib.contextmanager
def translate_errors(operation: str) -> Iterator[None]:
    """The one place driver exceptions become ledger errors: an outage (connection refused
    or lost, server shutting down, timeouts, a locked SQLite file) -> :class:`LedgerUnavailable`,
    anything else from the store -> :class:`LedgerError`. Our own errors pass through."""
    try:
        yield
    except (LedgerError, InvalidRequest, EventNotFound):
        raise
    except sa_exc.DBAPIError as exc:
        if _transient(exc):
            metrics.LEDGER_ERRORS.labels(operation, "unavailable").inc()
            raise LedgerUnavailable(f"ledger store unavailable ({operation}): {_describe(exc)}") from exc
        metrics.LEDGER_ERRORS.labels(operation, "error").inc()
        raise LedgerError(f"ledger store error ({operation}): {_describe(exc)}") from exc
    except (sa_exc.TimeoutError, sa_exc.DisconnectionError, OSError, TimeoutError) as exc:
        metrics.LEDGER_ERRORS.labels(operation, "unavailable").inc()
        raise LedgerUnavailable(f"ledger store unavailable ({operation}): {_describe(exc)}") from exc
    except sa_exc.SQLAlchemyError as exc:
        metrics.LEDGER_ERRORS.labels(operation, "error").inc()
        raise LedgerError(f"ledger store error ({operation}): {_describe(exc)}") from exc


def _sqlite_engine(url: URL, timeout_seconds: float) -> AsyncEngine:
    database = url.database or ""
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        raise LedgerConfigError("a SQLite ledger needs a file: sqlite:///PATH (an in-memory ledger would vanish)")
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(
        url.set(drivername="sqlite+aiosqlite"),
        connect_args={"timeout": timeout_seconds},
        pool_pre_ping=False,
    )
    busy_ms = int(timeout_seconds * 1000)

    @sa_event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver's own implicit BEGIN is off: ours (below) says DEFERRED or IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=FULL", f"busy_timeout={busy_ms}"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @sa_event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # Writers take the write lock up front: a deferred transaction that reads max(seq)
        # and then writes could otherwise interleave with another process's writer.
        immediate = conn.get_execution_options().get("quota_ledger_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _postgres_engine(url: URL, timeout_seconds: float) -> AsyncEngine:
    return create_async_engine(
        url.set(drivername="postgresql+asyncpg"),
        connect_args={
            "timeout": timeout_seconds,
            "command_timeout": timeout_seconds,
            "server_settings": {"application_name": "quota-service-ledger"},
        },
        pool_pre_ping=True,
        pool_timeout=timeout_seconds,
    )


def ledger_from_url(
    url: str, *, clock: Clock | None = None, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
) -> Ledger | None:
    """The ledger a URL names, or ``None`` for ``none`` (the ledger turned off).

    ``sqlite:///PATH`` (relative) or ``sqlite:////abs/PATH``; the file's directory is
    created. ``postgresql://user[:password]@host[:port]/db`` (``postgres://`` too). Nothing
    connects yet: the first call (normally :meth:`Ledger.migrate`) does. ``timeout_seconds``
    bounds connecting, each statement, waiting for a pooled connection and (SQLite) waiting
    for another writer's lock: past it a call raises :class:`LedgerUnavailable`.
    :class:`LedgerConfigError` for any other URL (the password never appears in the message)."""
    text = url.strip()
    if text.lower() == "none":
        return None
    if text.startswith("postgres://"):
        text = "postgresql://" + text[len("postgres://") :]
    try:
        parsed = make_url(text)
    except sa_exc.ArgumentError as exc:
        raise LedgerConfigError(f"ledger URL {_redacted(text)!r} is not a URL: {exc}") from exc
    # The driver part of the URL is ours to choose: always the asyncio one.
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        engine = _sqlite_engine(parsed, timeout_seconds)
    elif backend == "postgresql":
        engine = _postgres_engine(parsed, timeout_seconds)
    else:
        raise LedgerConfigError(
            f"ledger URL {_redacted(text)!r} is not supported: use sqlite:///PATH, postgresql://... or none"
        )
    return Ledger(engine=engine, clock=clock)


@dataclass(frozen=True, slots=True)
class TailPage:
    """A step of the resumable tail: the events after a position, in insertion order, and
    the position to continue from (``position``: pass it back as ``after_position``; it may
    lie past the last event returned when the rows in between did not match the filter)."""

    events: list[Event]
    position: int


def _amounts_back(text: str) -> dict[str, int]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise LedgerError(f"damaged amounts in the ledger: {text[:64]!r}")
    return {str(k): int(v) for k, v in value.items()}


class EventRow(NamedTuple):
    """An event as the ``events`` table holds it (amounts, limit and detail as JSON text),
    without the two columns the ledger assigns when it stores it (``seq``,
    ``recorded_at_ms``). :func:`row_of` makes one of an :class:`Event`; the usage relay makes
    them straight from outbox entries (:func:`quota_service.ledger.outbox.entry_record`), and
    :func:`event_of` reads one back."""

    id: str
    kind: int
    at_ms: int
    subject: str
    tier: str
    feature: str
    provider: str
    model: str
    request_id: str
    reservation_id: str
    estimate: str
    actual: str
    cost_micros: int
    decision: int
    reason: str
    limit_status: str | None
    threshold: int
    policy_version: str
    actor: str
    detail: str


#: The columns of an insert, in the table's order: ``id``, ``seq``, the rest of an
#: :class:`EventRow`, ``recorded_at_ms``.
_INSERT_COLUMNS = ("id", "seq", *EventRow._fields[1:], "recorded_at_ms")


def amounts_json(amounts: dict[str, int]) -> str:
    """The JSON text of an amounts dict, as the ``estimate`` / ``actual`` columns hold it."""
    return json.dumps(amounts, sort_keys=True, separators=(",", ":"))


def row_of(event: Event) -> EventRow:
    """The row that stores ``event``."""
    limit = event.limit
    return EventRow(
        id=event.id,
        kind=int(event.kind),
        at_ms=event.at_ms,
        subject=event.subject,
        tier=event.tier,
        feature=event.feature,
        provider=event.provider,
        model=event.model,
        request_id=event.request_id,
        reservation_id=event.reservation_id,
        estimate=amounts_json(event.estimate),
        actual=amounts_json(event.actual),
        cost_micros=event.cost_micros,
        decision=0 if event.decision is None else int(event.decision),
        reason="" if event.reason is None else event.reason.value,
        limit_status=None if limit is None else json.dumps(limit.to_json_obj(), separators=(",", ":")),
        threshold=0 if event.threshold is None else int(event.threshold),
        policy_version=event.policy_version,
        actor=event.actor,
        detail=event.detail,
    )


def event_of(row: sa.Row[Any] | EventRow) -> Event:
    """The event a row stores (validated as every :class:`Event`); :class:`LedgerError` when
    it cannot be one."""
    try:
        return Event(
            id=row.id,
            kind=EventKind(row.kind),
            at_ms=row.at_ms,
            subject=row.subject,
            tier=row.tier,
            feature=row.feature,
            provider=row.provider,
            model=row.model,
            request_id=row.request_id,
            reservation_id=row.reservation_id,
            estimate=_amounts_back(row.estimate),
            actual=_amounts_back(row.actual),
            cost_micros=row.cost_micros,
            decision=Decision(row.decision) if row.decision else None,
            reason=Reason(row.reason) if row.reason else None,
            limit=LimitSnapshot.from_json_obj(json.loads(row.limit_status)) if row.limit_status else None,
            threshold=Threshold(row.threshold) if row.threshold else None,
            policy_version=row.policy_version,
            actor=row.actor,
            detail=row.detail,
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise LedgerError(f"damaged event {row.id!r} in the ledger: {exc}") from exc


def _page_token(at_ms: int, event_id: str) -> str:
    raw = json.dumps([at_ms, event_id], separators=(",", ":")).encode()
    return _TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parse_page_token(token: str) -> tuple[int, str]:
    bad = InvalidRequest("page_token is not a token this service issued")
    if not token.startswith(_TOKEN_PREFIX) or len(token) > 2048:
        raise bad
    body = token[len(_TOKEN_PREFIX) :]
    try:
        value = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise bad from exc
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not isinstance(value[0], int)
        or isinstance(value[0], bool)
        or not isinstance(value[1], str)
    ):
        raise bad
    return value[0], value[1]


def _filters(subject: str, kinds: Iterable[EventKind]) -> list[sa.ColumnElement[bool]]:
    where: list[sa.ColumnElement[bool]] = []
    if subject:
        where.append(events.c.subject == subject)
    try:
        kind_numbers = sorted({int(EventKind(k)) for k in kinds})
    except ValueError as exc:  # EVENT_KIND_UNSPECIFIED (0) or a number this version does not know
        raise InvalidRequest(f"kinds: {exc}") from exc
    if kind_numbers:
        where.append(events.c.kind.in_(kind_numbers))
    return where


class Ledger:
    """The ledger store over one async engine; see the module docstring for the contract."""

    def __init__(self, *, engine: AsyncEngine, clock: Clock | None = None) -> None:
        self._engine = engine
        self._clock: Clock = clock or SystemClock()
        self._postgres = engine.dialect.name == "postgresql"
        self._write_lock = asyncio.Lock()
        self._insert: str | None = None

    def describe(self) -> str:
        """The store for logs: the URL without its password."""
        return self._engine.url.render_as_string(hide_password=True)

    @property
    def engine(self) -> AsyncEngine:
        """The engine, for the other tables of the ledger database (webhook deliveries)."""
        return self._engine

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._engine.dialect.name

    @property
    def clock(self) -> Clock:
        return self._clock

    def dialect_insert(self, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
        """The dialect's INSERT (the one with ``on_conflict_do_nothing``)."""
        return postgresql.insert(table) if self._postgres else sqlite.insert(table)

    @contextlib.asynccontextmanager
    async def transaction(self, *, write: bool) -> AsyncIterator[AsyncConnection]:
        """One transaction; ``write``: takes SQLite's write lock at BEGIN (``BEGIN IMMEDIATE``)."""
        async with self._engine.connect() as conn:
            if write:
                await conn.execution_options(quota_ledger_write=True)
            async with conn.begin():
                yield conn

    @contextlib.asynccontextmanager
    async def write_transaction(self, *, lock_key: int) -> AsyncIterator[AsyncConnection]:
        """A write transaction that no other writer of ``lock_key`` runs beside: in this
        process (the write lock), on SQLite (``BEGIN IMMEDIATE``), on PostgreSQL (a
        transaction-scoped advisory lock on ``lock_key``)."""
        async with self._write_lock, self.transaction(write=True) as conn:
            if self._postgres:
                await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(lock_key)))
            yield conn

    def clock_ms(self) -> int:
        """The ledger clock's now, unix milliseconds."""
        return to_ms(self._clock.now())

    async def migrate(self) -> None:
        """Bring the schema to the newest migration (alembic ``upgrade head``), in one transaction."""
        from alembic import command
        from alembic.config import Config

        def upgrade(connection: sa.Connection) -> None:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS_DIR))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

        with translate_errors("migrate"):
            async with self.transaction(write=True) as conn:
                if self._postgres:
                    await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATE_LOCK_KEY)))
                await conn.run_sync(upgrade)

    async def insert(self, batch: Iterable[Event]) -> int:
        """Store ``batch`` in one transaction, skipping every event whose id is already stored
        (and repeats within the batch); how many rows are new. Raises
        :class:`LedgerUnavailable` (nothing stored) when the store is down: retry the same batch."""
        return len(await self.insert_new(batch))

    async def insert_new(self, batch: Iterable[Event]) -> list[str]:
        """:meth:`insert`, answering the ids of the rows that are new (the ones this call stored)."""
        return await self.insert_rows(row_of(e) for e in batch)

    async def insert_rows(self, batch: Iterable[EventRow]) -> list[str]:
        """:meth:`insert_new` of events already in their row form (the usage relay's fast
        path: no :class:`Event` is made). One ``executemany`` of the driver's own prepared
        INSERT (SQLAlchemy's per-row parameter processing and ``RETURNING`` cost four times
        SQLite's own work). When the driver counts fewer rows than it was given (some ids
        were stored before), the new ones are read back by their ``seq``, which this call
        assigned under the write lock."""
        unique: dict[str, EventRow] = {}
        for item in batch:
            unique.setdefault(item.id, item)
        if not unique:
            return []
        with translate_errors("insert"):
            # The seq lock is held until commit: seq order is commit order (readers see a prefix).
            async with self.write_transaction(lock_key=_SEQ_LOCK_KEY) as conn:
                top = (await conn.execute(sa.select(sa.func.coalesce(sa.func.max(events.c.seq), 0)))).scalar_one()
                now_ms = self.clock_ms()
                rows = [(row[0], top + i, *row[1:], now_ms) for i, row in enumerate(unique.values(), start=1)]
                stored = await conn.exec_driver_sql(self._insert_sql(conn), rows)
                if stored.rowcount == len(rows):  # all new (the driver counts what it inserted)
                    inserted = list(unique)
                else:  # some were stored before, or a driver that does not count: ask
                    new = await conn.execute(sa.select(events.c.id).where(events.c.seq > top).order_by(events.c.seq))
                    inserted = [str(r[0]) for r in new.all()]
        metrics.LEDGER_INSERTED.inc(len(inserted))
        return inserted

    def _insert_sql(self, conn: AsyncConnection) -> str:
        """The dialect's ``INSERT ... ON CONFLICT (id) DO NOTHING`` as driver SQL with
        positional parameters in :data:`_INSERT_COLUMNS` order (compiled once)."""
        if self._insert is None:
            statement = self.dialect_insert(events).on_conflict_do_nothing(index_elements=[events.c.id])
            compiled = statement.compile(dialect=conn.dialect, column_keys=list(_INSERT_COLUMNS))
            if tuple(compiled.positiontup or ()) != _INSERT_COLUMNS:
                raise LedgerError(f"the insert's parameters are not in the table's order: {compiled.positiontup}")
            self._insert = str(compiled)
        return self._insert

    async def list_events(
        self,
        *,
        subject: str = "",
        kinds: Iterable[EventKind] = (),
        since_ms: int = 0,
        until_ms: int = 0,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[Event], str]:
        """One page of events, oldest first by ``(at_ms, id)``, and the next page's token
        (``""``: this was the last page).

        ``subject`` ``""``: every subject; ``kinds`` empty: every kind; ``since_ms`` inclusive
        and ``until_ms`` exclusive (0: unbounded); ``page_size`` 0: :data:`DEFAULT_PAGE_SIZE`,
        above :data:`MAX_PAGE_SIZE`: that. Pass the same filters with the token.
        :class:`InvalidRequest` for a negative bound or size or a token not issued here."""
        if since_ms < 0 or until_ms < 0:
            raise InvalidRequest("since_ms and until_ms must be unix milliseconds (>= 0)")
        if page_size < 0:
            raise InvalidRequest("page_size must not be negative")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        where = _filters(subject, kinds)
        if since_ms:
            where.append(events.c.at_ms >= since_ms)
        if until_ms:
            where.append(events.c.at_ms < until_ms)
        if page_token:
            at_ms, event_id = _parse_page_token(page_token)
            where.append(sa.tuple_(events.c.at_ms, events.c.id) > sa.tuple_(sa.literal(at_ms), sa.literal(event_id)))
        query = sa.select(events).where(*where).order_by(events.c.at_ms, events.c.id).limit(size + 1)
        with translate_errors("list_events"):
            async with self.transaction(write=False) as conn:
                rows = (await conn.execute(query)).all()
        page = [event_of(r) for r in rows[:size]]
        next_token = _page_token(page[-1].at_ms, page[-1].id) if len(rows) > size else ""
        return page, next_token

    async def position_of(self, event_id: str) -> int:
        """The tail position (insertion sequence) of an event; :class:`EventNotFound` if absent."""
        with translate_errors("position_of"):
            async with self.transaction(write=False) as conn:
                return await self._position_of(conn, event_id)

    async def _position_of(self, conn: AsyncConnection, event_id: str) -> int:
        seq = (await conn.execute(sa.select(events.c.seq).where(events.c.id == event_id))).scalar_one_or_none()
        if seq is None:
            raise EventNotFound(f"event {event_id[:80]!r} is not in the ledger (never stored, or past retention)")
        return int(seq)

    async def head_position(self) -> int:
        """The position of the newest event (0 for an empty ledger): tail "from now" starts here."""
        with translate_errors("head_position"):
            async with self.transaction(write=False) as conn:
                return int((await conn.execute(sa.select(sa.func.coalesce(sa.func.max(events.c.seq), 0)))).scalar_one())

    async def events_after(
        self,
        after_id: str = "",
        *,
        after_position: int | None = None,
        subject: str = "",
        kinds: Iterable[EventKind] = (),
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> TailPage:
        """The resumable tail: up to ``limit`` events stored after ``after_id`` (``""``: from
        the oldest kept) or after ``after_position`` (a :attr:`TailPage.position`), matching
        ``subject``/``kinds``, in insertion order.

        Insertion order is commit order, so feeding each page's last event id (or its
        ``position``) back in yields every later event exactly once: no gap, no duplicate,
        also for records that arrived late with an old ``at_ms``. An empty page means
        "nothing new yet"; poll again with the returned position.
        :class:`EventNotFound` when ``after_id`` is not (or no longer) in the ledger."""
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise InvalidRequest(f"limit must be 1-{MAX_PAGE_SIZE}")
        with translate_errors("events_after"):
            async with self.transaction(write=False) as conn:
                if after_position is None:
                    after_position = await self._position_of(conn, after_id) if after_id else 0
                # Read before the rows: every row up to this head is visible to the query below.
                head = (await conn.execute(sa.select(sa.func.coalesce(sa.func.max(events.c.seq), 0)))).scalar_one()
                query = (
                    sa.select(events)
                    .where(events.c.seq > after_position, *_filters(subject, kinds))
                    .order_by(events.c.seq)
                    .limit(limit)
                )
                rows = (await conn.execute(query)).all()
        found = [event_of(r) for r in rows]
        if len(rows) == limit:
            position = int(rows[-1].seq)
        else:
            position = max(int(head), after_position, int(rows[-1].seq) if rows else 0)
        return TailPage(events=found, position=position)

    async def get_events(self, ids: Sequence[str]) -> dict[str, Event]:
        """The stored events among ``ids``, by id (absent ids are left out)."""
        if not ids:
            return {}
        with translate_errors("get_events"):
            async with self.transaction(write=False) as conn:
                rows = (await conn.execute(sa.select(events).where(events.c.id.in_(list(ids))))).all()
        return {r.id: event_of(r) for r in rows}

    async def count(self) -> int:
        """How many events are stored."""
        with translate_errors("count"):
            async with self.transaction(write=False) as conn:
                return int((await conn.execute(sa.select(sa.func.count()).select_from(events))).scalar_one())

    async def delete_older_than(self, at_ms: int) -> int:
        """Retention: remove events that happened before ``at_ms`` (unix ms), in chunks of
        one transaction each; how many were removed. Keeps the newest event (``seq`` is never
        reused) and every event a pending webhook delivery needs; removes finished
        (delivered or dead) deliveries last updated before ``at_ms``."""
        removed = 0
        pending = sa.select(webhook_deliveries.c.event_id).where(webhook_deliveries.c.state == DELIVERY_PENDING)
        newest = sa.select(sa.func.max(events.c.seq)).scalar_subquery()
        with translate_errors("delete_older_than"):
            while True:
                async with self.transaction(write=True) as conn:
                    chunk = (
                        sa.select(events.c.seq)
                        .where(events.c.at_ms < at_ms, events.c.seq < newest, events.c.id.not_in(pending))
                        .order_by(events.c.seq)
                        .limit(_DELETE_CHUNK)
                    )
                    result = await conn.execute(sa.delete(events).where(events.c.seq.in_(chunk)))
                    removed += result.rowcount
                if result.rowcount < _DELETE_CHUNK:
                    break
            async with self.transaction(write=True) as conn:
                await conn.execute(
                    sa.delete(webhook_deliveries).where(
                        webhook_deliveries.c.state != DELIVERY_PENDING, webhook_deliveries.c.updated_at_ms < at_ms
                    )
                )
        return removed

    async def relay_cursor(self, source: str) -> str:
        """How far the relay of ``source`` has stored its entries (``""``: not started)."""
        with translate_errors("relay_cursor"):
            async with self.transaction(write=False) as conn:
                position = (
                    await conn.execute(sa.select(relay_cursors.c.position).where(relay_cursors.c.source == source))
                ).scalar_one_or_none()
        return "" if position is None else str(position)

    async def advance_relay_cursor(self, source: str, position: str, *, newer: Callable[[str, str], bool]) -> None:
        """Move the cursor of ``source`` to ``position`` if ``newer(position, stored)`` (or none
        is stored): a cursor never moves back, whichever replica's relay writes last."""
        now_ms = to_ms(self._clock.now())
        with translate_errors("advance_relay_cursor"):
            async with self.transaction(write=True) as conn:
                stored = (
                    await conn.execute(sa.select(relay_cursors.c.position).where(relay_cursors.c.source == source))
                ).scalar_one_or_none()
                if stored is None:
                    await conn.execute(
                        self.dialect_insert(relay_cursors)
                        .values(source=source, position=position, updated_at_ms=now_ms)
                        .on_conflict_do_nothing(index_elements=[relay_cursors.c.source])
                    )
                elif newer(position, str(stored)):
                    await conn.execute(
                        sa.update(relay_cursors)
                        .where(relay_cursors.c.source == source, relay_cursors.c.position == stored)
                        .values(position=position, updated_at_ms=now_ms)
                    )

    async def ping(self) -> None:
        """Round-trip to the store; :class:`LedgerUnavailable` when it does not answer (``/readyz``)."""
        with translate_errors("ping"):
            async with self._engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))

    async def close(self) -> None:
        """Close every pooled connection. The ledger is unusable afterwards."""
        await self._engine.dispose()
