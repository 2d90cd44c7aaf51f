"""Retention: delivered events older than the retention period are deleted.

The delivery job prunes as it runs; with no sink configured, the `housekeeping` job does
(`syncd.housekeeping`).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, exists, func, literal, select, tuple_
from sqlalchemy.orm import Session

from syncd.outbox.tables import CHUNK, CLI_ACTOR, DELIVERED, rowcount, translated, utcnow
from syncd.state.models import OutboxDelivery, OutboxEvent, SinkCursor
from syncd.state.runs import audit


def prune(
    engine: Engine,
    retention_days: float,
    *,
    actor: str = CLI_ACTOR,
    run_id: int | None = None,
    now: datetime | None = None,
    configured: Collection[str] | None = None,
    chunk_size: int = CHUNK,
) -> int:
    """Delete events older than `retention_days` whose deliveries are all delivered; returns
    how many events were deleted.

    Kept: events with a pending or dead delivery (dead ones until an operator resolves
    them), events the fan-out of some `configured` sink (default: every sink with a
    cursor) has not passed yet, and the newest event (SQLite would hand its seq to the
    next event). A sink no longer configured holds nothing back: its cursor will never
    move again, and would otherwise stop retention for good; its undelivered deliveries
    still keep their events until `syncd outbox forget-sink` drops them.

    Each deleted event's deliveries go with it; its `submission_versions` row stays (its
    `event_seq` becomes NULL), so that version is still never emitted again. Deleted in
    chunks, one transaction each.
    """
    moment = now or utcnow()
    cutoff = moment - timedelta(days=retention_days)
    d, e = OutboxDelivery, OutboxEvent
    unfinished = exists(
        select(literal(1)).select_from(d).where(d.event_seq == e.seq, d.state != DELIVERED)
    )
    newest = select(func.max(e.seq)).scalar_subquery()
    c = SinkCursor
    ahead = [tuple_(e.xid, e.seq) > tuple_(c.last_xid, c.last_seq)]
    if configured is not None:
        ahead.append(c.sink.in_(sorted(configured)))
    not_fanned_out = exists(select(literal(1)).where(*ahead))
    candidates = (
        select(e.seq)
        .where(e.created_at < cutoff, e.seq < newest, ~not_fanned_out, ~unfinished)
        .order_by(e.seq)
        .limit(chunk_size)
    )
    deleted = 0
    while True:
        with translated("prune"), Session(engine) as session, session.begin():
            seqs = list(session.scalars(candidates))
            if seqs:
                # Deliveries first (and only delivered ones: a replay that raced in keeps
                # its event), then the events left without any delivery.
                session.execute(delete(d).where(d.event_seq.in_(seqs), d.state == DELIVERED))
                anything = exists(select(literal(1)).select_from(d).where(d.event_seq == e.seq))
                gone = rowcount(session.execute(delete(e).where(e.seq.in_(seqs), ~anything)))
                deleted += gone
                audit(
                    session, actor, run_id, "outbox.pruned", "outbox", "events",
                    f"events={gone} first_seq={seqs[0]} last_seq={seqs[-1]}",
                )  # fmt: skip
        if len(seqs) < chunk_size:
            return deleted
