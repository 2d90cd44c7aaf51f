"""What an operator does to deliveries: queue dead ones again (`retry`), deliver delivered
ones again (`replay`), drop what a removed sink left behind (`forget_sink`)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, delete, exists, func, literal, select, tuple_, update
from sqlalchemy.orm import Session

from syncd.outbox.routing import Route
from syncd.outbox.tables import (
    CHUNK,
    CLI_ACTOR,
    DEAD,
    DELIVERED,
    PENDING,
    insert_ignoring_duplicates,
    new_delivery,
    rowcount,
    translated,
    utcnow,
)
from syncd.state.models import OutboxDelivery, OutboxEvent, SinkCursor
from syncd.state.runs import audit


def _requeued(now: datetime) -> dict[str, Any]:
    """A delivery queued afresh: due now, a new attempt budget and age, no lease."""
    return {
        "state": PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "claimed_by": None,
        "claimed_until": None,
        "delivered_at": None,
    }


@dataclass(frozen=True, slots=True)
class RetryResult:
    """What `retry` did."""

    requeued: dict[str, int]  # sink -> dead deliveries queued again
    enabled: tuple[str, ...]  # sinks re-enabled


def retry(
    engine: Engine,
    *,
    event_id: str | None = None,
    sink: str | None = None,
    actor: str = CLI_ACTOR,
    now: datetime | None = None,
) -> RetryResult:
    """Queue dead deliveries again (fresh attempts and age), and re-enable disabled sinks.

    `event_id`: that event's dead deliveries (at `sink`, when given). `sink` alone: every
    dead delivery of the sink, and the sink is re-enabled. Neither: every dead delivery,
    every sink re-enabled. The last error stays visible until the next attempt.
    """
    moment = now or utcnow()
    d = OutboxDelivery
    where = [d.state == DEAD]
    if event_id is not None:
        where.append(
            d.event_seq.in_(select(OutboxEvent.seq).where(OutboxEvent.event_id == event_id))
        )
    if sink is not None:
        where.append(d.sink == sink)
    with translated("retry"), Session(engine) as session, session.begin():
        counts: dict[str, int] = {
            name: int(count)
            for name, count in session.execute(
                select(d.sink, func.count()).where(*where).group_by(d.sink)
            )
        }
        session.execute(update(d).where(*where).values(**_requeued(moment)))
        enabled: tuple[str, ...] = ()
        if event_id is None or sink is not None:
            cursors = select(SinkCursor.sink).where(SinkCursor.disabled_reason.is_not(None))
            if sink is not None:
                cursors = cursors.where(SinkCursor.sink == sink)
            enabled = tuple(sorted(session.scalars(cursors)))
            if enabled:
                session.execute(
                    update(SinkCursor)
                    .where(SinkCursor.sink.in_(enabled))
                    .values(disabled_reason=None, updated_at=moment)
                )
        for name, count in sorted(counts.items()):
            object_type, object_id = ("outbox_event", event_id) if event_id else ("sink", name)
            audit(
                session, actor, None, "outbox.retried", object_type, object_id,
                f"sink={name} deliveries={count}",
            )  # fmt: skip
        for name in enabled:
            audit(session, actor, None, "sink.enabled", "sink", name, None)
    return RetryResult(requeued=counts, enabled=enabled)


def replay(
    engine: Engine,
    *,
    since: datetime,
    sink: str | None = None,
    routes: Mapping[str, Route] | None = None,
    actor: str = CLI_ACTOR,
    now: datetime | None = None,
) -> dict[str, int]:
    """Queue again the events created since `since` that were delivered (to `sink`, or to
    every sink); returns `{sink: deliveries queued}`.

    The redelivered events keep their `event_id`, so a receiver's deduplication would drop
    them: a receiver that asks for a replay because it lost data must accept an id it has
    seen before (or forget the ids it lost). Dead deliveries are left to `retry`, pending
    ones are queued already, and pruned events are gone.

    With `routes` (the configured sinks), events that were never queued for a sink it
    subscribes to (it was added later, starting "now") are queued too, up to its cursor:
    this is how a new sink gets history.
    """
    moment = now or utcnow()
    d, e = OutboxDelivery, OutboxEvent
    recent = select(e.seq).where(e.created_at >= since)
    where = [d.state == DELIVERED, d.event_seq.in_(recent)]
    if sink is not None:
        where.append(d.sink == sink)
    queued: dict[str, int] = {}
    with translated("replay"), Session(engine) as session, session.begin():
        for name, count in session.execute(
            select(d.sink, func.count()).where(*where).group_by(d.sink)
        ):
            queued[name] = int(count)
        session.execute(update(d).where(*where).values(**_requeued(moment)))
        for route in (routes or {}).values():
            if sink is None or route.sink == sink:
                added = _queue_history(session, route, since, moment)
                if added:
                    queued[route.sink] = queued.get(route.sink, 0) + added
        for name, count in sorted(queued.items()):
            audit(
                session, actor, None, "outbox.replayed", "sink", name,
                f"since={since.astimezone(UTC).isoformat()} deliveries={count}",
            )  # fmt: skip
    return queued


def _queue_history(session: Session, route: Route, since: datetime, now: datetime) -> int:
    """Queue events since `since`, up to the sink's cursor, that have no delivery to it."""
    cursor = session.get(SinkCursor, route.sink)
    if cursor is None:
        return 0  # fan-out has not seen this sink yet; its start rule applies first
    d, e = OutboxDelivery, OutboxEvent
    missing = exists(
        select(literal(1)).select_from(d).where(d.event_seq == e.seq, d.sink == route.sink)
    )
    fanned_out = tuple_(e.xid, e.seq) <= tuple_(cursor.last_xid, cursor.last_seq)
    after, added = 0, 0
    while True:
        rows = session.execute(
            select(e.seq, e.event_type)
            .where(e.created_at >= since, fanned_out, e.seq > after, ~missing)
            .order_by(e.seq)
            .limit(CHUNK)
        ).all()
        wanted = [row.seq for row in rows if route.subscribes(row.event_type)]
        if wanted:
            session.execute(
                insert_ignoring_duplicates(session, OutboxDelivery),
                [new_delivery(seq, route.sink, now) for seq in wanted],
            )
        added += len(wanted)
        if len(rows) < CHUNK:
            return added
        after = rows[-1].seq


class SinkStillConfiguredError(ValueError):
    """`forget_sink` was asked to forget a sink the configuration still names."""


@dataclass(frozen=True, slots=True)
class Forgotten:
    """What `forget_sink` dropped."""

    cursor: bool  # the sink had a cursor
    pending: int
    dead: int

    @property
    def anything(self) -> bool:
        """Whether there was anything to forget."""
        return self.cursor or self.pending > 0 or self.dead > 0


def forget_sink(
    engine: Engine,
    sink: str,
    *,
    configured: Collection[str],
    actor: str = CLI_ACTOR,
) -> Forgotten:
    """Drop the cursor and the undelivered (pending and dead) deliveries of `sink`, a sink
    no longer `configured`; audited as `sink.forgotten` with the counts.

    Its events are then kept only as long as another sink needs them, so retention deletes
    them in time. Delivered rows stay (history, pruned with their events). A sink added
    again under that name starts afresh by its `start` rule. Raises
    `SinkStillConfiguredError` for a configured sink: a running daemon would recreate its
    cursor, and its pending deliveries are work still to do.
    """
    if sink in configured:
        raise SinkStillConfiguredError(f"sink {sink} is configured")
    d = OutboxDelivery
    with translated("forget sink"), Session(engine) as session, session.begin():
        counts = {
            state: int(n)
            for state, n in session.execute(
                select(d.state, func.count())
                .where(d.sink == sink, d.state.in_((PENDING, DEAD)))
                .group_by(d.state)
            )
        }
        session.execute(delete(d).where(d.sink == sink, d.state.in_((PENDING, DEAD))))
        had_cursor = rowcount(session.execute(delete(SinkCursor).where(SinkCursor.sink == sink)))
        forgotten = Forgotten(had_cursor > 0, counts.get(PENDING, 0), counts.get(DEAD, 0))
        if forgotten.anything:
            detail = (
                f"cursor={int(forgotten.cursor)} pending={forgotten.pending} dead={forgotten.dead}"
            )
            audit(session, actor, None, "sink.forgotten", "sink", sink, detail)
    return forgotten
