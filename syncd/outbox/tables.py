"""What every part of the outbox's database work shares: the delivery states, the error
translation, and the few statements more than one part writes.

The outbox's database work is split by job: `fanout` (events into per-sink deliveries),
`claims` (leasing due deliveries to a worker), `recording` (a batch's outcomes),
`queries` (read-only views for the operator and the metrics), `actions` (the operator's
retry, replay and forget-sink) and `retention` (prune). All of it is synchronous
SQLAlchemy (the delivery job runs it in worker threads); each function is one or a few
short transactions and translates SQLAlchemy errors into `StateError` (ids only).

At least once: a crash between a sink's answer and the record of it means the event is
delivered again once the lease expires. Every delivery of an event carries the same
`event_id` (the webhook-id / message-id), which receivers use to deduplicate.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final, cast

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult, Result
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from syncd.exceptions import StateError

PENDING: Final = "pending"
DELIVERED: Final = "delivered"
DEAD: Final = "dead"
STATES: Final = (PENDING, DELIVERED, DEAD)
CLI_ACTOR: Final = "cli"
CHUNK: Final = 1000  # rows per statement or transaction in the chunked loops
ERROR_MAX: Final = 1024  # outbox_deliveries.last_error
REASON_MAX: Final = 256  # sink_cursors.disabled_reason


def utcnow() -> datetime:
    """The current time, UTC."""
    return datetime.now(UTC)


@contextmanager
def translated(what: str) -> Iterator[None]:
    """SQLAlchemy errors become StateError naming the operation (never row contents)."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise StateError(f"outbox {what} failed ({type(exc).__name__})") from exc


def rowcount(result: Result[Any]) -> int:
    """Rows matched by an UPDATE or DELETE (a Session hands back its CursorResult)."""
    return cast("CursorResult[Any]", result).rowcount


def insert_ignoring_duplicates(session: Session, table: Any) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING, in the session's dialect."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    raise StateError(f"outbox: unsupported database {dialect}")


def new_delivery(seq: int, sink: str, now: datetime) -> dict[str, Any]:
    """The row of a delivery queued now: pending, due at once, no attempt yet."""
    return {
        "event_seq": seq,
        "sink": sink,
        "state": PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }
