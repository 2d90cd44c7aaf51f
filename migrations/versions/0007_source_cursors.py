"""Source cursors: where an incremental patient source (a FHIR search) stands.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04

A FHIR `Patient` source reads only what changed since its last read (`_lastUpdated`); its
position on the server's clock is saved after the rows it covers were pushed.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "source_cursors",
        sa.Column("source", sa.String(length=128), primary_key=True),
        sa.Column("endpoint", sa.String(length=512), nullable=False),
        sa.Column("position", sa.DateTime(timezone=True), nullable=False),
        sa.Column("full_read_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("source_cursors")
