"""HL7 v2 feeds: the inbound message table, and merged patients in the mirror.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04

`hl7_inbound` holds each received message, committed before its ACK (the MLLP rule that
makes a crash between receipt and ACK lose nothing: the sender sends again and the unique
`(sender, control_id)` absorbs it). `patient_mirror.merged_into` names the surviving
providerId of a patient an A40 merged away (its state becomes `merged`).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "hl7_inbound",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("sender", sa.String(length=128), nullable=False),
        sa.Column("control_id", sa.String(length=199), nullable=True),
        sa.Column("message_type", sa.String(length=16), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=512), nullable=True),
        sa.Column("raw", sa.LargeBinary(), nullable=True),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hl7_inbound")),
        sa.UniqueConstraint("sender", "control_id", name=op.f("uq_hl7_inbound_sender")),
    )
    op.create_index("ix_hl7_inbound_status", "hl7_inbound", ["status", "id"], unique=False)
    with op.batch_alter_table("patient_mirror") as batch:
        batch.add_column(sa.Column("merged_into", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("patient_mirror") as batch:
        batch.drop_column("merged_into")
    op.drop_index("ix_hl7_inbound_status", table_name="hl7_inbound")
    op.drop_table("hl7_inbound")
