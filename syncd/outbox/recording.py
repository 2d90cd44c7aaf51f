"""Recording: what a sink answered for each delivery of a batch, applied by its holder.

The same worker that claimed a batch records its outcomes, only for rows it still holds; a
row another worker re-claimed after the lease expired is left to that worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Engine, Table, bindparam, select, update
from sqlalchemy.orm import Session

from syncd.outbox.tables import (
    CHUNK,
    DEAD,
    DELIVERED,
    ERROR_MAX,
    PENDING,
    REASON_MAX,
    translated,
    utcnow,
)
from syncd.state.models import OutboxDelivery, SinkCursor
from syncd.state.runs import AuditRecord, audit_many


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
    moment = now or utcnow()
    with translated("record"), Session(engine) as session, session.begin():
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
                .values(disabled_reason=disable_reason[:REASON_MAX], updated_at=moment)
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
    for start in range(0, len(unique), CHUNK):
        held.update(
            session.scalars(
                select(d.event_seq)
                .where(
                    d.sink == sink,
                    d.event_seq.in_(unique[start : start + CHUNK]),
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
                row["b_error"] = decision.error[:ERROR_MAX]
            case Dead():
                row |= {"b_attempts": decision.attempts, "b_error": decision.reason[:ERROR_MAX]}
            case Release():
                row["b_error"] = decision.error[:ERROR_MAX]
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
