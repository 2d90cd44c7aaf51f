"""The receive path: one message's bytes → durable in `hl7_inbound` → its ACK.

Mirth's rule, ACK after durability: AA is sent only once the message is committed; a
message that cannot be parsed is committed as `rejected` (kept for an operator, never
logged) and answered AE/AR with the reason. A message already recorded (same sender and
MSH-10, resent because its ACK was lost) is answered AA again and not stored twice. When
the state database cannot be written, no ACK is sent at all: the connection is dropped
and the sender sends again later (an AE would tell it to give up on a message we never
even looked at).

Database work runs in one worker thread (SQLite has one writer anyway), so the event
loop keeps serving other connections while a commit waits for the disk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog
from sqlalchemy import Engine

from syncd import metrics
from syncd.hl7.inbound import Received, record_committed
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

    def close(self) -> None:
        """Stop the worker thread (after the listener stopped handing it messages)."""
        self._worker.shutdown(wait=True)

    async def handle(self, raw: bytes, peer: str) -> bytes:
        """Record `raw` and return its ACK; raises `StateError` when it cannot be recorded
        (the listener then drops the connection without an ACK)."""
        step("hl7.received")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self.receive, raw)

    def receive(self, raw: bytes) -> bytes:
        """The blocking part of `handle`: decode, record, commit, and build the ACK."""
        try:
            decoded = decode(raw, default_charset=self._default_charset)
        except MessageRejected as rejected:
            return self._reject(raw, rejected)
        header = decoded.header
        fresh = record_committed(
            self._engine,
            Received(
                source=self._source,
                sender=header.sender,
                control_id=header.control_id,
                message_type=f"{header.message_type}^{header.trigger_event}"[:16],
                sent_at=header.sent_at,
                status="pending",
                reason=None,
                raw=raw,
            ),
        )
        step("hl7.after_commit")
        if fresh:
            self.counts.accepted += 1
            metrics.HL7_MESSAGES.labels("accepted").inc()
            if self._on_accepted is not None:
                self._on_accepted()
        else:
            self.counts.duplicates += 1
            metrics.HL7_MESSAGES.labels("duplicate").inc()
            log.info("hl7.duplicate", sender=header.sender, control_id=header.control_id)
        return ack(raw, "AA", control_id=header.control_id)

    def _reject(self, raw: bytes, rejected: MessageRejected) -> bytes:
        """Keep an unusable message as `rejected` and answer AE/AR with the reason."""
        sender, control_id = "?", None
        try:
            header = header_of(raw.decode("latin-1").lstrip("\r\n"))
            sender, control_id = header.sender, header.control_id
        except MessageRejected:
            pass
        record_committed(
            self._engine,
            Received(
                source=self._source,
                sender=sender,
                control_id=control_id,
                message_type=None,
                sent_at=None,
                status="rejected",
                reason=f"{rejected.code}: {rejected.reason}",
                raw=raw,
            ),
        )
        self.counts.rejected += 1
        metrics.HL7_MESSAGES.labels("rejected").inc()
        log.warning(
            "hl7.rejected", code=rejected.code, reason=rejected.reason, control_id=control_id
        )
        return ack(raw, rejected.code, reason=rejected.reason, control_id=control_id)
