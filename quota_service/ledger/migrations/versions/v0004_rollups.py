"""rollups: the analytics' aggregates (spend per quarter hour, kept as records arrive; the
distribution of subjects' day totals per closed day).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rollup_spend",
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
    op.create_table(
        "rollup_closed_days",
        sa.Column("day", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("dirty", sa.Boolean, nullable=False),
        sa.Column("reduced_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "rollup_day_values",
        sa.Column("metric", sa.Text, primary_key=True),
        sa.Column("day", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("tier", sa.Text, primary_key=True),
        sa.Column("value", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("subjects", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "rollup_month_values",
        sa.Column("metric", sa.Text, primary_key=True),
        sa.Column("month", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("tier", sa.Text, primary_key=True),
        sa.Column("value", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("subjects", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rollup_month_values")
    op.drop_table("rollup_day_values")
    op.drop_table("rollup_closed_days")
    op.drop_table("rollup_spend")
