"""Read-only views of the outbox: events and their deliveries (`syncd outbox list|show`),
each sink's cursor state and its backlog (`syncd status`, the metrics), and the sinks the
configuration no longer names."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, NamedTuple

from sqlalchemy import Engine, exists, func, literal, select
from sqlalchemy.orm import Session

from syncd.outbox.tables import DEAD, PENDING, STATES, translated, utcnow
from syncd.state.db import reader
from syncd.state.models import OutboxDelivery, OutboxEvent, SinkCursor


class SinkState(NamedTuple):
    """A sink's cursor as recorded."""

    sink: str
    last_seq: int
    disabled_reason: str | None


def sink_states(engine: Engine) -> dict[str, SinkState]:
    """Every sink that ever had a cursor: how far fan-out got, and whether it is disabled."""
    with translated("sink states"), Session(reader(engine)) as session:
        return {
            c.sink: SinkState(c.sink, c.last_seq, c.disabled_reason)
            for c in session.scalars(select(SinkCursor).order_by(SinkCursor.sink))
        }


def removed_sinks(engine: Engine, configured: Collection[str]) -> list[str]:
    """Sinks the outbox still holds state for (a cursor, or a pending or dead delivery)
    that are not `configured`: removed or renamed. Their cursor never moves again and their
    undelivered deliveries are never sent: `syncd outbox forget-sink NAME` drops both."""
    d = OutboxDelivery
    with translated("removed sinks"), Session(reader(engine)) as session:
        known = set(session.scalars(select(SinkCursor.sink)))
        known.update(session.scalars(select(d.sink).where(d.state.in_((PENDING, DEAD))).distinct()))
    return sorted(known - set(configured))


@dataclass(frozen=True, slots=True)
class DeliveryView:
    """One event's delivery state at one sink."""

    sink: str
    state: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    delivered_at: datetime | None


@dataclass(frozen=True, slots=True)
class EventSummary:
    """An event without its payload: what `outbox list` shows."""

    seq: int
    event_id: str
    event_type: str
    created_at: datetime
    deliveries: tuple[DeliveryView, ...]


@dataclass(frozen=True, slots=True)
class EventDetail:
    """An event with its payload, for `outbox show` only (an operator's explicit request).

    The payload may hold patient data: it is kept out of the repr and must never be logged.
    """

    seq: int
    event_id: str
    event_type: str
    created_at: datetime
    ordering_key: str | None
    deliveries: tuple[DeliveryView, ...]
    payload: dict[str, Any] = field(repr=False)


def _views(
    session: Session, seqs: Sequence[int], sink: str | None
) -> dict[int, list[DeliveryView]]:
    found: dict[int, list[DeliveryView]] = {seq: [] for seq in seqs}
    if not seqs:
        return found
    query = select(OutboxDelivery).where(OutboxDelivery.event_seq.in_(seqs))
    if sink is not None:
        query = query.where(OutboxDelivery.sink == sink)
    for row in session.scalars(query.order_by(OutboxDelivery.sink)):
        found[row.event_seq].append(
            DeliveryView(
                sink=row.sink,
                state=row.state,
                attempts=row.attempts,
                next_attempt_at=row.next_attempt_at,
                last_error=row.last_error,
                delivered_at=row.delivered_at,
            )
        )
    return found


def list_events(
    engine: Engine,
    *,
    state: str | None = None,
    sink: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
) -> list[EventSummary]:
    """Events newest first, without payloads, with their per-sink delivery state.

    `state` keeps events with a delivery in that state (at `sink`, when given); `sink` keeps
    events queued for that sink and shows only its delivery; `since` keeps events created
    at or after it.
    """
    if state is not None and state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}")
    e, d = OutboxEvent, OutboxDelivery
    query = select(e.seq, e.event_id, e.event_type, e.created_at)
    if since is not None:
        query = query.where(e.created_at >= since)
    if state is not None or sink is not None:
        conditions = [d.event_seq == e.seq]
        if state is not None:
            conditions.append(d.state == state)
        if sink is not None:
            conditions.append(d.sink == sink)
        query = query.where(exists(select(literal(1)).select_from(d).where(*conditions)))
    query = query.order_by(e.seq.desc()).limit(limit)
    with translated("list"), Session(reader(engine)) as session:
        rows = session.execute(query).all()
        views = _views(session, [row.seq for row in rows], sink)
    return [
        EventSummary(row.seq, row.event_id, row.event_type, row.created_at, tuple(views[row.seq]))
        for row in rows
    ]


def show_event(engine: Engine, event_id: str) -> EventDetail | None:
    """One event with its payload and delivery states, or None if there is no such event."""
    with translated("show"), Session(reader(engine)) as session:
        event = session.scalars(select(OutboxEvent).where(OutboxEvent.event_id == event_id)).first()
        if event is None:
            return None
        views = _views(session, [event.seq], None)
    return EventDetail(
        seq=event.seq,
        event_id=event.event_id,
        event_type=event.event_type,
        created_at=event.created_at,
        ordering_key=event.ordering_key,
        deliveries=tuple(views[event.seq]),
        payload=json.loads(event.payload),
    )


class SinkBacklog(NamedTuple):
    """A sink's undelivered work: pending deliveries, the oldest one's wait, dead ones."""

    pending: int
    oldest_age_seconds: float
    dead: int


# Both read only the pending or dead rows, through ix_outbox_deliveries_state (state, sink,
# created_at) alone: delivered rows, nearly all of the table, are never touched.
_PENDING_BY_SINK: Final = (
    select(OutboxDelivery.sink, func.count(), func.min(OutboxDelivery.created_at))
    .where(OutboxDelivery.state == PENDING)
    .group_by(OutboxDelivery.sink)
)
_DEAD_BY_SINK: Final = (
    select(OutboxDelivery.sink, func.count())
    .where(OutboxDelivery.state == DEAD)
    .group_by(OutboxDelivery.sink)
)


def backlog(engine: Engine, *, now: datetime | None = None) -> dict[str, SinkBacklog]:
    """Per sink (every sink with a cursor or a delivery): pending count, how long the oldest
    pending delivery has been queued (0 when none), and dead count. Feeds the metrics."""
    moment = now or utcnow()
    with translated("backlog"), Session(reader(engine)) as session:
        names = set(session.scalars(select(SinkCursor.sink)))
        pending = {name: (int(n), oldest) for name, n, oldest in session.execute(_PENDING_BY_SINK)}
        dead = {name: int(n) for name, n in session.execute(_DEAD_BY_SINK)}
    found: dict[str, SinkBacklog] = {}
    for name in sorted(names | set(pending) | set(dead)):
        count, oldest = pending.get(name, (0, None))
        age = max((moment - oldest).total_seconds(), 0.0) if oldest is not None else 0.0
        found[name] = SinkBacklog(count, age, dead.get(name, 0))
    return found
