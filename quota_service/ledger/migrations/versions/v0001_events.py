"""events: the ledger's one feed of usage records and notable moments.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "events",
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
    )
    op.create_index("ix_events_subject_at", "events", ["subject", "at_ms", "id"])
    op.create_index("ix_events_at", "events", ["at_ms", "id"])
    op.create_index("ix_events_kind_at", "events", ["kind", "at_ms", "id"])


def downgrade() -> None:
    op.drop_table("events")
