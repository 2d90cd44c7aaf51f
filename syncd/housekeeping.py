"""Job `housekeeping`: keeps the state database from growing without end.

A daemon that runs for years writes a job-run record every few seconds (the delivery job
and the HL7 apply loop run every 5 s: ~17,000 records a day each). Hourly, this job deletes
finished runs older than `database.run_history_days`, keeping each job's latest run and
latest success whatever their age (what `syncd status`, `/readyz` and the
`syncd_job_last_success_timestamp_seconds` metric read).

With no sink configured there is no delivery job, which otherwise applies outbox retention
as it runs; the poller, SMS and content jobs still write events, so this job applies
`outbox.retention_days` to them too.

Crash safety: each chunk of runs is deleted in one transaction with its audit entry, so a
kill (`STEP_DELETED_BEFORE_AUDIT`, `STEP_CHUNK_COMMITTED`) loses nothing but the chunk in
hand, which the next run deletes again; the keep rules are evaluated afresh per chunk.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.orm import Session

from syncd.outbox.retention import prune as prune_outbox
from syncd.state.models import JobRun
from syncd.state.runs import SUCCEEDED, audit
from syncd.testing_hooks import step

JOB_NAME: Final = "housekeeping"
_CHUNK: Final = 5_000  # runs deleted per transaction
# Crash points (`syncd.testing_hooks`): a chunk deleted but not yet audited nor committed,
# and a chunk committed with its audit entry.
STEP_DELETED_BEFORE_AUDIT: Final = "housekeeping.deleted_before_audit"
STEP_CHUNK_COMMITTED: Final = "housekeeping.chunk_committed"


@dataclass(slots=True)
class HousekeepingCounts:
    """What one run deleted."""

    runs_pruned: int = 0
    events_pruned: int = 0


def prune_runs(
    engine: Engine,
    keep_days: float,
    *,
    now: datetime | None = None,
    run_id: int | None = None,
    chunk_size: int = _CHUNK,
) -> int:
    """Delete finished job runs that ended more than `keep_days` ago, in chunks (one
    transaction each), but never a job's latest run or its latest success; how many."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=keep_days)
    latest = select(func.max(JobRun.id)).group_by(JobRun.job)
    latest_success = (
        select(func.max(JobRun.id)).where(JobRun.outcome.in_(SUCCEEDED)).group_by(JobRun.job)
    )
    candidates = (
        select(JobRun.id)
        .where(
            JobRun.finished_at.is_not(None),
            JobRun.finished_at < cutoff,
            JobRun.id.not_in(latest),
            JobRun.id.not_in(latest_success),
        )
        .order_by(JobRun.id)
        .limit(chunk_size)
    )
    deleted = 0
    while True:
        with Session(engine) as session, session.begin():
            ids = list(session.scalars(candidates))
            if ids:
                session.execute(delete(JobRun).where(JobRun.id.in_(ids)))
                deleted += len(ids)
                step(STEP_DELETED_BEFORE_AUDIT)
                audit(
                    session, JOB_NAME, run_id, "job_runs.pruned", "job_runs", "runs",
                    f"runs={len(ids)} first_id={ids[0]} last_id={ids[-1]}",
                )  # fmt: skip
        if ids:
            step(STEP_CHUNK_COMMITTED)
        if len(ids) < chunk_size:
            return deleted


class HousekeepingJob:
    """The `housekeeping` job (see the module docstring)."""

    name = JOB_NAME

    def __init__(
        self, engine: Engine, *, run_history_days: float, outbox_retention_days: float | None
    ) -> None:
        """`outbox_retention_days`: prune the outbox too (when no sink is configured)."""
        self._engine = engine
        self.run_history_days = run_history_days
        self.outbox_retention_days = outbox_retention_days

    async def run(self, run_id: int | None) -> HousekeepingCounts:
        """Delete what the history and retention periods allow."""
        counts = HousekeepingCounts()
        counts.runs_pruned = await asyncio.to_thread(
            prune_runs, self._engine, self.run_history_days, run_id=run_id
        )
        if self.outbox_retention_days is not None:
            counts.events_pruned = await asyncio.to_thread(
                prune_outbox,
                self._engine,
                self.outbox_retention_days,
                actor=self.name,
                run_id=run_id,
                configured=(),
            )
        return counts
