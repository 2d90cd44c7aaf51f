"""Claims: due deliveries of one sink leased to one worker, and leases a dead worker left.

A worker leases up to N due deliveries of one sink (`claimed_by`, `claimed_until`) in a
short transaction; an expired lease is free again. Only the holder records an outcome
(`syncd.outbox.recording`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Engine, exists, literal, or_, select, update
from sqlalchemy.orm import Session, aliased

from syncd.outbox.tables import PENDING, rowcount, translated, utcnow
from syncd.state.models import OutboxDelivery, OutboxEvent


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """One delivery leased to a worker, with its event (the payload kept out of the repr)."""

    seq: int
    event_id: str
    event_type: str
    event_created_at: datetime
    attempts: int  # attempts made before this one
    queued_at: datetime  # when the delivery was (re)queued: the age limit counts from here
    payload: str = field(repr=False)


def claim(
    engine: Engine,
    sink: str,
    *,
    worker: str,
    limit: int,
    lease: timedelta,
    keep_order_per_patient: bool = False,
    now: datetime | None = None,
) -> list[ClaimedDelivery]:
    """Lease up to `limit` due deliveries of `sink` to `worker` until `now + lease`.

    Due: pending, `next_attempt_at <= now`, and no live lease. With
    `keep_order_per_patient`, a delivery whose event has an ordering key is not due while an
    earlier event of the same key is still pending at this sink (claimed or not).
    """
    moment = now or utcnow()
    d, e = OutboxDelivery, OutboxEvent
    query = (
        select(
            d.event_seq,
            d.attempts,
            d.created_at,
            e.event_id,
            e.event_type,
            e.created_at.label("event_created_at"),
            e.payload,
        )
        .join(e, e.seq == d.event_seq)
        .where(
            d.sink == sink,
            d.state == PENDING,
            d.next_attempt_at <= moment,
            or_(d.claimed_until.is_(None), d.claimed_until <= moment),
        )
    )
    if keep_order_per_patient:
        earlier_d, earlier_e = aliased(OutboxDelivery), aliased(OutboxEvent)
        earlier_pending = (
            select(literal(1))
            .select_from(earlier_d)
            .join(earlier_e, earlier_e.seq == earlier_d.event_seq)
            .where(
                earlier_e.ordering_key == e.ordering_key,
                earlier_d.sink == d.sink,
                earlier_d.state == PENDING,
                earlier_d.event_seq < d.event_seq,
            )
        )
        query = query.where(or_(e.ordering_key.is_(None), ~exists(earlier_pending)))
    # PostgreSQL: rows another worker is claiming right now are skipped, not waited for,
    # and a row whose claim committed meanwhile is re-checked and dropped. SQLite renders
    # no FOR UPDATE: its BEGIN IMMEDIATE makes this whole transaction the only writer, so
    # the SELECT and the UPDATE below cannot interleave with another worker's claim.
    query = (
        query.order_by(d.next_attempt_at, d.event_seq)
        .limit(limit)
        .with_for_update(of=OutboxDelivery, skip_locked=True)
    )
    with translated("claim"), Session(engine) as session, session.begin():
        rows = session.execute(query).all()
        if rows:
            session.execute(
                update(OutboxDelivery)
                .where(d.sink == sink, d.event_seq.in_([row.event_seq for row in rows]))
                .values(claimed_by=worker, claimed_until=moment + lease)
            )
    return [
        ClaimedDelivery(
            seq=row.event_seq,
            event_id=row.event_id,
            event_type=row.event_type,
            event_created_at=row.event_created_at,
            attempts=row.attempts,
            queued_at=row.created_at,
            payload=row.payload,
        )
        for row in rows
    ]


def release_dead_claims(
    engine: Engine,
    *,
    host: str,
    is_alive: Callable[[int], bool],
    now: datetime | None = None,
) -> int:
    """Free the live leases held by workers ("host:pid:tag") that ran on `host` and whose
    process is gone; how many deliveries were freed.

    A worker killed with SIGKILL records nothing, and its claims would otherwise wait out
    the whole lease (two minutes at least) before another run delivers them. A worker of
    another host, or one whose pid still exists, is left to its lease: only a process
    provably dead is passed over, so no two workers ever hold one delivery.
    """
    moment = now or utcnow()
    d = OutboxDelivery
    live = (d.state == PENDING, d.claimed_by.is_not(None), d.claimed_until > moment)
    with translated("release dead claims"), Session(engine) as session, session.begin():
        owners = session.scalars(select(d.claimed_by).where(*live).distinct()).all()
        dead = [owner for owner in owners if _dead_local_worker(owner, host, is_alive)]
        if not dead:
            return 0
        freed = session.execute(
            update(d)
            .where(*live, d.claimed_by.in_(dead))
            .values(claimed_by=None, claimed_until=None)
        )
        return rowcount(freed)


def _dead_local_worker(owner: str | None, host: str, is_alive: Callable[[int], bool]) -> bool:
    """Whether `owner` names a worker of `host` whose process no longer exists."""
    parts = (owner or "").rsplit(":", 2)
    return (
        len(parts) == 3 and parts[0] == host and parts[1].isdigit() and not is_alive(int(parts[1]))
    )
