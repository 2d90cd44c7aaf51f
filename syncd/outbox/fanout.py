"""Fan-out: every new event a sink subscribes to becomes a pending delivery to it.

Every sink has a cursor: the (xid, seq) of the last event it was fanned out (`xid` is the
id of the transaction that wrote the event). In one transaction per chunk, events past the
cursor in (xid, seq) order that the sink subscribes to get a `pending` delivery row and the
cursor moves past them. A new sink starts at the current end (`start = "now"`) or at the
first event (`"beginning"`); history is sent on request with `replay`
(`syncd.outbox.actions`).

Why (xid, seq) and not seq alone. PostgreSQL takes a sequence value when a row is
inserted, not when it commits, so a transaction holding seq 10 can commit after seq 11 is
visible, minutes later if it is slow. A cursor that passed seq 10 would never come back to
it. Instead, fan-out passes only events whose xid is below a horizon: the smallest xid of
the transactions of this database still running (`pg_stat_activity.backend_xid`, and
`pg_prepared_xacts`), or, when none is, the next xid to be assigned
(`pg_snapshot_xmax(pg_current_snapshot())`, read first). Every transaction of this
database below the horizon has ended, and every transaction that writes later gets a
larger xid, so the set of events below the horizon never grows again, and reading it in
(xid, seq) order misses nothing, whatever the gaps in seq (a rolled-back transaction's
seqs simply never appear). The horizon is read in statements of its own before the
events, so every transaction below it has ended before the events are read and they are
all visible. Only this database's transactions count: another database's cannot write
our events, so a long transaction of another application on the same server does not
hold fan-out back (`pg_snapshot_xmin` would). A long transaction of this database
delays fan-out (logged as `outbox.fanout_held_back` once the events it holds back are
`stall_warning` old); it never loses an event.

SQLite cannot have the gap: it has one writer at a time (a write transaction holds the
database's write lock from its first write to its commit), a rowid is assigned under that
lock, and the next writer's rowids are larger, so events commit in seq order; every xid
is 0 and the cursor is in effect the seq. SQLite reuses the highest rowid after it is
deleted, so `prune` never deletes the newest event.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final, NamedTuple

import structlog
from sqlalchemy import Engine, func, select, text, tuple_
from sqlalchemy.orm import Session

from syncd.outbox.routing import Route
from syncd.outbox.tables import CHUNK, insert_ignoring_duplicates, new_delivery, translated, utcnow
from syncd.state.models import OutboxDelivery, OutboxEvent, SinkCursor

log = structlog.get_logger(__name__)

DEFAULT_STALL_WARNING: Final = timedelta(seconds=120)
_XID_SPACE: Final = 2**32  # pg_stat_activity shows 32-bit xids

# Every xid assigned after this statement is at least this one (xid8 has no cast to bigint;
# its text form is the same 64-bit number, as in the column's default).
_NEXT_XID: Final = text("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
# The transactions of this database still running (or prepared, for two-phase commit).
_OPEN_XIDS: Final = text(
    "SELECT backend_xid::text::bigint FROM pg_stat_activity "
    "WHERE datname = current_database() AND backend_xid IS NOT NULL "
    "UNION ALL SELECT transaction::text::bigint FROM pg_prepared_xacts "
    "WHERE database = current_database()"
)


def visibility_horizon(session: Session) -> int | None:
    """On PostgreSQL, the xid below which every transaction of this database has ended
    (see the module doc); None on SQLite, where every committed event is final."""
    if session.get_bind().dialect.name != "postgresql":
        return None
    next_xid = int(session.execute(_NEXT_XID).scalar_one())
    # pg_stat_activity is read once per transaction and kept: read it afresh, now.
    session.execute(text("SELECT pg_stat_clear_snapshot()"))
    open_xids = [widen_xid(int(xid), next_xid) for xid in session.scalars(_OPEN_XIDS)]
    return min([next_xid, *open_xids])


def widen_xid(xid32: int, near: int) -> int:
    """The 64-bit xid whose low 32 bits are `xid32`, nearest to the 64-bit xid `near`.

    Pure. Running transactions are within 2**31 of the next xid (PostgreSQL refuses to
    assign xids further than that), so the nearest one is the right one.
    """
    distance = (xid32 - near + _XID_SPACE // 2) % _XID_SPACE - _XID_SPACE // 2
    return near + distance


def _cursor_for_update(
    session: Session, route: Route, horizon: int | None, now: datetime
) -> SinkCursor:
    """The sink's cursor, created at its start position if new, locked until commit.

    "now" starts after every event already final: on PostgreSQL (horizon - 1, newest seq),
    so an event of a transaction still open is still ahead; on SQLite (0, newest seq).
    """
    if route.start == "now":
        last_xid = 0 if horizon is None else horizon - 1
        newest = session.execute(select(func.coalesce(func.max(OutboxEvent.seq), 0)))
        last_seq = int(newest.scalar_one())
    else:
        last_xid, last_seq = 0, 0
    session.execute(
        insert_ignoring_duplicates(session, SinkCursor).values(
            sink=route.sink,
            last_xid=last_xid,
            last_seq=last_seq,
            disabled_reason=None,
            updated_at=now,
        )
    )
    # FOR UPDATE serialises two fan-outs of one sink on PostgreSQL (the second then sees
    # the moved cursor); SQLite's BEGIN IMMEDIATE already did.
    return session.execute(
        select(SinkCursor).where(SinkCursor.sink == route.sink).with_for_update()
    ).scalar_one()


class FanOut(NamedTuple):
    """What one fan-out did: deliveries queued, and committed events still waiting behind
    an open transaction (PostgreSQL; always 0 on SQLite)."""

    queued: int
    waiting: int


def fan_out(
    engine: Engine,
    route: Route,
    *,
    now: datetime | None = None,
    stall_warning: timedelta = DEFAULT_STALL_WARNING,
    chunk_size: int = CHUNK,
) -> FanOut:
    """Queue a pending delivery to `route.sink` for each new event it subscribes to.

    One transaction per chunk of events moves the cursor together with the rows it queued.
    """
    e = OutboxEvent
    queued = 0
    while True:
        moment = now or utcnow()
        with translated("fan-out"), Session(engine) as session, session.begin():
            horizon = visibility_horizon(session)
            cursor = _cursor_for_update(session, route, horizon, moment)
            query = select(e.seq, e.xid, e.event_type).where(
                tuple_(e.xid, e.seq) > tuple_(cursor.last_xid, cursor.last_seq)
            )
            if horizon is not None:
                query = query.where(e.xid < horizon)
            rows = session.execute(query.order_by(e.xid, e.seq).limit(chunk_size)).all()
            wanted = [row.seq for row in rows if route.subscribes(row.event_type)]
            if wanted:
                session.execute(
                    insert_ignoring_duplicates(session, OutboxDelivery),
                    [new_delivery(seq, route.sink, moment) for seq in wanted],
                )
            if rows:
                cursor.last_xid, cursor.last_seq = rows[-1].xid, rows[-1].seq
                cursor.updated_at = moment
            waiting = 0
            if horizon is not None and len(rows) < chunk_size:
                waiting = _held_back(session, route.sink, horizon, moment, stall_warning)
        queued += len(wanted)
        if len(rows) < chunk_size:
            return FanOut(queued, waiting)


def _held_back(
    session: Session, sink: str, horizon: int, now: datetime, stall_warning: timedelta
) -> int:
    """How many committed events wait behind an open transaction; a warning once they have
    waited `stall_warning`.

    They are delayed, not lost: they are fanned out once that transaction ends. The log
    names how many wait and for how long (ids only), so an operator can look for the
    long transaction (`pg_stat_activity.backend_xid` in this database).
    """
    e = OutboxEvent
    waiting, oldest = session.execute(
        select(func.count(), func.min(e.created_at)).where(e.xid >= horizon)
    ).one()
    if oldest is not None and now - oldest >= stall_warning:
        log.warning(
            "outbox.fanout_held_back",
            sink=sink,
            events=int(waiting),
            oldest_seconds=round((now - oldest).total_seconds()),
            horizon_xid=horizon,
        )
    return int(waiting)
