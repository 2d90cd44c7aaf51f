"""Fan-out: every new event a sink subscribes to becomes a pending delivery to it.

Every sink has a cursor (`sink_cursors.last_seq`). In one transaction per chunk, events past
the cursor that the sink subscribes to get a `pending` delivery row and the cursor moves
past them. A new sink starts at the current end (`start = "now"`) or at the first event
(`"beginning"`); history is sent on request with `replay` (`syncd.outbox.actions`).

On PostgreSQL a sequence value is taken when a row is inserted, not when it commits, so a
slower transaction can commit seq 10 after seq 11 is visible. The cursor therefore stops
at a gap until the event after the gap is `gap_grace` old; a gap that old is a rolled-back
transaction (logged as `outbox.fanout_gap_skipped`). On SQLite there is one writer at a
time and no gaps, but SQLite reuses the highest rowid after it is deleted, so `prune`
never deletes the newest event.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Final

import structlog
from sqlalchemy import Engine, func, literal, select
from sqlalchemy.orm import Session

from syncd.outbox.routing import Route
from syncd.outbox.tables import CHUNK, insert_ignoring_duplicates, new_delivery, translated, utcnow
from syncd.state.models import OutboxDelivery, OutboxEvent, SinkCursor

log = structlog.get_logger(__name__)

DEFAULT_GAP_GRACE: Final = timedelta(seconds=120)


def advance_cursor(
    last_seq: int, events: Sequence[tuple[int, datetime]], settled_before: datetime
) -> int:
    """How far a cursor at `last_seq` may move over `events` (`(seq, created_at)` by seq).

    Pure. It moves over consecutive seqs; at a gap it stops unless the event after the gap
    was created before `settled_before` (the missing seq then belongs to a transaction that
    rolled back, not to one still running).
    """
    for seq, created_at in events:
        if seq != last_seq + 1 and created_at > settled_before:
            break
        last_seq = seq
    return last_seq


def _cursor_for_update(session: Session, route: Route, now: datetime) -> SinkCursor:
    """The sink's cursor, created at its start position if new, locked until commit."""
    start = (
        select(func.coalesce(func.max(OutboxEvent.seq), 0)).scalar_subquery()
        if route.start == "now"
        else literal(0)
    )
    session.execute(
        insert_ignoring_duplicates(session, SinkCursor).values(
            sink=route.sink, last_seq=start, disabled_reason=None, updated_at=now
        )
    )
    # FOR UPDATE serialises two fan-outs of one sink on PostgreSQL (the second then sees
    # the moved cursor); SQLite's BEGIN IMMEDIATE already did.
    return session.execute(
        select(SinkCursor).where(SinkCursor.sink == route.sink).with_for_update()
    ).scalar_one()


def fan_out(
    engine: Engine,
    route: Route,
    *,
    now: datetime | None = None,
    gap_grace: timedelta = DEFAULT_GAP_GRACE,
    chunk_size: int = CHUNK,
) -> int:
    """Queue a pending delivery to `route.sink` for each new event it subscribes to.

    One transaction per chunk of events moves the cursor together with the rows it queued.
    Returns how many deliveries were queued.
    """
    queued = 0
    while True:
        moment = now or utcnow()
        with translated("fan-out"), Session(engine) as session, session.begin():
            cursor = _cursor_for_update(session, route, moment)
            rows = session.execute(
                select(OutboxEvent.seq, OutboxEvent.event_type, OutboxEvent.created_at)
                .where(OutboxEvent.seq > cursor.last_seq)
                .order_by(OutboxEvent.seq)
                .limit(chunk_size)
            ).all()
            start = cursor.last_seq
            end = advance_cursor(start, [(r.seq, r.created_at) for r in rows], moment - gap_grace)
            taken = [r for r in rows if r.seq <= end]
            wanted = [r.seq for r in taken if route.subscribes(r.event_type)]
            if wanted:
                session.execute(
                    insert_ignoring_duplicates(session, OutboxDelivery),
                    [new_delivery(seq, route.sink, moment) for seq in wanted],
                )
            if end != start:
                cursor.last_seq = end
                cursor.updated_at = moment
            _log_skipped_gaps(route.sink, start, [row.seq for row in taken])
        queued += len(wanted)
        if len(rows) < chunk_size or len(taken) < len(rows):
            return queued


def _log_skipped_gaps(sink: str, start: int, seqs: Sequence[int]) -> None:
    previous = start
    for seq in seqs:
        if seq != previous + 1:
            log.warning("outbox.fanout_gap_skipped", sink=sink, after=previous, before=seq)
        previous = seq
