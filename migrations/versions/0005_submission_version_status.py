"""The status of each recorded form-submission version; when each sweep last ran.

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-04

A server may store `updatedAt` more finely than it renders it, so two writes of one
submission can share a rendered millisecond. The poller skips the detail read of a listed
version already recorded; with the status recorded too, a listed `(id, updatedAt)` whose
status differs from every recorded one is read, not skipped. Rows written before this
revision keep NULL: for them the rendered `updatedAt` alone decides, as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("submission_versions") as batch:
        batch.add_column(sa.Column("status", sa.String(length=32), nullable=True))
    op.create_table(
        "poller_sweeps",
        sa.Column("stream", sa.String(length=64), primary_key=True),
        sa.Column("sweep", sa.String(length=32), primary_key=True),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("poller_sweeps")
    with op.batch_alter_table("submission_versions") as batch:
        batch.drop_column("status")
