"""The `hl7_inbound` table: each received message, committed before its ACK.

Receive side (`record`): one INSERT per message in its own transaction, with
`ON CONFLICT DO NOTHING` on `(sender, control_id)`, so a message sent again after a lost
ACK is recognised (`duplicate`) and never stored twice. Apply side (`pending`, `finish`):
pending rows in arrival order, and their new status written in the apply job's batch
transaction (the same one as the mirror). Operator side (`list_messages`, `show_message`):
what `syncd hl7 list|show` print.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal
from typing import cast as typing_cast

from sqlalchemy import Connection, Engine, Table, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from syncd.state.models import Hl7Inbound

INBOUND: Final = typing_cast(Table, Hl7Inbound.__table__)
Status = Literal["pending", "applied", "ignored", "rejected", "quarantined"]
STATUSES: Final[tuple[Status, ...]] = ("pending", "applied", "ignored", "rejected", "quarantined")


@dataclass(frozen=True, slots=True)
class Received:
    """A message to record: where it came from, its header fields, its bytes."""

    source: str
    sender: str
    control_id: str | None
    message_type: str | None
    sent_at: datetime | None
    status: Status  # pending, or rejected (then `reason` says why)
    reason: str | None
    raw: bytes

    def __repr__(self) -> str:
        return f"Received(sender={self.sender!r}, control_id={self.control_id!r})"


@dataclass(frozen=True, slots=True)
class PendingMessage:
    """A pending inbound row for the apply job."""

    id: int
    raw: bytes

    def __repr__(self) -> str:
        return f"PendingMessage(id={self.id})"


@dataclass(frozen=True, slots=True)
class Finished:
    """A message's outcome: its new status and id-only reason."""

    id: int
    status: Status
    reason: str | None = None


def _insert(conn: Connection) -> postgresql.Insert | sqlite.Insert:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(INBOUND)
    return sqlite.insert(INBOUND)


def record(conn: Connection, message: Received, *, now: datetime | None = None) -> bool:
    """Insert `message` in the caller's transaction; False when it was already there."""
    stmt = (
        _insert(conn)
        .on_conflict_do_nothing(index_elements=["sender", "control_id"])
        .returning(INBOUND.c.id)
    )
    result = conn.execute(
        stmt,
        {
            "source": message.source,
            "sender": message.sender,
            "control_id": message.control_id,
            "message_type": message.message_type,
            "sent_at": message.sent_at,
            "received_at": now or datetime.now(UTC),
            "status": message.status,
            "reason": message.reason,
            "raw": message.raw,
        },
    )
    # A row comes back only when one was inserted (rowcount is not reliable here).
    return result.first() is not None


def pending(conn: Connection, limit: int) -> list[PendingMessage]:
    """Up to `limit` pending messages, oldest arrival first."""
    c = INBOUND.c
    rows = conn.execute(
        select(c.id, c.raw).where(c.status == "pending").order_by(c.id).limit(limit)
    ).all()
    return [PendingMessage(int(i), bytes(raw or b"")) for i, raw in rows]


def finish(conn: Connection, outcomes: Sequence[Finished], *, now: datetime) -> None:
    """Write each message's outcome; the raw message is kept only while it may be needed
    (pending, rejected, quarantined)."""
    if not outcomes:
        return
    c = INBOUND.c
    keep = [o for o in outcomes if o.status == "quarantined"]
    drop = [o for o in outcomes if o.status != "quarantined"]
    for group, clear in ((keep, False), (drop, True)):
        if not group:
            continue
        values: dict[str, object] = {
            "status": bindparam("s"),
            "reason": bindparam("r"),
            "applied_at": now,
        }
        if clear:
            values["raw"] = None
        conn.execute(
            update(INBOUND).where(c.id == bindparam("i")).values(**values),
            [{"i": o.id, "s": o.status, "r": o.reason} for o in group],
        )


def counts_by_status(engine: Engine) -> dict[str, int]:
    """How many inbound messages are in each status (for status and the bench)."""
    c = INBOUND.c
    with engine.connect() as conn:
        rows = conn.execute(select(c.status, func.count()).group_by(c.status)).all()
    return {str(s): int(n) for s, n in rows}


@dataclass(frozen=True, slots=True)
class MessageSummary:
    """An inbound message without its content: what `hl7 list` shows."""

    id: int
    status: str
    sender: str
    control_id: str | None
    message_type: str | None
    received_at: datetime
    reason: str | None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """An inbound message's status and bytes, for `hl7 show` only (an operator's explicit
    request). `raw` holds patient data: it is kept out of the repr and must never be logged;
    it is None once the message no longer needs it (see `finish`)."""

    status: str
    reason: str | None
    raw: bytes | None = field(repr=False)


def list_messages(
    engine: Engine, *, status: str | None = None, limit: int = 200
) -> list[MessageSummary]:
    """Up to `limit` inbound messages, newest first, without their content; only those in
    `status` when given."""
    c = INBOUND.c
    query = select(
        c.id, c.status, c.sender, c.control_id, c.message_type, c.received_at, c.reason
    ).order_by(c.id.desc())
    if status is not None:
        query = query.where(c.status == status)
    with engine.connect() as conn:
        rows = conn.execute(query.limit(limit)).all()
    return [MessageSummary(**row._mapping) for row in rows]


def show_message(engine: Engine, message_id: int) -> StoredMessage | None:
    """One inbound message's status, reason and bytes, or None if there is no such id."""
    c = INBOUND.c
    with engine.connect() as conn:
        row = conn.execute(select(c.status, c.reason, c.raw).where(c.id == message_id)).first()
    if row is None:
        return None
    return StoredMessage(row.status, row.reason, None if row.raw is None else bytes(row.raw))
