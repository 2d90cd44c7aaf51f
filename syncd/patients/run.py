"""One run of the patient push job: its worker thread, its batches and their pushes.

Per batch of `batch_size` rows: one query loads the batch's mirror and quarantine entries,
`plan.plan_row` decides each row, the `Push` rows are upserted concurrently (the client
enforces the rate and concurrency limits), and one transaction records the batch.

Threads: everything blocking (reading the source, normalising, the database) runs in one
worker thread, on one database connection; the event loop only does HTTP. While batch N is
being pushed, the worker reads and decides batch N+1, and its pushes start as soon as it is
ready, so the client's concurrency stays full across batch boundaries. At most two batches
are in flight, which keeps memory flat in the size of the source. The worker reads the
source one batch ahead, during each batch's lookup (on PostgreSQL the server works on the
lookup meanwhile: `PushStore.lookup_unsettled`).

Outage: after `outage_after` consecutive pushes failed with a 5xx or a connection error
(each already retried by the client), the run stops early instead of retrying every
remaining row in full: pushes in flight are cancelled, what succeeded is recorded, the rest
of the source is not read, nothing is marked inactive, and the run ends `failed` with
`stopped_early` set. Rows not tried keep their mirror state and are pushed by the next run.

Cursors: a source that reads incrementally (FHIR `_lastUpdated`) hands its read an
`on_pushed` callback; the run calls it only after every batch was recorded with no failed or
cancelled push (not in a dry run, not after an outage stop), so a cursor never gets ahead
of the rows it covers. Rows the source says are inactive (`SourceRow.active`) are marked
inactive in the mirror in their batch's transaction.

Crash safety: a patient is recorded in the mirror only after Voxares accepted it, in the
batch's transaction. A crash between the two loses only the record: the next run finds no
(or an older) mirror row and pushes the row again, which is harmless because
`POST /patients` is an upsert keyed by (provider, providerId).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Final, TypeVar

import structlog
from sqlalchemy import Engine

from syncd import metrics
from syncd.exceptions import VoxaresError
from syncd.hashing import canonical_json
from syncd.patients import api_errors
from syncd.patients.counts import PushCounts
from syncd.patients.outage import OutageDetector
from syncd.patients.plan import (
    Normalized,
    Push,
    Quarantine,
    Rejected,
    Unchanged,
    duplicate_key,
    plan_duplicate,
    plan_row,
    row_key,
)
from syncd.patients.store import BatchWrites, PushedRow, PushStore, QuarantineWrite
from syncd.sources.base import Source, SourceRead, SourceRow
from syncd.testing_hooks import step
from syncd.voxares.client import VoxaresClient
from syncd.voxares.models import PatientUpsert, UpsertResult

log = structlog.get_logger(__name__)

# Batches pushed at the same time: one finishing while the next one starts.
_IN_FLIGHT_BATCHES: Final = 2

T = TypeVar("T")


@dataclass(frozen=True, slots=True, repr=False)
class PushSetup:
    """What a run needs of its job (`PatientPush`), which checked it: where to read and
    write, how to decide a row (`normalise`) and what to send for it (`upsert_body`)."""

    engine: Engine
    client: VoxaresClient
    source: Source
    provider: str
    batch_size: int
    mark_missing_inactive: bool
    outage_after: int
    normalise: Callable[[SourceRow], Normalized | Rejected]
    upsert_body: Callable[[Mapping[str, Any]], PatientUpsert]


@dataclass(frozen=True, slots=True)
class _Pending:
    """A row to push: its key, line and raw hash, what to send, and what the plan decided."""

    key: str
    line: int
    row_hash: str
    push: Push
    upsert: PatientUpsert

    def __repr__(self) -> str:
        return f"_Pending(key={self.key!r}, line={self.line!r})"


@dataclass(slots=True)
class _Batch:
    """One decided batch: its pushes, its already-known writes and its counts so far."""

    rows: int
    pending: list[_Pending]
    writes: BatchWrites
    unchanged: int = 0
    quarantined: int = 0
    duplicates: int = 0
    would_create: int = 0
    would_update: int = 0
    would_drop: dict[str, int] = field(default_factory=dict)  # dropped_phone -> rows
    tasks: list[asyncio.Task[UpsertResult | api_errors.Outcome]] = field(default_factory=list)


class PushRun:
    """The state of one `PatientPush.run`: its worker thread, store and counters."""

    def __init__(
        self,
        setup: PushSetup,
        run_id: int,
        *,
        dry_run: bool,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.setup = setup
        self.run_id = run_id
        self.dry_run = dry_run
        self.progress = progress
        self.counts = PushCounts()
        self.done_rows = 0
        self.seq = 0  # run ordinal of the next row read
        self.store: PushStore | None = None
        self.read: SourceRead | None = None
        self.rows: Iterator[SourceRow] | None = None
        # The next batch (rows, run ordinal of the first), read during the lookup of one,
        # or the error reading it raised (see `take_batch`).
        self.ahead: tuple[list[SourceRow], int] | None = None
        self.ahead_error: Exception | None = None
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="patients-push")
        self.outage = OutageDetector(setup.outage_after)
        self.pushing: set[asyncio.Task[UpsertResult | api_errors.Outcome]] = set()
        # A batch's pushes are all created at once but wait here, before doing any work, so
        # that only a few more than the client runs at a time have started. Otherwise each
        # of a batch's 1,000 tasks runs its first step (request body, client bookkeeping) in
        # one loop iteration and then waits for seconds holding what it built, which the
        # garbage collector promotes and later sweeps in long full collections.
        self.started = asyncio.Semaphore(2 * setup.client.max_concurrency)

    async def in_worker(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` in the run's one worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)

    async def execute(self) -> PushCounts:
        in_flight: deque[_Batch] = deque()
        deciding: asyncio.Future[_Batch | None] | None = None
        try:
            await self.in_worker(self.open)
            deciding = asyncio.ensure_future(self.in_worker(self.decide_next))
            while True:
                batch = await deciding
                deciding = None
                if batch is None or self.counts.stopped_early:
                    break  # a batch decided after an outage stop is left to the next run
                self.start_pushes(batch)
                in_flight.append(batch)
                deciding = asyncio.ensure_future(self.in_worker(self.decide_next))
                if len(in_flight) >= _IN_FLIGHT_BATCHES:
                    await self.finish(in_flight.popleft(), in_flight)
            while in_flight:
                await self.finish(in_flight.popleft(), in_flight)
            # Only here has the whole source been read with no abort, if the source agrees.
            if not self.dry_run and not self.counts.stopped_early:
                if getattr(self.read, "complete", False) is True:
                    self.counts.inactivated = await self.in_worker(self.finish_complete)
                elif getattr(self.read, "incremental", False) is not True:
                    log.warning("patients.read_incomplete", source=self.setup.source.name)
                if self.counts.failed == 0 and self.counts.not_pushed == 0:
                    await self.in_worker(self.read_pushed)
            return self.counts
        finally:
            await self.shutdown(in_flight, deciding)

    # --- worker thread -------------------------------------------------------------------

    def open(self) -> None:
        setup = self.setup
        self.store = PushStore.open(
            setup.engine, provider=setup.provider, source=setup.source.name, run_id=self.run_id
        )
        self.read = setup.source.rows()
        self.rows = iter(self.read)

    def decide_next(self) -> _Batch | None:
        """Read the next batch from the source and decide each row (None at the end)."""
        assert self.store is not None
        assert self.rows is not None
        rows, first_seq = self.take_batch()
        if not rows:
            return None
        keys = [row_key(row) for row in rows]
        firsts: dict[str, tuple[str, int, int, str]] = {}
        for offset, (key, row) in enumerate(zip(keys, rows, strict=True)):
            if key not in firsts:
                firsts[key] = (key, first_seq + offset, row.line, row.raw_hash)
        # Only the keys that need a decision come back: a re-sync of an unchanged export
        # gets (almost) nothing, and its rows cost a dictionary miss each.
        states = self.store.lookup_unsettled(list(firsts.values()), self.read_ahead)

        batch = _Batch(rows=len(rows), pending=[], writes=BatchWrites())
        repeats: list[tuple[str, SourceRow, int]] = []
        for offset, (key, row) in enumerate(zip(keys, rows, strict=True)):
            state = states.get(key)
            if state is None:
                _, seq, line, _ = firsts[key]
                if seq != first_seq + offset:
                    repeats.append((key, row, line))  # a repeat of a key of this batch
                    continue
                # First in the run, the mirror holds this raw row, nothing quarantined:
                # what `plan_row` decides as a plain `Unchanged()`.
                batch.unchanged += 1
                if not row.active:
                    batch.writes.inactive.append(key)
                continue
            if state.first_seq != first_seq + offset:
                repeats.append((key, row, state.first_line))
                continue
            decision = plan_row(row, state.mirror, state.quarantined, self.setup.normalise)
            if not row.active and not isinstance(decision, Quarantine):
                batch.writes.inactive.append(key)
            if isinstance(decision, Unchanged):
                batch.unchanged += 1
                batch.writes.keep_unchanged(key, row.raw_hash, decision)
            elif isinstance(decision, Quarantine):
                batch.quarantined += 1
                self.quarantine(batch, key, row.line, decision)
            else:
                if decision.is_new:
                    batch.would_create += 1
                else:
                    batch.would_update += 1
                if decision.dropped_phone is not None:
                    drops = batch.would_drop
                    drops[decision.dropped_phone] = drops.get(decision.dropped_phone, 0) + 1
                if not self.dry_run:
                    body = self.setup.upsert_body(decision.payload)
                    batch.pending.append(_Pending(key, row.line, row.raw_hash, decision, body))
        if repeats:
            own_keys = [duplicate_key(key, row) for key, row, _ in repeats]
            known = self.store.quarantine_entries(own_keys)
            for own_key, (_, row, first_line) in zip(own_keys, repeats, strict=True):
                decision = plan_duplicate(row, first_line, known.get(own_key))
                batch.duplicates += 1
                self.quarantine(batch, own_key, row.line, decision)
        return batch

    def take_batch(self) -> tuple[list[SourceRow], int]:
        """The next batch's rows and the run ordinal of its first: the batch read ahead, or
        read now. An error met reading ahead is raised here, where reading would have met it
        without the read-ahead (after the batches before it were decided)."""
        error, self.ahead_error = self.ahead_error, None
        if error is not None:
            raise error
        if self.ahead is not None:
            ahead, self.ahead = self.ahead, None
            return ahead
        assert self.rows is not None
        rows = list(islice(self.rows, self.setup.batch_size))
        first_seq = self.seq
        self.seq += len(rows)
        return rows, first_seq

    def read_ahead(self) -> None:
        """Read the next batch while the database looks this one up (PostgreSQL works on
        the lookup meanwhile, in its own process: `PushStore.lookup_unsettled`)."""
        try:
            self.ahead = self.take_batch()
        except Exception as exc:  # raised by the next `take_batch`, see there
            self.ahead_error = exc

    def quarantine(self, batch: _Batch, key: str, line: int, decision: Quarantine) -> None:
        """Queue a quarantine entry (and log it unless it is already known)."""
        batch.writes.quarantined.append(
            QuarantineWrite(key, line, decision.field, decision.reason, decision.row_hash)
        )
        if self.dry_run:
            self.counts.quarantined_rows.append((key, decision.field, decision.reason))
        if not decision.known:
            log.info("patients.quarantined", row_key=key, line=line, field=decision.field)

    def record(self, batch: _Batch, results: list[UpsertResult | api_errors.Outcome]) -> None:
        """Turn the batch's push results into writes and commit them in one transaction."""
        assert self.store is not None
        writes = batch.writes
        for pending, result in zip(batch.pending, results, strict=True):
            if isinstance(result, UpsertResult):
                body = canonical_json(pending.upsert.to_body()).decode("utf-8")
                writes.pushed.append(
                    PushedRow(
                        pending.key,
                        result.patient.id,
                        pending.push.payload_hash,
                        pending.row_hash,
                        body,
                        result.created,
                    )
                )
                writes.cleared.append(pending.key)
            elif isinstance(result, api_errors.RejectedByApi):
                writes.quarantined.append(
                    QuarantineWrite(
                        pending.key, pending.line, result.field, result.reason, pending.row_hash
                    )
                )
        self.store.commit(writes)

    def finish_complete(self) -> int:
        assert self.store is not None
        return self.store.finish_complete_run(mark_inactive=self.setup.mark_missing_inactive)

    def read_pushed(self) -> None:
        """Tell the read that every row it gave was pushed or recorded (its cursor moves)."""
        on_pushed = getattr(self.read, "on_pushed", None)
        if on_pushed is not None:
            on_pushed()

    def close(self) -> None:
        if self.read is not None:
            close = getattr(self.read, "close", None)
            if close is not None:
                close()
        if self.store is not None:
            self.store.close()

    # --- event loop ----------------------------------------------------------------------

    def start_pushes(self, batch: _Batch) -> None:
        batch.tasks = [asyncio.create_task(self.push_one(p)) for p in batch.pending]
        self.pushing.update(batch.tasks)
        for task in batch.tasks:
            task.add_done_callback(self.pushing.discard)

    async def push_one(self, pending: _Pending) -> UpsertResult | api_errors.Outcome:
        """Upsert one patient. 401/403 raise (the run stops); other errors become outcomes."""
        try:
            async with self.started:
                result = await self.setup.client.upsert_patient(pending.upsert)
        except VoxaresError as exc:
            outcome = api_errors.classify(exc, pending.push.payload)
            if isinstance(outcome, api_errors.Abort):
                raise
            self.observe(outage_like=isinstance(outcome, api_errors.Failed) and outcome.outage)
            return outcome
        self.observe(outage_like=False)
        step("push.after_http")
        return result

    def observe(self, *, outage_like: bool) -> None:
        """Count one answer towards (or against) an outage; stop the run when it is one."""
        if not self.outage.observe(outage_like=outage_like):
            return
        self.counts.stopped_early = True
        # Every other push in flight or waiting is cancelled (an upsert cancelled mid-air is
        # harmless: its row keeps its mirror state and is pushed again next run). Not this
        # one: it is returning its own answer.
        current = asyncio.current_task()
        cancelled = [t for t in self.pushing if t is not current and not t.done()]
        for task in cancelled:
            task.cancel()
        log.warning(
            "patients.push_stopped_outage",
            consecutive_failures=self.outage.consecutive,
            cancelled=len(cancelled),
        )

    async def finish(self, batch: _Batch, others: deque[_Batch]) -> None:
        """Wait for a batch's pushes, record them, count them.

        On a 401/403 the batch's other pushes and the other batches' are cancelled, what
        already succeeded is still recorded, and the error is raised.
        """
        abort: BaseException | None = None
        if batch.tasks:
            await asyncio.wait(batch.tasks, return_when=asyncio.FIRST_EXCEPTION)
            abort = _first_error(batch.tasks)
            if abort is not None:
                for other in (batch, *others):
                    for task in other.tasks:
                        task.cancel()
                await asyncio.wait(batch.tasks)
        results: list[UpsertResult | api_errors.Outcome] = [
            _result_or_failed(task) for task in batch.tasks
        ]
        if not self.dry_run:
            await self.in_worker(self.record, batch, results)
            step("push.after_batch_commit")
        self.count(batch, results)
        if abort is not None:
            raise abort

    def count(self, batch: _Batch, results: list[UpsertResult | api_errors.Outcome]) -> None:
        counts = self.counts
        created = updated = rejected = failed = not_pushed = 0
        drops = dict(batch.would_drop) if self.dry_run else {}
        if self.dry_run:
            created, updated = batch.would_create, batch.would_update
        for pending, result in zip(batch.pending, results, strict=True):
            if isinstance(result, UpsertResult):
                if result.created:
                    created += 1
                else:
                    updated += 1
                if pending.push.dropped_phone is not None:
                    drops[pending.push.dropped_phone] = drops.get(pending.push.dropped_phone, 0) + 1
            elif isinstance(result, api_errors.RejectedByApi):
                rejected += 1
                log.warning(
                    "patients.rejected_by_api",
                    row_key=pending.key,
                    line=pending.line,
                    field=result.field,
                )
            elif isinstance(result, api_errors.NotPushed):
                not_pushed += 1
            else:
                failed += 1
                error = result.error if isinstance(result, api_errors.Failed) else "aborted"
                log.warning(
                    "patients.push_failed", row_key=pending.key, line=pending.line, error=error
                )
        counts.rows += batch.rows
        counts.created += created
        counts.updated += updated
        counts.unchanged += batch.unchanged
        counts.quarantined += batch.quarantined + rejected
        counts.duplicates += batch.duplicates
        counts.failed += failed
        counts.not_pushed += not_pushed
        counts.landlines_dropped += drops.get("landline", 0)
        counts.invalid_phones_dropped += drops.get("invalid", 0)
        if not self.dry_run:
            metrics.PATIENTS.labels("failed").inc(failed)
            metrics.PATIENTS.labels("created").inc(created)
            metrics.PATIENTS.labels("updated").inc(updated)
            metrics.PATIENTS.labels("unchanged").inc(batch.unchanged)
            metrics.PATIENTS.labels("quarantined").inc(batch.quarantined + rejected)
        self.done_rows += batch.rows
        if self.progress is not None:
            self.progress(self.done_rows)

    async def shutdown(
        self, in_flight: deque[_Batch], deciding: asyncio.Future[_Batch | None] | None
    ) -> None:
        """Cancel what is still running, wait for the worker, close the store and source."""
        tasks = [task for batch in in_flight for task in batch.tasks]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if deciding is not None:
            # The worker finishes the batch it is reading before it can close anything.
            await asyncio.wait([deciding])
            if not deciding.cancelled():
                deciding.exception()  # retrieved: the run already failed for another reason
        try:
            await self.in_worker(self.close)
        finally:
            self.worker.shutdown(wait=False)


def _first_error(tasks: list[asyncio.Task[Any]]) -> BaseException | None:
    """The exception of the first finished task that raised one (not a cancellation)."""
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            return task.exception()
    return None


def _result_or_failed(task: asyncio.Task[UpsertResult | api_errors.Outcome]) -> Any:
    """A finished push's result; a cancelled one was not pushed, an aborted one failed."""
    if task.cancelled():
        return api_errors.NotPushed()
    error = task.exception()
    if error is not None:
        return api_errors.Failed(type(error).__name__)
    return task.result()
