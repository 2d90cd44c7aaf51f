"""The apply job: pending inbound HL7 messages → the patient mirror and Voxares.

Per batch (up to `batch_size` pending messages, in arrival order):

1. Each message is mapped (`mapping.py`). A message that is not an ADT event we apply is
   `ignored` (counted). Each patient the batch mentions keeps only its LAST row: ADT
   messages carry the patient's whole current PID, so applying them in order ends where
   the last one ends. A batch is cut before a message about a patient that an earlier
   A40 of the batch merged away (it must see the merge first); the rest waits for the
   next batch.
2. Each patient's row goes through the CSV source's path: `plan_row` (raw hash → skip;
   `syncd.normalize` → quarantine naming the field, or a payload whose hash decides the
   push), then POST /patients for the changed ones, concurrently.
3. One transaction records the mirror rows and quarantine entries (`PushStore.commit`),
   the merges (mirror state `merged`, `merged_into`, and a `patient.merged` outbox event)
   and each message's new status. A crash before it loses nothing: the messages are
   still pending and are applied again (the upsert is idempotent).

A patient whose push failed (5xx, connection) keeps ALL its messages of the batch
pending, and the run stops after the batch: later messages for that patient must not be
applied before it. An incremental feed is never a complete read: nothing is marked
inactive.

Voxares has no merge: the surviving patient is pushed, and the merged one is only marked
here and announced downstream; its Voxares patient stays as it was (not deleted, its
forms not moved). What to do with it is left to whoever consumes `patient.merged`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Final, Literal, TypeVar
from typing import cast as typing_cast

import structlog
from sqlalchemy import Connection, Engine, Table, bindparam, select, update

from syncd import metrics
from syncd.exceptions import StateError, VoxaresError
from syncd.hashing import canonical_json
from syncd.hl7 import inbound
from syncd.hl7.inbound import Finished, PendingMessage
from syncd.hl7.mapping import Hl7Mapping, Merge, PatientData, map_message
from syncd.hl7.message import MessageRejected, decode
from syncd.normalize import NormalizePolicy
from syncd.outbox.events import NewEvent, emit_many
from syncd.patients import api_errors
from syncd.patients.payload import normalise, upsert_body
from syncd.patients.plan import Normalized, Push, Quarantine, Rejected, Unchanged, plan_row, row_key
from syncd.patients.store import BatchWrites, PushedRow, PushStore, QuarantineWrite
from syncd.sources.base import SourceRow
from syncd.state.models import PatientMirror
from syncd.testing_hooks import step
from syncd.voxares.client import VoxaresClient
from syncd.voxares.models import PatientUpsert, UpsertResult

log = structlog.get_logger(__name__)

JOB_NAME: Final = "apply_hl7"
MERGED_EVENT: Final = "patient.merged"
_MIRROR = typing_cast(Table, PatientMirror.__table__)
_MAX_BATCHES_PER_RUN: Final = 100

T = TypeVar("T")


@dataclass(slots=True)
class ApplyCounts:
    """What one run did: messages by outcome, and patients by push result."""

    messages: int = 0
    applied: int = 0
    ignored: int = 0
    quarantined: int = 0
    rejected: int = 0
    merged: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    left_pending: int = 0

    @property
    def idle(self) -> bool:
        """Nothing was pending."""
        return self.messages == 0

    @property
    def outcome(self) -> Literal["ok", "partial", "failed"]:
        if self.failed == 0:
            return "ok"
        return "partial" if self.created + self.updated > 0 else "failed"

    @property
    def problem(self) -> str | None:
        if not self.failed:
            return None
        return (
            f"{self.failed} patient pushes failed; {self.left_pending} messages stay pending "
            "(applied next run, in order)"
        )


@dataclass(slots=True)
class _Message:
    """One pending message and what the batch decided for it."""

    id: int
    keys: list[str] = field(default_factory=list)
    merges: list[Merge] = field(default_factory=list)
    status: inbound.Status = "applied"
    reason: str | None = None


@dataclass(slots=True)
class _Batch:
    messages: list[_Message]
    rows: dict[str, SourceRow]  # patient key → its last row in the batch
    writes: BatchWrites = field(default_factory=BatchWrites)
    pushes: dict[str, tuple[Push, PatientUpsert, SourceRow]] = field(default_factory=dict)
    quarantined: dict[str, str] = field(default_factory=dict)  # key → reason
    unchanged: int = 0
    loaded: int = 0
    cut: bool = False  # messages after a merge were left for the next batch
    failed_messages: list[_Message] = field(default_factory=list)


class Hl7Apply:
    """The apply job (see the module docstring)."""

    name = JOB_NAME

    def __init__(
        self,
        engine: Engine,
        client: VoxaresClient,
        policy: NormalizePolicy,
        mapping: Hl7Mapping,
        *,
        provider: str,
        source: str = "hl7",
        batch_size: int = 500,
        default_charset: str = "utf-8",
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._engine = engine
        self._client = client
        self._normalise: Callable[[SourceRow], Normalized | Rejected] = partial(
            normalise, policy=policy
        )
        self._mapping = mapping
        self._provider = provider
        self._source = source
        self._batch_size = batch_size
        self._charset = default_charset

    def __repr__(self) -> str:
        return f"Hl7Apply(provider={self._provider!r})"

    async def run(self, run_id: int) -> ApplyCounts:
        """Apply pending messages until none is left or a push fails."""
        counts = ApplyCounts()
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hl7-apply")
        loop = asyncio.get_running_loop()

        async def in_worker(fn: Callable[..., T], *args: Any) -> T:
            return await loop.run_in_executor(worker, fn, *args)

        store: PushStore | None = None
        batches = 0
        try:
            store = await in_worker(
                lambda: PushStore.open(
                    self._engine, provider=self._provider, source=self._source, run_id=run_id
                )
            )
            while True:
                batch = await in_worker(self._decide, store)
                if batch is None:
                    break
                results = await self._push(batch)
                failed = await in_worker(self._record, store, batch, results)
                step("hl7.apply_after_commit")
                self._count(counts, batch, results, failed)
                batches += 1
                # Keep draining while messages keep arriving (a new run per small batch
                # would pay the lock and run record each time), but end the run after
                # `_MAX_BATCHES_PER_RUN` so that its record says something.
                if failed or batches >= _MAX_BATCHES_PER_RUN:
                    break
        finally:
            if store is not None:
                await in_worker(store.close)
            worker.shutdown(wait=False)
        if not counts.idle:
            log.debug("hl7.applied", **{k: getattr(counts, k) for k in ("messages", "applied")})
        return counts

    # --- worker thread ---------------------------------------------------------------

    def _decide(self, store: PushStore) -> _Batch | None:
        """Load the next pending messages, map them, and plan each patient's last row."""
        try:
            with self._engine.connect() as conn:
                loaded = inbound.pending(conn, self._batch_size)
        except Exception as exc:
            raise StateError(f"hl7: cannot read pending messages ({type(exc).__name__})") from None
        if not loaded:
            return None
        messages, rows, cut = self._map(loaded)
        batch = _Batch(messages, rows, loaded=len(loaded), cut=cut)
        states = store.lookup([(key, 0, row.line) for key, row in rows.items()])
        for key, row in rows.items():
            state = states[key]
            decision = plan_row(row, state.mirror, state.quarantined, self._normalise)
            if isinstance(decision, Unchanged):
                batch.unchanged += 1
                batch.writes.keep_unchanged(key, row.raw_hash, decision)
            elif isinstance(decision, Quarantine):
                batch.writes.quarantined.append(
                    QuarantineWrite(key, row.line, decision.field, decision.reason, row.raw_hash)
                )
                batch.quarantined[key] = decision.reason
                if not decision.known:
                    log.info(
                        "patients.quarantined", row_key=key, message=row.line, field=decision.field
                    )
            else:
                batch.pushes[key] = (decision, upsert_body(decision.payload, self._provider), row)
        return batch

    def _map(
        self, loaded: list[PendingMessage]
    ) -> tuple[list[_Message], dict[str, SourceRow], bool]:
        """Map messages in order, each patient keeping its last row; cut the batch before
        a message about a patient merged away earlier in it."""
        messages: list[_Message] = []
        rows: dict[str, SourceRow] = {}
        merged_away: set[str] = set()
        for pending in loaded:
            message = _Message(pending.id)
            try:
                decoded = decode(pending.raw, default_charset=self._charset)
            except MessageRejected as rejected:
                message.status, message.reason = "rejected", f"{rejected.code}: {rejected.reason}"
                messages.append(message)
                continue
            mapped = map_message(decoded, self._mapping, line=pending.id)
            if mapped.ignored is not None:
                message.status, message.reason = "ignored", mapped.ignored.reason
                messages.append(message)
                continue
            keys: list[str] = []
            for action in mapped.actions:
                row = action.row if isinstance(action, PatientData) else action.surviving
                keys.append(row_key(row))
            if merged_away.intersection(keys):
                # This and later messages: next batch, after the merge is recorded.
                return messages, rows, True
            for action in mapped.actions:
                row = action.row if isinstance(action, PatientData) else action.surviving
                rows[row_key(row)] = row
                if isinstance(action, Merge):
                    message.merges.append(action)
                    if action.merged_id is not None:
                        merged_away.add(action.merged_id)
                    else:
                        message.status = "quarantined"
                        message.reason = "MRG-1: no prior identifier matches the mapping"
            message.keys = keys
            messages.append(message)
        return messages, rows, False

    def _record(
        self,
        store: PushStore,
        batch: _Batch,
        results: dict[str, UpsertResult | api_errors.Outcome],
    ) -> set[str]:
        """Commit the batch: mirror, quarantine, merges, events, message statuses.
        Returns the keys whose push failed (their messages stay pending)."""
        writes = batch.writes
        failed: set[str] = set()
        for key, result in results.items():
            push, upsert, row = batch.pushes[key]
            if isinstance(result, UpsertResult):
                body = canonical_json(upsert.to_body()).decode("utf-8")
                writes.pushed.append(
                    PushedRow(
                        key,
                        result.patient.id,
                        push.payload_hash,
                        row.raw_hash,
                        body,
                        result.created,
                    )
                )
                writes.cleared.append(key)
            elif isinstance(result, api_errors.RejectedByApi):
                writes.quarantined.append(
                    QuarantineWrite(key, row.line, result.field, result.reason, row.raw_hash)
                )
                batch.quarantined[key] = result.reason
            else:
                failed.add(key)
        outcomes: list[Finished] = []
        merges: list[Merge] = []
        for message in batch.messages:
            if failed.intersection(message.keys):
                continue  # stays pending
            reason = message.reason
            status = message.status
            for key in message.keys:
                if key in batch.quarantined and status == "applied":
                    status, reason = "quarantined", batch.quarantined[key]
            outcomes.append(Finished(message.id, status, reason))
            merges.extend(message.merges)
        pushed_keys = [row.key for row in writes.pushed]
        now = datetime.now(UTC)

        def also(conn: Connection) -> None:
            self._unmerge(conn, pushed_keys)
            self._merge(conn, merges, now)
            inbound.finish(conn, outcomes, now=now)

        store.commit(writes, also=also)
        batch.failed_messages = [m for m in batch.messages if failed.intersection(m.keys)]
        batch.messages = [m for m in batch.messages if not failed.intersection(m.keys)]
        for outcome in outcomes:
            metrics.HL7_MESSAGES.labels(outcome.status).inc()
        return failed

    def _unmerge(self, conn: Connection, keys: list[str]) -> None:
        """A merged id the EHR sends again is a patient again (its state is active)."""
        if not keys:
            return
        m = _MIRROR.c
        conn.execute(
            update(_MIRROR)
            .where(
                m.provider == self._provider,
                m.provider_id.in_(keys),
                m.merged_into.is_not(None),
            )
            .values(merged_into=None)
        )

    def _merge(self, conn: Connection, merges: list[Merge], now: datetime) -> None:
        """Mark each merged id in the mirror and announce it with a `patient.merged` event."""
        done = [(row_key(m.surviving), m.merged_id) for m in merges if m.merged_id is not None]
        done = [(surviving, merged) for surviving, merged in done if merged != surviving]
        if not done:
            return
        m = _MIRROR.c
        ids = {key for pair in done for key in pair}
        voxares = dict(
            conn.execute(
                select(m.provider_id, m.voxares_patient_id).where(
                    m.provider == self._provider, m.provider_id.in_(ids)
                )
            ).all()
        )
        conn.execute(
            update(_MIRROR)
            .where(m.provider == self._provider, m.provider_id == bindparam("merged"))
            .values(state="merged", merged_into=bindparam("surviving")),
            [{"merged": merged, "surviving": surviving} for surviving, merged in done],
        )
        emit_many(
            conn,
            [
                NewEvent(
                    MERGED_EVENT,
                    canonical_json(
                        {
                            "provider": self._provider,
                            "providerId": surviving,
                            "voxaresPatientId": voxares.get(surviving),
                            "mergedProviderId": merged,
                            "mergedVoxaresPatientId": voxares.get(merged),
                        }
                    ),
                    ordering_key=surviving,
                )
                for surviving, merged in done
            ],
            at=now,
        )
        for surviving, merged in done:
            log.info("hl7.merged", provider_id=surviving, merged_provider_id=merged)

    # --- event loop ------------------------------------------------------------------

    async def _push(self, batch: _Batch) -> dict[str, UpsertResult | api_errors.Outcome]:
        """Upsert each changed patient, concurrently (the client enforces its limits)."""
        keys = list(batch.pushes)
        # Every push is awaited to its end (none left running unobserved); a 401/403 is
        # raised after, and nothing of the batch is recorded: its messages stay pending.
        results = await asyncio.gather(
            *(self._push_one(batch, key) for key in keys), return_exceptions=True
        )
        outcomes: dict[str, UpsertResult | api_errors.Outcome] = {}
        for key, result in zip(keys, results, strict=True):
            if isinstance(result, BaseException):
                raise result
            outcomes[key] = result
        return outcomes

    async def _push_one(self, batch: _Batch, key: str) -> UpsertResult | api_errors.Outcome:
        push, upsert, _ = batch.pushes[key]
        try:
            result = await self._client.upsert_patient(upsert)
        except VoxaresError as exc:
            outcome = api_errors.classify(exc, push.payload)
            if isinstance(outcome, api_errors.Abort):
                raise
            return outcome
        step("hl7.apply_after_http")
        return result

    def _count(
        self,
        counts: ApplyCounts,
        batch: _Batch,
        results: dict[str, UpsertResult | api_errors.Outcome],
        failed: set[str],
    ) -> None:
        counts.messages += len(batch.messages)
        for message in batch.messages:
            if message.status == "applied" and message.reason is None:
                quarantined = any(k in batch.quarantined for k in message.keys)
                if quarantined:
                    counts.quarantined += 1
                else:
                    counts.applied += 1
            elif message.status == "quarantined":
                counts.quarantined += 1
            elif message.status == "ignored":
                counts.ignored += 1
            elif message.status == "rejected":
                counts.rejected += 1
            counts.merged += sum(1 for m in message.merges if m.merged_id is not None)
        counts.unchanged += batch.unchanged
        for result in results.values():
            if isinstance(result, UpsertResult):
                if result.created:
                    counts.created += 1
                else:
                    counts.updated += 1
        counts.failed += len(failed)
        counts.left_pending += len(batch.failed_messages)
