"""The sender's database work: each step of a send is one short, durable transaction.

Synchronous SQLAlchemy, called through `asyncio.to_thread`. The order of commits is what
makes a send at most once: a request is committed as `sending` (the engine makes the commit
durable: `synchronous=FULL` on SQLite, `synchronous_commit=on` on PostgreSQL) before its HTTP
call starts, and only a request still `pending` can be claimed. Every state change moves from
an expected state (`UPDATE ... WHERE state = ...`), so two processes can never both claim one
request, and a result is recorded only on the request that is still `sending`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, cast

from pydantic import ValidationError
from sqlalchemy import Engine, Update, and_, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from syncd.exceptions import StateError
from syncd.messages.body import mirror_fields, send_body
from syncd.messages.outcome import SendOutcome
from syncd.messages.states import FAILED, PENDING, SENDING, SENT, UNKNOWN
from syncd.state.db import session_factory
from syncd.state.models import MessageRequest, PatientMirror
from syncd.state.runs import audit
from syncd.voxares.models import SendMessage

ACTOR: Final = "send_messages"
OBJECT_TYPE: Final = "message_request"
INTERRUPTED: Final = "the send was interrupted after it was marked sending; it may have been sent"


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a walk through the pending requests stands (keyset: created_at, then key)."""

    created_at: datetime
    key: str


@dataclass(frozen=True, slots=True)
class Claimed:
    """A request now committed as `sending`, with the body to send."""

    key: str
    body: SendMessage

    def __repr__(self) -> str:
        return f"Claimed(key={self.key!r})"


@dataclass(frozen=True, slots=True)
class Refused:
    """A request that cannot make a valid body: recorded `failed` without any call."""

    key: str
    reason: str


def utcnow() -> datetime:
    """Now, timezone-aware UTC."""
    return datetime.now(UTC)


class SendStore:
    """Reads and moves the SMS requests of one provider name."""

    def __init__(self, engine: Engine, provider: str) -> None:
        self._sessions = session_factory(engine)
        self.provider = provider

    def recover_interrupted(self, run_id: int | None) -> list[str]:
        """Make every request left `sending` (a crash between its mark and its result)
        `unknown`; returns their keys. Call only while no send of this provider runs (the
        job lock guarantees it)."""
        with _translated("recover"), self._sessions.begin() as session:
            keys = list(
                session.scalars(
                    select(MessageRequest.key)
                    .where(MessageRequest.provider == self.provider)
                    .where(MessageRequest.state == SENDING)
                    .order_by(MessageRequest.key)
                )
            )
            for key in keys:
                moved = _move(session, key, SENDING, state=UNKNOWN, error=INTERRUPTED)
                if moved:
                    audit(session, ACTOR, run_id, "message.unknown", OBJECT_TYPE, key, "recovered")
            return keys

    def pending_batch(self, after: Cursor | None, limit: int) -> list[Cursor]:
        """The next `limit` pending requests after `after`, oldest first."""
        query = (
            select(MessageRequest.created_at, MessageRequest.key)
            .where(MessageRequest.provider == self.provider)
            .where(MessageRequest.state == PENDING)
            .order_by(MessageRequest.created_at, MessageRequest.key)
            .limit(limit)
        )
        if after is not None:
            query = query.where(
                or_(
                    MessageRequest.created_at > after.created_at,
                    and_(
                        MessageRequest.created_at == after.created_at,
                        MessageRequest.key > after.key,
                    ),
                )
            )
        with _translated("pending"), self._sessions() as session:
            return [Cursor(created_at, key) for created_at, key in session.execute(query)]

    def claim(self, key: str, run_id: int | None) -> Claimed | Refused | None:
        """Commit request `key` as `sending` and return its body; None when it is no longer
        pending (cancelled or claimed meanwhile). A request whose body is invalid is
        committed `failed` instead (nothing to send)."""
        with _translated("claim"), self._sessions.begin() as session:
            request = session.get(MessageRequest, key)
            if request is None or request.state != PENDING or request.provider != self.provider:
                return None
            mirror = session.scalar(
                select(PatientMirror.payload).where(
                    PatientMirror.provider == request.provider,
                    PatientMirror.provider_id == request.provider_id,
                )
            )
            try:
                body = send_body(
                    provider=request.provider,
                    provider_id=request.provider_id,
                    content=request.content,
                    template_id=request.template_id,
                    patient=mirror_fields(mirror),
                )
            except ValidationError:
                reason = "the request cannot make a valid send body"
                if _move(session, key, PENDING, state=FAILED, error=reason):
                    audit(session, ACTOR, run_id, "message.failed", OBJECT_TYPE, key, reason)
                return Refused(key, reason)
            now = utcnow()
            if not _move(session, key, PENDING, state=SENDING, sending_at=now, error=None):
                return None
            return Claimed(key, body)

    def record(self, key: str, outcome: SendOutcome, run_id: int | None) -> bool:
        """Record how the send of `key` ended; False when the request was no longer
        `sending` (nothing is changed then)."""
        now = utcnow()
        values: dict[str, Any] = {"state": outcome.state, "error": outcome.error}
        if outcome.state == SENT:
            values.update(
                message_id=outcome.message_id,
                delivery_status=outcome.delivery_status,
                sent_at=now,
            )
        elif outcome.state == PENDING:
            values.update(sending_at=None)
        with _translated("record"), self._sessions.begin() as session:
            if not _move(session, key, SENDING, **values):
                return False
            detail = f"message_id={outcome.message_id}" if outcome.message_id else outcome.kind
            audit(session, ACTOR, run_id, f"message.{outcome.kind}", OBJECT_TYPE, key, detail)
            return True


def rows_updated(session: Session, statement: Update) -> int:
    """Run an UPDATE in `session` (ORM sync off: callers re-read); how many rows it changed."""
    result = session.execute(statement.execution_options(synchronize_session=False))
    return cast(CursorResult[Any], result).rowcount


def _move(session: Session, key: str, expected: str, **values: Any) -> bool:
    """Change request `key` only if it is in state `expected`; whether it was."""
    statement = (
        update(MessageRequest)
        .where(MessageRequest.key == key, MessageRequest.state == expected)
        .values(updated_at=utcnow(), **values)
    )
    return rows_updated(session, statement) == 1


@contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except SQLAlchemyError as exc:
        raise StateError(f"SMS state database failed: step={what} ({type(exc).__name__})") from exc
