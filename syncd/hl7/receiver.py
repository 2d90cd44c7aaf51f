"""The receive path: one message's bytes → durable in `hl7_inbound` → its ACK.

Mirth's rule, ACK after durability: AA is sent only once the message is committed; a
message that cannot be parsed is committed as `rejected` (kept for an operator, never
logged) and answered AE/AR with the reason. A message already recorded (same sender and
MSH-10, resent because its ACK was lost) is answered AA again and not stored twice. When
the state database cannot be written, no ACK is sent at all: the connection is dropped
and the sender sends again later (an AE would tell it to give up on a message we never
even looked at).

Database work runs in one worker thread (SQLite has one writer anyway), so the event
loop keeps serving other connections while a commit waits for the disk; messages that
arrive meanwhile share the next commit (group commit).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from syncd import metrics
from syncd.exceptions import StateError
from syncd.hl7.inbound import Received, record
from syncd.hl7.message import MessageRejected, ack, decode, header_of
from syncd.testing_hooks import step

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class ReceiveCounts:
    """What the receive path has done since start."""

    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0


class Receiver:
    """Records each message and builds its ACK (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        *,
        source: str = "mllp",
        default_charset: str = "utf-8",
        on_accepted: Callable[[], None] | None = None,
    ) -> None:
        self._engine = engine
        self._source = source
        self._default_charset = default_charset
        self._on_accepted = on_accepted
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hl7-receive")
        self.counts = ReceiveCounts()
        self._queue: list[tuple[bytes, asyncio.Future[bytes]]] = []
        self._flushing = False
        self._flusher: asyncio.Task[None] | None = None

    def close(self) -> None:
        """Stop the worker thread (after the listener stopped handing it messages)."""
        self._worker.shutdown(wait=True)

    async def handle(self, raw: bytes, peer: str) -> bytes:
        """Record `raw` and return its ACK; raises `StateError` when it cannot be recorded
        (the listener then drops the connection without an ACK).

        Group commit: messages arriving on other connections while a commit is under way
        wait for the next one and share it, so N parallel senders cost one disk flush per
        round instead of N. Each still gets its ACK only after its own row is committed.
        """
        step("hl7.received")
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[bytes] = loop.create_future()
        self._queue.append((raw, answer))
        if not self._flushing:
            self._flushing = True
            self._flusher = asyncio.create_task(self._flush())
        return await answer

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    acks = await loop.run_in_executor(
                        self._worker, self.receive_many, [raw for raw, _ in batch]
                    )
                except Exception as exc:
                    for _, answer in batch:
                        if not answer.done():
                            answer.set_exception(exc)
                    continue
                for (_, answer), ack_bytes in zip(batch, acks, strict=True):
                    if not answer.done():
                        answer.set_result(ack_bytes)
        finally:
            self._flushing = False

    def receive(self, raw: bytes) -> bytes:
        """Record one message (committed on return) and build its ACK (the file drop)."""
        return self.receive_many([raw])[0]

    def receive_many(self, raws: list[bytes]) -> list[bytes]:
        """The blocking part: decode each message, record all in ONE transaction, commit,
        and build each ACK. Raises `StateError` when the commit fails (no ACK for any)."""
        planned: list[tuple[bytes, Received, MessageRejected | None]] = []
        for raw in raws:
            try:
                decoded = decode(raw, default_charset=self._default_charset)
            except MessageRejected as rejected:
                planned.append((raw, self._rejected_row(raw, rejected), rejected))
                continue
            header = decoded.header
            row = Received(
                source=self._source,
                sender=header.sender,
                control_id=header.control_id,
                message_type=f"{header.message_type}^{header.trigger_event}"[:16],
                sent_at=header.sent_at,
                status="pending",
                reason=None,
                raw=raw,
            )
            planned.append((raw, row, None))
        try:
            with self._engine.begin() as conn:
                fresh = [record(conn, row) for _, row, _ in planned]
        except SQLAlchemyError as exc:
            raise StateError(
                f"hl7: cannot record inbound messages ({type(exc).__name__})"
            ) from None
        step("hl7.after_commit")
        acks: list[bytes] = []
        accepted = 0
        for (raw, row, refusal), is_new in zip(planned, fresh, strict=True):
            if refusal is not None:
                self.counts.rejected += 1
                metrics.HL7_MESSAGES.labels("rejected").inc()
                log.warning(
                    "hl7.rejected",
                    code=refusal.code,
                    reason=refusal.reason,
                    control_id=row.control_id,
                )
                acks.append(
                    ack(raw, refusal.code, reason=refusal.reason, control_id=row.control_id)
                )
                continue
            if is_new:
                accepted += 1
                self.counts.accepted += 1
                metrics.HL7_MESSAGES.labels("accepted").inc()
            else:
                self.counts.duplicates += 1
                metrics.HL7_MESSAGES.labels("duplicate").inc()
                log.info("hl7.duplicate", sender=row.sender, control_id=row.control_id)
            acks.append(ack(raw, "AA", control_id=row.control_id))
        if accepted and self._on_accepted is not None:
            self._on_accepted()
        return acks

    def _rejected_row(self, raw: bytes, rejected: MessageRejected) -> Received:
        """An unusable message, kept as `rejected` for an operator (never logged)."""
        sender, control_id = "?", None
        try:
            header = header_of(raw.decode("latin-1").lstrip("\r\n"))
            sender, control_id = header.sender, header.control_id
        except MessageRejected:
            pass
        return Received(
            source=self._source,
            sender=sender,
            control_id=control_id,
            message_type=None,
            sent_at=None,
            status="rejected",
            reason=f"{rejected.code}: {rejected.reason}",
            raw=raw,
        )
