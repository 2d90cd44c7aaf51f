"""The `send_messages` job: every pending SMS request sent at most once.

For each `pending` request of its provider, in this order:

1. commit it as `sending` (durably) — crash point `messages.after_mark_sending`;
2. `POST /messages/send`, with the patient's names, mobile, email and birth date from the
   patient mirror so Voxares can create a patient it does not know yet;
3. record the result (crash point `messages.after_send` just before): `sent` with the message
   id (audit `message.sent`); `failed` when Voxares provably refused it; `unknown` when it
   may or may not have been sent; back to `pending` when it provably never arrived (connect
   refused, 429 after the client's retries), for the next run.

A crash anywhere after step 1 leaves the request `sending`, and the next run, before anything
else, makes every `sending` request `unknown`: it is never resent without a human (`resolve`).
Sends of different requests run concurrently (bounded), each following that sequence.
A 401 or 403 fails its request and stops the run (every other send would be refused too);
the requests not yet started stay `pending`.

Graceful stop: `request_stop()` (the daemon calls it on SIGTERM) makes the run claim no
new request: the sends already claimed finish their sequence (the daemon's grace period
covers one send's timeouts), the run returns, and every request not started stays
`pending` for the next start. Only a send still in flight when the grace runs out is
cancelled and, like a crash, ends `unknown`.

Outcome (`SendCounts.outcome`): `ok` unless some request was left undelivered (`not_sent`)
or in doubt (`unknown`): then `partial` when others were sent, else `failed`. A request
Voxares refused (`failed`) is that request's own problem, as a quarantined row is for the
push.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Final, Literal

import stamina
import structlog
from sqlalchemy import Engine

from syncd.exceptions import StateError
from syncd.messages.outcome import SendOutcome, classify_failure, sent
from syncd.messages.states import refresh_metrics
from syncd.messages.store import Claimed, Cursor, Refused, SendStore
from syncd.testing_hooks import step
from syncd.voxares.client import VoxaresClient

log = structlog.get_logger(__name__)

JOB_NAME: Final = "send_messages"
# Crash points (`syncd.testing_hooks`), in the order a send reaches them.
STEP_BEFORE_MARK: Final = "messages.before_mark_sending"
STEP_AFTER_MARK: Final = "messages.after_mark_sending"
STEP_AFTER_SEND: Final = "messages.after_send"
STEP_AFTER_RECORD: Final = "messages.after_record"
RECORD_ATTEMPTS: Final = 3


@dataclass(slots=True)
class SendCounts:
    """What one run did. `recovered`: requests found `sending` (now `unknown`);
    `not_sent`: provably not delivered to Voxares, left `pending` for the next run;
    `skipped`: not started because the run stopped (bad key, graceful stop) or was claimed
    elsewhere; `stopped`: a graceful stop ended the run early."""

    sent: int = 0
    failed: int = 0
    unknown: int = 0
    not_sent: int = 0
    recovered: int = 0
    skipped: int = 0
    stopped: bool = False  # a graceful stop ended the run before every request was tried

    @property
    def outcome(self) -> Literal["ok", "partial", "failed"]:
        """How the run went (see the module docstring)."""
        if self.not_sent + self.unknown == 0:
            return "ok"
        return "partial" if self.sent else "failed"

    @property
    def problem(self) -> str | None:
        """Id-only text for the run record when the run was not ok."""
        if self.outcome == "ok":
            return None
        return (
            f"{self.not_sent} not sent (pending for the next run), "
            f"{self.unknown} unknown (resolve with `syncd messages resolve`)"
        )


class MessageSender:
    """The `send_messages` job for the requests of one provider name.

    `provider` is the patients' source-system name this daemon pushes under (as in
    `PatientPush`); requests of other providers are left to their own sender. At most
    `concurrency` sends are in flight; pending requests are read `batch_size` at a time.
    """

    name = JOB_NAME

    def __init__(
        self,
        engine: Engine,
        client: VoxaresClient,
        *,
        provider: str,
        batch_size: int = 100,
        concurrency: int = 4,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._engine = engine
        self._client = client
        self._store = SendStore(engine, provider)
        self._batch_size = batch_size
        self._concurrency = concurrency
        self.provider = provider
        self.stopping = False

    def __repr__(self) -> str:
        return f"MessageSender(provider={self.provider!r})"

    def request_stop(self) -> None:
        """Claim no new request from now on; sends already claimed finish (graceful stop)."""
        if not self.stopping:
            self.stopping = True
            log.info("messages.stop_requested", provider=self.provider)

    async def run(self, run_id: int | None) -> SendCounts:
        """Recover interrupted sends, then send every request pending at the start of the run.

        Requests that return to `pending` in this run (not sent) wait for the next run.
        Raises `Unauthorized`/`Forbidden` after recording that request `failed`, and
        `StateError` when the database fails.
        """
        run = _Run(self, run_id)
        try:
            return await run.execute()
        finally:
            try:
                await asyncio.to_thread(refresh_metrics, self._engine)
            except StateError:
                log.warning("messages.metrics_refresh_failed")


class _Run:
    """One run of a `MessageSender`: its counters, its bound, and why it stopped."""

    def __init__(self, sender: MessageSender, run_id: int | None) -> None:
        self.sender = sender
        self.store = sender._store
        self.client = sender._client
        self.run_id = run_id
        self.counts = SendCounts()
        self.slots = asyncio.Semaphore(sender._concurrency)
        self.stop: BaseException | None = None

    async def execute(self) -> SendCounts:
        recovered = await asyncio.to_thread(self.store.recover_interrupted, self.run_id)
        self.counts.recovered = len(recovered)
        if recovered:
            log.warning("messages.interrupted_sends_unknown", count=len(recovered))
        after: Cursor | None = None
        while self.stop is None and not self.sender.stopping:
            batch = await asyncio.to_thread(
                self.store.pending_batch, after, self.sender._batch_size
            )
            if not batch:
                break
            after = batch[-1]
            results = await asyncio.gather(
                *(self._send_one(cursor.key) for cursor in batch), return_exceptions=True
            )
            for result in results:
                if isinstance(result, BaseException) and self.stop is None:
                    self.stop = result
        self.counts.stopped = self.sender.stopping
        # DEBUG: the job runner logs the run's one INFO line with these counts.
        log.debug("messages.sent", provider=self.sender.provider, **asdict(self.counts))
        if self.stop is not None:
            raise self.stop
        return self.counts

    async def _send_one(self, key: str) -> None:
        async with self.slots:
            if self.stop is not None or self.sender.stopping:
                # Not claimed: the request stays `pending` for the next run (or start).
                self.counts.skipped += 1
                return
            try:
                await self._claim_send_record(key)
            except BaseException as exc:
                # Stop starting new sends; the ones in flight finish their own sequence.
                if self.stop is None:
                    self.stop = exc
                raise

    async def _claim_send_record(self, key: str) -> None:
        step(STEP_BEFORE_MARK)
        claimed = await asyncio.to_thread(self.store.claim, key, self.run_id)
        if claimed is None:
            self.counts.skipped += 1
            return
        if isinstance(claimed, Refused):
            self.counts.failed += 1
            log.warning("messages.send_refused_locally", key=key)
            return
        step(STEP_AFTER_MARK)
        outcome = await self._send(claimed)
        step(STEP_AFTER_SEND)
        recorded = await self._record(key, outcome)
        step(STEP_AFTER_RECORD)
        if not recorded:  # cannot happen while the job lock holds; never silently
            log.error("messages.result_not_recorded", key=key, outcome=outcome.kind)
            return
        self._count(key, outcome)

    async def _record(self, key: str, outcome: SendOutcome) -> bool:
        """Record the result, retrying a failing database briefly: once the call was made,
        losing its result would turn a known outcome into `unknown` at the next start."""
        async for attempt in stamina.retry_context(
            on=StateError, attempts=RECORD_ATTEMPTS, wait_initial=0.2, wait_max=2.0
        ):
            with attempt:
                return await asyncio.to_thread(self.store.record, key, outcome, self.run_id)
        raise AssertionError("unreachable: stamina re-raises the last failure")

    async def _send(self, claimed: Claimed) -> SendOutcome:
        try:
            message = await self.client.send_message(claimed.body)
        except Exception as exc:
            outcome = classify_failure(exc)
            if outcome.stop_run and self.stop is None:
                self.stop = exc
            return outcome
        return sent(message)

    def _count(self, key: str, outcome: SendOutcome) -> None:
        if outcome.kind == "sent":
            self.counts.sent += 1
            log.debug("messages.request_sent", key=key, message_id=outcome.message_id)
        elif outcome.kind == "failed":
            self.counts.failed += 1
            log.warning("messages.request_failed", key=key, error=outcome.error)
        elif outcome.kind == "unknown":
            self.counts.unknown += 1
            log.error("messages.request_unknown", key=key, error=outcome.error)
        else:
            self.counts.not_sent += 1
            log.info("messages.request_not_sent", key=key, error=outcome.error)
