"""Outbox retention and per-patient order: prunable events, an index on the ordering key.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

- `submission_versions.event_seq` becomes nullable with `ON DELETE SET NULL`: retention
  deletes delivered events, but the version rows must stay, since they are what keeps the
  poller from emitting the same version again.
- `ix_outbox_events_ordering_key`: the delivery claim with `keep_order_per_patient` looks
  for an earlier undelivered event of the same key.

Downgrade deletes the version rows whose event was pruned (the old schema cannot hold them);
the poller may then emit those versions again if it reads them again.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FK_NAME = "fk_submission_versions_event_seq_outbox_events"


def upgrade() -> None:
    op.create_index("ix_outbox_events_ordering_key", "outbox_events", ["ordering_key"])
    # Batch mode: SQLite cannot alter a column or a foreign key in place, so the table is
    # recreated there; PostgreSQL gets plain ALTER TABLE statements.
    with op.batch_alter_table("submission_versions") as batch:
        batch.drop_constraint(FK_NAME, type_="foreignkey")
        batch.alter_column("event_seq", existing_type=sa.BigInteger(), nullable=True)
        batch.create_foreign_key(
            FK_NAME, "outbox_events", ["event_seq"], ["seq"], ondelete="SET NULL"
        )


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM submission_versions WHERE event_seq IS NULL"))
    with op.batch_alter_table("submission_versions") as batch:
        batch.drop_constraint(FK_NAME, type_="foreignkey")
        batch.alter_column("event_seq", existing_type=sa.BigInteger(), nullable=False)
        batch.create_foreign_key(FK_NAME, "outbox_events", ["event_seq"], ["seq"])
    op.drop_index("ix_outbox_events_ordering_key", table_name="outbox_events")
