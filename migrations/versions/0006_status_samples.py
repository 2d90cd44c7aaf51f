"""Samples of the form polling lag and each sink's outbox backlog, for the status page.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

The status page charts these over 24 hours and 7 days. Job runs are already recorded;
gauges are not, so the daemon samples them each minute into this small table and deletes
samples older than `status_page.retention_days`.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "status_samples",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("metric", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
    )
    op.create_index("ix_status_samples_taken", "status_samples", ["taken_at"])


def downgrade() -> None:
    op.drop_index("ix_status_samples_taken", table_name="status_samples")
    op.drop_table("status_samples")
