"""Outbox fan-out by visibility, not by time; an index for the backlog.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04

- `outbox_events.xid`: the writing transaction's id. On PostgreSQL its default is
  `pg_current_xact_id()` (as bigint); fan-out passes an event only once every transaction
  with a smaller id has ended, so an event whose transaction commits late is fanned out
  late instead of skipped. On SQLite it is always 0 (one writer at a time: events commit
  in seq order). Existing events get 0: they were all committed before this migration
  (ALTER TABLE waits for every open transaction that wrote to the table).
- `sink_cursors.last_xid`: a cursor is now the (xid, seq) of the last event fanned out;
  existing cursors get 0, so events with a higher seq are still ahead of them.
- `ix_outbox_events_xid_seq`: fan-out reads events in (xid, seq) order.
- `ix_outbox_deliveries_state`: the backlog reads the pending and dead rows only.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# xid8 has no cast to bigint; its text form is the same 64-bit number.
PG_CURRENT_XID = "(pg_current_xact_id())::text::bigint"


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.add_column(
        "outbox_events",
        sa.Column("xid", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    )
    if postgres:
        op.alter_column(
            "outbox_events", "xid", server_default=sa.text(PG_CURRENT_XID), existing_nullable=False
        )
    op.create_index("ix_outbox_events_xid_seq", "outbox_events", ["xid", "seq"])
    # The cursors' column needs a default only to fill the existing rows.
    with op.batch_alter_table("sink_cursors") as batch:
        batch.add_column(
            sa.Column("last_xid", sa.BigInteger(), nullable=False, server_default=sa.text("0"))
        )
    with op.batch_alter_table("sink_cursors") as batch:
        batch.alter_column("last_xid", server_default=None, existing_nullable=False)
    op.create_index(
        "ix_outbox_deliveries_state", "outbox_deliveries", ["state", "sink", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_deliveries_state", table_name="outbox_deliveries")
    with op.batch_alter_table("sink_cursors") as batch:
        batch.drop_column("last_xid")
    op.drop_index("ix_outbox_events_xid_seq", table_name="outbox_events")
    with op.batch_alter_table("outbox_events") as batch:
        batch.drop_column("xid")
