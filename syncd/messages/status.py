"""The `message_status` job: follow each sent SMS until Voxares reports it final.

For every `sent` request with a message id whose delivery status is not final (`Delivered`
or `Failed`), read `GET /messages/:id`. A changed status is recorded together with a
`message.status_changed` outbox event (`{messageId, requestKey, providerId, status, sentOn}`:
ids and status only, never the text) in ONE transaction, so downstream learns each change
exactly once. The update is guarded on the status it replaces: a concurrent poller cannot
record, nor emit, the same change twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

import structlog
from sqlalchemy import Engine, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from syncd.exceptions import (
    Forbidden,
    NotFound,
    StateError,
    Unauthorized,
    VoxaresError,
)
from syncd.messages.states import SENT, refresh_metrics
from syncd.messages.store import rows_updated
from syncd.outbox.events import emit
from syncd.state.db import session_factory
from syncd.state.models import MessageRequest
from syncd.voxares.client import VoxaresClient
from syncd.voxares.contract import FINAL_MESSAGE_STATUSES, format_timestamp
from syncd.voxares.models import Message

log = structlog.get_logger(__name__)

JOB_NAME: Final = "message_status"
EVENT_TYPE: Final = "message.status_changed"


@dataclass(slots=True)
class StatusCounts:
    """What one run did: messages checked, status changes recorded (one event each),
    messages Voxares no longer knows, and reads that failed (retried next run)."""

    checked: int = 0
    changed: int = 0
    not_found: int = 0
    errors: int = 0

    @property
    def outcome(self) -> Literal["ok", "partial", "failed"]:
        """`failed` when every read failed, `partial` when some did (both retried next run)."""
        if not self.errors:
            return "ok"
        return "partial" if self.checked + self.not_found else "failed"

    @property
    def problem(self) -> str | None:
        """Id-only text for the run record when some reads failed."""
        if not self.errors:
            return None
        tried = self.checked + self.not_found + self.errors
        return f"{self.errors} of {tried} status reads failed (read again next run)"


@dataclass(frozen=True, slots=True)
class Tracked:
    """A sent request whose delivery is still being followed."""

    key: str
    provider_id: str
    message_id: str
    delivery_status: str | None


def event_payload(tracked: Tracked, message: Message) -> dict[str, Any]:
    """The outbox payload of one status change: ids, status and when it was sent."""
    return {
        "messageId": tracked.message_id,
        "requestKey": tracked.key,
        "providerId": tracked.provider_id,
        "status": message.status,
        "sentOn": format_timestamp(message.sent_on) if message.sent_on else None,
    }


class StatusStore:
    """The status job's database work."""

    def __init__(self, engine: Engine, provider: str | None) -> None:
        self._sessions = session_factory(engine)
        self._provider = provider

    def tracked_batch(self, after_key: str | None, limit: int) -> list[Tracked]:
        """The next `limit` sent requests (by key) whose delivery status is not final."""
        query = (
            select(
                MessageRequest.key,
                MessageRequest.provider_id,
                MessageRequest.message_id,
                MessageRequest.delivery_status,
            )
            .where(MessageRequest.state == SENT)
            .where(MessageRequest.message_id.is_not(None))
            .where(
                or_(
                    MessageRequest.delivery_status.is_(None),
                    MessageRequest.delivery_status.not_in(sorted(FINAL_MESSAGE_STATUSES)),
                )
            )
            .order_by(MessageRequest.key)
            .limit(limit)
        )
        if self._provider is not None:
            query = query.where(MessageRequest.provider == self._provider)
        if after_key is not None:
            query = query.where(MessageRequest.key > after_key)
        with _translated(), self._sessions() as session:
            rows = session.execute(query)
            return [Tracked(k, p, m, s) for k, p, m, s in rows if m is not None]

    def record(self, tracked: Tracked, message: Message) -> bool:
        """Record the status read for `tracked`; with a change, emit its event in the same
        transaction. Returns whether a change was recorded."""
        now = datetime.now(UTC)
        changed = message.status != tracked.delivery_status
        same_request = [
            MessageRequest.key == tracked.key,
            MessageRequest.state == SENT,
            MessageRequest.message_id == tracked.message_id,
        ]
        if tracked.delivery_status is None:
            same_request.append(MessageRequest.delivery_status.is_(None))
        else:
            same_request.append(MessageRequest.delivery_status == tracked.delivery_status)
        values: dict[str, Any] = {"status_checked_at": now}
        if changed:
            values.update(delivery_status=message.status, updated_at=now)
        with _translated(), self._sessions.begin() as session:
            moved = rows_updated(
                session, update(MessageRequest).where(*same_request).values(**values)
            )
            if moved != 1 or not changed:
                return False
            emit(
                session,
                event_type=EVENT_TYPE,
                payload=event_payload(tracked, message),
                ordering_key=tracked.provider_id,
            )
            return True


class MessageStatusPoller:
    """The `message_status` job (see the module docstring).

    `provider` limits it to one provider's requests (None: all). At most `concurrency`
    reads are in flight; requests are read from the database `batch_size` at a time.
    """

    name = JOB_NAME

    def __init__(
        self,
        engine: Engine,
        client: VoxaresClient,
        *,
        provider: str | None = None,
        batch_size: int = 100,
        concurrency: int = 4,
    ) -> None:
        if batch_size < 1 or concurrency < 1:
            raise ValueError("batch_size and concurrency must be at least 1")
        self._engine = engine
        self._client = client
        self._store = StatusStore(engine, provider)
        self._batch_size = batch_size
        self._slots = concurrency

    async def run(self, run_id: int | None) -> StatusCounts:
        """Check every followed message once. Raises `Unauthorized`/`Forbidden` (the key is
        wrong: no later read could succeed) and `StateError`."""
        counts = StatusCounts()
        slots = asyncio.Semaphore(self._slots)
        after: str | None = None
        try:
            while True:
                batch = await asyncio.to_thread(self._store.tracked_batch, after, self._batch_size)
                if not batch:
                    break
                after = batch[-1].key
                async with asyncio.TaskGroup() as group:
                    for tracked in batch:
                        group.create_task(self._check(tracked, slots, counts))
        except BaseExceptionGroup as group:
            # One failure (a bad key, the database) ends the run; raise it as itself.
            raise group.exceptions[0] from None
        finally:
            try:
                await asyncio.to_thread(refresh_metrics, self._engine)
            except StateError:
                log.warning("messages.metrics_refresh_failed")
        log.info("messages.status_checked", **asdict(counts))
        return counts

    async def _check(
        self, tracked: Tracked, slots: asyncio.Semaphore, counts: StatusCounts
    ) -> None:
        async with slots:
            try:
                message = await self._client.get_message(tracked.message_id)
            except (Unauthorized, Forbidden):
                raise
            except NotFound:
                counts.not_found += 1
                log.warning("messages.status_not_found", key=tracked.key)
                return
            except VoxaresError as exc:
                counts.errors += 1
                log.warning(
                    "messages.status_read_failed", key=tracked.key, error=type(exc).__name__
                )
                return
            counts.checked += 1
            if await asyncio.to_thread(self._store.record, tracked, message):
                counts.changed += 1
                log.info("messages.status_changed", key=tracked.key, status=message.status)


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except SQLAlchemyError as exc:
        raise StateError(f"SMS status database failed ({type(exc).__name__})") from exc
