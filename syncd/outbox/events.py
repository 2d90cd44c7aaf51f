"""The write side of the outbox: every writer records its events through `emit`.

An event is added to the caller's session and committed by the caller together with the
state change it reports (a submission version, an SMS status, a content change), so that
an event exists if and only if its cause was recorded. `emit_many` is the batch form for
writers that record hundreds of events per commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, cast

from sqlalchemy import Connection, Table, insert
from sqlalchemy.orm import Session

from syncd.hashing import canonical_json
from syncd.state.models import OutboxEvent

_EVENTS: Final = cast(Table, OutboxEvent.__table__)
# `sort_by_parameter_order`: seqs are assigned, and come back, in the order of the rows
# given (SQLAlchemy's insertmanyvalues: INSERT ... SELECT ... ORDER BY on PostgreSQL, one
# INSERT ... RETURNING per row on SQLite), so callers can pair each seq with its cause.
_INSERT_RETURNING_SEQ: Final = insert(_EVENTS).returning(
    _EVENTS.c.seq, sort_by_parameter_order=True
)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event for `emit_many`; `payload` is its canonical JSON, already encoded."""

    event_type: str
    payload: bytes
    ordering_key: str | None


def emit(
    session: Session,
    *,
    event_type: str,
    payload: Mapping[str, Any],
    ordering_key: str | None,
) -> OutboxEvent:
    """Add one outbox event to `session` (not committed, not flushed) and return it.

    The event gets a fresh UUID as its public id and the current UTC time; its `seq` is
    assigned when the session flushes.
    """
    event = OutboxEvent(
        event_id=str(uuid.uuid4()),
        event_type=event_type,
        ordering_key=ordering_key,
        payload=_text(canonical_json(dict(payload))),
        created_at=datetime.now(UTC),
    )
    session.add(event)
    return event


def _text(encoded: bytes) -> str:
    # Canonical JSON is ASCII wherever it is not valid UTF-8 (lone surrogates are escaped).
    return encoded.decode("utf-8")


def emit_many(
    bind: Session | Connection, events: Sequence[NewEvent], *, at: datetime | None = None
) -> list[int]:
    """Insert `events` in the caller's transaction (not committed); their seqs, in order.

    The batch form of `emit`: one Core statement instead of one ORM object (and one flush
    step) per event. Each event gets a fresh UUID as its public id; all get the time `at`
    (default: now, UTC). Seqs increase in the order of `events`.
    """
    if not events:
        return []
    moment = at or datetime.now(UTC)
    rows = [
        {
            "event_id": str(uuid.uuid4()),
            "event_type": event.event_type,
            "ordering_key": event.ordering_key,
            "payload": _text(event.payload),
            "created_at": moment,
        }
        for event in events
    ]
    return list(bind.execute(_INSERT_RETURNING_SEQ, rows).scalars())
