"""The ledger's tables, defined once for SQLite and PostgreSQL (SQLAlchemy Core).

The schema in a database is created and changed only by the alembic migrations in
``migrations/versions`` (applied by :meth:`quota_service.ledger.store.Ledger.migrate`);
these definitions are what the code reads and writes, and a test proves that the migrated
schema equals them (alembic's ``compare_metadata``).

``events``: one row per event ``id`` (the primary key: inserts are idempotent on it).

==================  ==========================================================================
column              holds
==================  ==========================================================================
id                  the event id (``quota_service.ledger.events``: derived or minted by the writer)
seq                 insertion order, unique, strictly increasing in commit order (assigned by
                    the ledger under a write lock): the order of the resumable tail
kind                ``EventKind`` number
at_ms               when it happened, unix ms (may be older than rows inserted before it)
subject ... model   text, ``''`` when the kind has none
estimate, actual    JSON text ``{"metric": units}`` (whole units, micro-dollars for cost_usd)
cost_micros         what the record charged, micro-dollars (negative only for CORRECTED)
decision            ``Decision`` number, 0 for none
reason              ``Reason`` name, ``''`` for none
limit_status        JSON text of the limit snapshot, NULL for none
threshold           ``Threshold`` number, 0 for none
policy_version,     text
actor, detail       (detail is JSON text or '')
recorded_at_ms      when the ledger stored it, unix ms (drain latency = recorded_at_ms - at_ms)
==================  ==========================================================================

Indexes serve the reads: ``(subject, at_ms, id)`` and ``(at_ms, id)`` and
``(kind, at_ms, id)`` for ``ListEvents`` (keyset pages on ``(at_ms, id)``), the unique
``seq`` for the tail and for retention.

``webhook_deliveries``: one row per (endpoint, event) to deliver; ``state`` is
``pending`` (``next_attempt_at_ms``: when it is due, or until when a deliverer holds it),
``delivered`` or ``dead`` (given up after the whole schedule). ``attempts`` counts the
attempts made; ``last_status`` is the last HTTP status (0: no answer), ``last_error`` what
went wrong. ``webhook_cursors``: per endpoint, the tail position (``events.seq``) up to which
events have been matched into deliveries.

``relay_cursors``: per source moved into the ledger by a relay (``audit``: the Redis audit
stream), the position (the source's own id text, e.g. a stream entry id) up to which its
entries are stored as events. It only moves forward; a relay that dies between storing
events and moving it stores the same ids again, which the primary key ignores.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "DELIVERY_DEAD",
    "DELIVERY_DELIVERED",
    "DELIVERY_PENDING",
    "VERSION_TABLE",
    "events",
    "metadata",
    "relay_cursors",
    "rollup_closed_days",
    "rollup_day_values",
    "rollup_month_values",
    "rollup_spend",
    "webhook_cursors",
    "webhook_deliveries",
]

#: The alembic version table, named for this service so a shared PostgreSQL database can
#: hold other applications' migrations beside it.
VERSION_TABLE = "quota_ledger_version"

metadata = sa.MetaData()

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.String(512), primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.SmallInteger, nullable=False),
    sa.Column("at_ms", sa.BigInteger, nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("tier", sa.Text, nullable=False),
    sa.Column("feature", sa.Text, nullable=False),
    sa.Column("provider", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("request_id", sa.Text, nullable=False),
    sa.Column("reservation_id", sa.Text, nullable=False),
    sa.Column("estimate", sa.Text, nullable=False),
    sa.Column("actual", sa.Text, nullable=False),
    sa.Column("cost_micros", sa.BigInteger, nullable=False),
    sa.Column("decision", sa.SmallInteger, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("limit_status", sa.Text, nullable=True),
    sa.Column("threshold", sa.SmallInteger, nullable=False),
    sa.Column("policy_version", sa.Text, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("recorded_at_ms", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("seq", name="uq_events_seq"),
    sa.Index("ix_events_subject_at", "subject", "at_ms", "id"),
    sa.Index("ix_events_at", "at_ms", "id"),
    sa.Index("ix_events_kind_at", "kind", "at_ms", "id"),
)

DELIVERY_PENDING = "pending"
DELIVERY_DELIVERED = "delivered"
DELIVERY_DEAD = "dead"

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("endpoint_id", sa.String(64), primary_key=True),
    sa.Column("event_id", sa.String(512), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at_ms", sa.BigInteger, nullable=False),
    sa.Column("last_status", sa.Integer, nullable=False),
    sa.Column("last_error", sa.Text, nullable=False),
    sa.Column("created_at_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
    sa.Index("ix_webhook_deliveries_due", "state", "next_attempt_at_ms"),
    sa.Index("ix_webhook_deliveries_event", "event_id"),
)

webhook_cursors = sa.Table(
    "webhook_cursors",
    metadata,
    sa.Column("endpoint_id", sa.String(64), primary_key=True),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
)

#: The analytics rollups (:mod:`quota_service.ledger.rollup`), kept from the events by one
#: writer at a time past the ``relay_cursors`` row ``rollup`` (an events ``seq``).
#: ``rollup_spend``: per quarter hour (``at_ms // 900000``) and (tier, feature, provider,
#: model): the charging records' spend, tokens, images and count.
rollup_spend = sa.Table(
    "rollup_spend",
    metadata,
    sa.Column("quarter", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("tier", sa.Text, primary_key=True),
    sa.Column("feature", sa.Text, primary_key=True),
    sa.Column("provider", sa.Text, primary_key=True),
    sa.Column("model", sa.Text, primary_key=True),
    sa.Column("cost_micros", sa.BigInteger, nullable=False),
    sa.Column("tokens", sa.BigInteger, nullable=False),
    sa.Column("images", sa.BigInteger, nullable=False),
    sa.Column("records", sa.BigInteger, nullable=False),
)
#: ``rollup_closed_days``: the closed days (date ordinals in the policy's timezone) reduced
#: to their distribution in ``rollup_day_values``; ``dirty`` when records of the day arrived
#: after it was reduced (it is reduced again).
rollup_closed_days = sa.Table(
    "rollup_closed_days",
    metadata,
    sa.Column("day", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("dirty", sa.Boolean, nullable=False),
    sa.Column("reduced_at_ms", sa.BigInteger, nullable=False),
)
#: ``rollup_day_values``: per metric, closed day and tier, how many subjects' day totals
#: equal each value (to three significant digits: the distribution the percentiles are read from).
rollup_day_values = sa.Table(
    "rollup_day_values",
    metadata,
    sa.Column("metric", sa.Text, primary_key=True),
    sa.Column("day", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("tier", sa.Text, primary_key=True),
    sa.Column("value", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("subjects", sa.BigInteger, nullable=False),
)

#: ``rollup_month_values``: ``rollup_day_values`` merged per calendar month
#: (``year * 12 + month - 1``) over the month's reduced days.
rollup_month_values = sa.Table(
    "rollup_month_values",
    metadata,
    sa.Column("metric", sa.Text, primary_key=True),
    sa.Column("month", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("tier", sa.Text, primary_key=True),
    sa.Column("value", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("subjects", sa.BigInteger, nullable=False),
)

relay_cursors = sa.Table(
    "relay_cursors",
    metadata,
    sa.Column("source", sa.String(64), primary_key=True),
    sa.Column("position", sa.Text, nullable=False),
    sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
)
