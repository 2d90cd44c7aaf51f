"""The outbox's database work: fan-out, claims and outcomes for the delivery job, and the
queries behind the `syncd outbox` commands (list, show, retry, replay, prune, backlog).

Synchronous SQLAlchemy (the job runs it in worker threads); each function is one or a few
short transactions and translates SQLAlchemy errors into `StateError` (ids only).

Delivery semantics, in one place:

- **Fan-out.** Every sink has a cursor (`sink_cursors.last_seq`). In one transaction per
  chunk, events past the cursor that the sink subscribes to get a `pending` delivery row and
  the cursor moves past them. A new sink starts at the current end (`start = "now"`) or at
  the first event (`"beginning"`); history is sent on request with `replay`.
  On PostgreSQL a sequence value is taken when a row is inserted, not when it commits, so a
  slower transaction can commit seq 10 after seq 11 is visible. The cursor therefore stops
  at a gap until the event after the gap is `gap_grace` old; a gap that old is a rolled-back
  transaction (logged as `outbox.fanout_gap_skipped`). On SQLite there is one writer at a
  time and no gaps, but SQLite reuses the highest rowid after it is deleted, so `prune`
  never deletes the newest event.
- **Claim.** A worker leases up to N due deliveries of one sink (`claimed_by`,
  `claimed_until`) in a short transaction; an expired lease is free again.
- **Outcome.** The same worker records what the sink answered, only for rows it still
  holds; a row another worker re-claimed after the lease expired is left to that worker.
- At least once: a crash between a sink's answer and the record of it means the event is
  delivered again once the lease expires. Every delivery of an event carries the same
  `event_id` (the webhook-id / message-id), which receivers use to deduplicate.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple, cast

import structlog
from sqlalchemy import (
    Engine,
    Table,
    bindparam,
    case,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult, Result
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, aliased

from syncd.exceptions import StateError
from syncd.outbox.routing import Route
from syncd.state.models import OutboxDelivery, OutboxEvent, SinkCursor
from syncd.state.runs import AuditRecord, audit, audit_many

log = structlog.get_logger(__name__)

PENDING: Final = "pending"
DELIVERED: Final = "delivered"
DEAD: Final = "dead"
STATES: Final = (PENDING, DELIVERED, DEAD)
CLI_ACTOR: Final = "cli"
DEFAULT_GAP_GRACE: Final = timedelta(seconds=120)
_CHUNK: Final = 1000
_ERROR_MAX: Final = 1024  # outbox_deliveries.last_error
_REASON_MAX: Final = 256  # sink_cursors.disabled_reason


def _utcnow() -> datetime:
    return datetime.now(UTC)


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """SQLAlchemy errors become StateError naming the operation (never row contents)."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise StateError(f"outbox {what} failed ({type(exc).__name__})") from exc


def _rowcount(result: Result[Any]) -> int:
    """Rows matched by an UPDATE or DELETE (a Session hands back its CursorResult)."""
    return cast("CursorResult[Any]", result).rowcount


def _insert_ignoring_duplicates(session: Session, table: Any) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING, in the session's dialect."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    raise StateError(f"outbox: unsupported database {dialect}")


# --- fan-out --------------------------------------------------------------------------------


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
        _insert_ignoring_duplicates(session, SinkCursor).values(
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
    chunk_size: int = _CHUNK,
) -> int:
    """Queue a pending delivery to `route.sink` for each new event it subscribes to.

    One transaction per chunk of events moves the cursor together with the rows it queued.
    Returns how many deliveries were queued.
    """
    queued = 0
    while True:
        moment = now or _utcnow()
        with _translated("fan-out"), Session(engine) as session, session.begin():
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
                    _insert_ignoring_duplicates(session, OutboxDelivery),
                    [_new_delivery(seq, route.sink, moment) for seq in wanted],
                )
            if end != start:
                cursor.last_seq = end
                cursor.updated_at = moment
            _log_skipped_gaps(route.sink, start, [row.seq for row in taken])
        queued += len(wanted)
        if len(rows) < chunk_size or len(taken) < len(rows):
            return queued


def _new_delivery(seq: int, sink: str, now: datetime) -> dict[str, Any]:
    return {
        "event_seq": seq,
        "sink": sink,
        "state": PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }


def _log_skipped_gaps(sink: str, start: int, seqs: Sequence[int]) -> None:
    previous = start
    for seq in seqs:
        if seq != previous + 1:
            log.warning("outbox.fanout_gap_skipped", sink=sink, after=previous, before=seq)
        previous = seq


# --- claims and outcomes --------------------------------------------------------------------


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
    moment = now or _utcnow()
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
    with _translated("claim"), Session(engine) as session, session.begin():
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
    moment = now or _utcnow()
    d = OutboxDelivery
    live = (d.state == PENDING, d.claimed_by.is_not(None), d.claimed_until > moment)
    with _translated("release dead claims"), Session(engine) as session, session.begin():
        owners = session.scalars(select(d.claimed_by).where(*live).distinct()).all()
        dead = [owner for owner in owners if _dead_local_worker(owner, host, is_alive)]
        if not dead:
            return 0
        freed = session.execute(
            update(d)
            .where(*live, d.claimed_by.in_(dead))
            .values(claimed_by=None, claimed_until=None)
        )
        return _rowcount(freed)


def _dead_local_worker(owner: str | None, host: str, is_alive: Callable[[int], bool]) -> bool:
    """Whether `owner` names a worker of `host` whose process no longer exists."""
    parts = (owner or "").rsplit(":", 2)
    return (
        len(parts) == 3 and parts[0] == host and parts[1].isdigit() and not is_alive(int(parts[1]))
    )


@dataclass(frozen=True, slots=True)
class Done:
    """The sink took the event."""

    seq: int
    event_id: str
    attempts: int  # including this one


@dataclass(frozen=True, slots=True)
class Again:
    """Not taken this time; try again at `at`."""

    seq: int
    attempts: int
    at: datetime
    error: str


@dataclass(frozen=True, slots=True)
class Dead:
    """Never going to be taken as it is; stop trying (an operator may `retry`)."""

    seq: int
    event_id: str
    attempts: int
    reason: str


@dataclass(frozen=True, slots=True)
class Release:
    """Not attempted for good (the sink was disabled): give the lease back, keep it pending."""

    seq: int
    error: str


Decision = Done | Again | Dead | Release


@dataclass(frozen=True, slots=True)
class Recorded:
    """What `record` wrote: the seqs whose decision applied, and those whose lease was lost."""

    applied: tuple[int, ...]
    lease_lost: tuple[int, ...]


def record(
    engine: Engine,
    sink: str,
    *,
    worker: str,
    decisions: Sequence[Decision],
    disable_reason: str | None = None,
    actor: str,
    run_id: int | None,
    now: datetime | None = None,
) -> Recorded:
    """Apply one batch's decisions in one transaction, with their audit entries.

    A decision applies only while `worker` still holds the row's claim (pending, claimed by
    `worker`); otherwise another worker took it over after the lease expired and will record
    its own outcome. `disable_reason` disables the sink (its cursor) in the same transaction.

    Batched: one SELECT finds the held rows, then one executemany per kind of decision and
    one for the audit entries, instead of a statement (and an ORM flush) per delivery.
    """
    moment = now or _utcnow()
    with _translated("record"), Session(engine) as session, session.begin():
        held = _held_seqs(session, sink, worker, [decision.seq for decision in decisions])
        applied: list[Decision] = []
        lost: list[int] = []
        for decision in decisions:
            if decision.seq in held:
                held.discard(decision.seq)  # a repeated seq applies once, as one row would
                applied.append(decision)
            else:
                lost.append(decision.seq)
        _apply(session, sink, worker, applied, moment)
        entries = [entry for d in applied if (entry := _audit_record(sink, d)) is not None]
        if disable_reason is not None:
            session.execute(
                update(SinkCursor)
                .where(SinkCursor.sink == sink)
                .values(disabled_reason=disable_reason[:_REASON_MAX], updated_at=moment)
            )
            entries.append(AuditRecord("sink.disabled", "sink", sink, disable_reason))
        audit_many(session, actor, run_id, entries)
    return Recorded(applied=tuple(d.seq for d in applied), lease_lost=tuple(lost))


def _held_seqs(session: Session, sink: str, worker: str, seqs: Sequence[int]) -> set[int]:
    """Which of `seqs` `worker` still holds at `sink`, locked until commit.

    PostgreSQL: FOR UPDATE keeps another worker from re-claiming them before our UPDATEs
    (its claim skips locked rows; a claim that got there first is waited for, and the
    re-checked row then no longer matches). SQLite renders no FOR UPDATE: BEGIN IMMEDIATE
    already made this transaction the only writer (see `claim`).
    """
    d = OutboxDelivery
    held: set[int] = set()
    unique = sorted(set(seqs))
    for start in range(0, len(unique), _CHUNK):
        held.update(
            session.scalars(
                select(d.event_seq)
                .where(
                    d.sink == sink,
                    d.event_seq.in_(unique[start : start + _CHUNK]),
                    d.state == PENDING,
                    d.claimed_by == worker,
                )
                .order_by(d.event_seq)  # one lock order for every locker
                .with_for_update()
            )
        )
    return held


def _apply(
    session: Session, sink: str, worker: str, decisions: Sequence[Decision], now: datetime
) -> None:
    """One executemany per kind of decision, for rows `_held_seqs` found (and locked).

    The UPDATEs repeat the holder condition: on either database it cannot fail after
    `_held_seqs`, and it keeps a row we do not hold untouched should that ever change.
    """
    table = cast(Table, OutboxDelivery.__table__)
    t = table.c
    by_kind: dict[type[Decision], list[dict[str, Any]]] = {}
    for decision in decisions:
        row: dict[str, Any] = {"b_seq": decision.seq}
        match decision:
            case Done():
                row["b_attempts"] = decision.attempts
            case Again():
                row |= {"b_attempts": decision.attempts, "b_at": decision.at}
                row["b_error"] = decision.error[:_ERROR_MAX]
            case Dead():
                row |= {"b_attempts": decision.attempts, "b_error": decision.reason[:_ERROR_MAX]}
            case Release():
                row["b_error"] = decision.error[:_ERROR_MAX]
        by_kind.setdefault(type(decision), []).append(row)
    values: dict[type[Decision], dict[str, Any]] = {
        Done: {"state": DELIVERED, "attempts": bindparam("b_attempts"), "delivered_at": now,
               "last_error": None},
        Again: {"attempts": bindparam("b_attempts"), "next_attempt_at": bindparam("b_at"),
                "last_error": bindparam("b_error")},
        Dead: {"state": DEAD, "attempts": bindparam("b_attempts"),
               "last_error": bindparam("b_error")},
        Release: {"last_error": bindparam("b_error")},
    }  # fmt: skip
    for kind, rows in by_kind.items():
        session.execute(
            update(table)
            .where(
                t.sink == sink,
                t.event_seq == bindparam("b_seq"),
                t.state == PENDING,
                t.claimed_by == worker,
            )
            .values(**values[kind], claimed_by=None, claimed_until=None),
            rows,
        )


def _audit_record(sink: str, decision: Decision) -> AuditRecord | None:
    """The audit entry of an applied decision: delivered and dead-lettered events only."""
    match decision:
        case Done():
            action = "event.delivered"
        case Dead():
            action = "event.dead_lettered"
        case _:
            return None
    detail = f"sink={sink} attempts={decision.attempts}"
    return AuditRecord(action, "outbox_event", decision.event_id, detail)


class SinkState(NamedTuple):
    """A sink's cursor as recorded."""

    sink: str
    last_seq: int
    disabled_reason: str | None


def sink_states(engine: Engine) -> dict[str, SinkState]:
    """Every sink that ever had a cursor: how far fan-out got, and whether it is disabled."""
    with _translated("sink states"), Session(engine) as session:
        return {
            c.sink: SinkState(c.sink, c.last_seq, c.disabled_reason)
            for c in session.scalars(select(SinkCursor).order_by(SinkCursor.sink))
        }


# --- operator queries -----------------------------------------------------------------------


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
    with _translated("list"), Session(engine) as session:
        rows = session.execute(query).all()
        views = _views(session, [row.seq for row in rows], sink)
    return [
        EventSummary(row.seq, row.event_id, row.event_type, row.created_at, tuple(views[row.seq]))
        for row in rows
    ]


def show_event(engine: Engine, event_id: str) -> EventDetail | None:
    """One event with its payload and delivery states, or None if there is no such event."""
    with _translated("show"), Session(engine) as session:
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
    moment = now or _utcnow()
    d = OutboxDelivery
    where = [d.state == DEAD]
    if event_id is not None:
        where.append(
            d.event_seq.in_(select(OutboxEvent.seq).where(OutboxEvent.event_id == event_id))
        )
    if sink is not None:
        where.append(d.sink == sink)
    with _translated("retry"), Session(engine) as session, session.begin():
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
    moment = now or _utcnow()
    d, e = OutboxDelivery, OutboxEvent
    recent = select(e.seq).where(e.created_at >= since)
    where = [d.state == DELIVERED, d.event_seq.in_(recent)]
    if sink is not None:
        where.append(d.sink == sink)
    queued: dict[str, int] = {}
    with _translated("replay"), Session(engine) as session, session.begin():
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
    last_seq = session.scalar(select(SinkCursor.last_seq).where(SinkCursor.sink == route.sink))
    if last_seq is None:
        return 0  # fan-out has not seen this sink yet; its start rule applies first
    d, e = OutboxDelivery, OutboxEvent
    missing = exists(
        select(literal(1)).select_from(d).where(d.event_seq == e.seq, d.sink == route.sink)
    )
    after, added = 0, 0
    while True:
        rows = session.execute(
            select(e.seq, e.event_type)
            .where(e.created_at >= since, e.seq <= last_seq, e.seq > after, ~missing)
            .order_by(e.seq)
            .limit(_CHUNK)
        ).all()
        wanted = [row.seq for row in rows if route.subscribes(row.event_type)]
        if wanted:
            session.execute(
                _insert_ignoring_duplicates(session, OutboxDelivery),
                [_new_delivery(seq, route.sink, now) for seq in wanted],
            )
        added += len(wanted)
        if len(rows) < _CHUNK:
            return added
        after = rows[-1].seq


def prune(
    engine: Engine,
    retention_days: float,
    *,
    actor: str = CLI_ACTOR,
    run_id: int | None = None,
    now: datetime | None = None,
    chunk_size: int = _CHUNK,
) -> int:
    """Delete events older than `retention_days` whose deliveries are all delivered; returns
    how many events were deleted.

    Kept: events with a pending or dead delivery (dead ones until an operator resolves
    them), events some sink's fan-out has not passed yet, and the newest event (SQLite would
    hand its seq to the next event). Each deleted event's deliveries go with it; its
    `submission_versions` row stays (its `event_seq` becomes NULL), so that version is
    still never emitted again. Deleted in chunks, one transaction each.
    """
    moment = now or _utcnow()
    cutoff = moment - timedelta(days=retention_days)
    d, e = OutboxDelivery, OutboxEvent
    unfinished = exists(
        select(literal(1)).select_from(d).where(d.event_seq == e.seq, d.state != DELIVERED)
    )
    newest = select(func.max(e.seq)).scalar_subquery()
    fanned_out = select(func.min(SinkCursor.last_seq)).scalar_subquery()
    candidates = (
        select(e.seq)
        .where(
            e.created_at < cutoff,
            e.seq < newest,
            or_(fanned_out.is_(None), e.seq <= fanned_out),
            ~unfinished,
        )
        .order_by(e.seq)
        .limit(chunk_size)
    )
    deleted = 0
    while True:
        with _translated("prune"), Session(engine) as session, session.begin():
            seqs = list(session.scalars(candidates))
            if seqs:
                # Deliveries first (and only delivered ones: a replay that raced in keeps
                # its event), then the events left without any delivery.
                session.execute(delete(d).where(d.event_seq.in_(seqs), d.state == DELIVERED))
                anything = exists(select(literal(1)).select_from(d).where(d.event_seq == e.seq))
                gone = _rowcount(session.execute(delete(e).where(e.seq.in_(seqs), ~anything)))
                deleted += gone
                audit(
                    session, actor, run_id, "outbox.pruned", "outbox", "events",
                    f"events={gone} first_seq={seqs[0]} last_seq={seqs[-1]}",
                )  # fmt: skip
        if len(seqs) < chunk_size:
            return deleted


class SinkBacklog(NamedTuple):
    """A sink's undelivered work: pending deliveries, the oldest one's wait, dead ones."""

    pending: int
    oldest_age_seconds: float
    dead: int


def backlog(engine: Engine, *, now: datetime | None = None) -> dict[str, SinkBacklog]:
    """Per sink (every sink with a cursor or a delivery): pending count, how long the oldest
    pending delivery has been queued (0 when none), and dead count. Feeds the metrics."""
    moment = now or _utcnow()
    d = OutboxDelivery
    query = select(
        d.sink,
        func.count().filter(d.state == PENDING),
        func.min(case((d.state == PENDING, d.created_at))),
        func.count().filter(d.state == DEAD),
    ).group_by(d.sink)
    with _translated("backlog"), Session(engine) as session:
        found = {name: SinkBacklog(0, 0.0, 0) for name in session.scalars(select(SinkCursor.sink))}
        for name, pending, oldest, dead in session.execute(query):
            age = max((moment - oldest).total_seconds(), 0.0) if oldest is not None else 0.0
            found[name] = SinkBacklog(int(pending), age, int(dead))
    return dict(sorted(found.items()))
