"""The record of job runs (`job_runs`) and the audit trail (`audit_log`).

A run is written `running` when it starts and gets its outcome, counters and an id-only
error text when it ends. A process that dies mid-run leaves `running` behind;
`interrupt_stale_runs` marks those `interrupted` at the next start-up. `syncd status` and
the health checks read `last_runs` and `last_success`.

Outcomes:
- `ok`: the run did all its work (rows quarantined for their content are work done);
- `partial`: it finished, but some items failed for now and are retried next run;
- `failed`: it raised, lost its lock, or got nothing through (e.g. stopped early in an
  outage); what it had done before is kept;
- `interrupted`: cancelled at shutdown or ended with its process.

A run "succeeded" when it ended `ok` or `partial`: the job is working and makes progress
(what `last_success` and the `/readyz` freshness checks count).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.orm import Session

from syncd.exceptions import StateError
from syncd.state.db import reader
from syncd.state.models import AuditEntry, JobRun

Outcome = Literal["ok", "partial", "failed", "interrupted"]
OUTCOMES: Final = ("ok", "partial", "failed", "interrupted")
# The outcomes of a run that did its work (fully or in part): what freshness counts.
SUCCEEDED: Final = ("ok", "partial")
RUNNING: Final = "running"
_ERROR_MAX = 1024  # job_runs.error
_DETAIL_MAX = 256  # audit_log.detail


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One job run as recorded."""

    id: int
    job: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str  # running | ok | partial | failed | interrupted
    counts: dict[str, int]
    error: str | None


def _utcnow() -> datetime:
    return datetime.now(UTC)


def start_run(engine: Engine, job: str) -> int:
    """Record that `job` started now; returns the run id."""
    with engine.begin() as conn:
        run_id = conn.execute(
            insert(JobRun)
            .values(job=job, started_at=_utcnow(), outcome=RUNNING, counts="{}")
            .returning(JobRun.id)
        ).scalar_one()
    return int(run_id)


def finish_run(
    engine: Engine,
    run_id: int,
    outcome: Outcome,
    counts: Mapping[str, int],
    error: str | None,
) -> None:
    """Record how run `run_id` ended. `error` must hold ids only (it is shown by status)."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}")
    with engine.begin() as conn:
        updated = conn.execute(
            update(JobRun)
            .where(JobRun.id == run_id)
            .values(
                finished_at=_utcnow(),
                outcome=outcome,
                counts=json.dumps({str(k): int(v) for k, v in counts.items()}, sort_keys=True),
                error=error[:_ERROR_MAX] if error is not None else None,
            )
        ).rowcount
    if updated != 1:
        raise StateError(f"no job run with id {run_id}")


def interrupt_stale_runs(engine: Engine, job: str | None = None) -> int:
    """Mark runs still `running` (of `job`, or of every job) as `interrupted`; how many.

    `JobRunner` calls it for one job right after taking that job's lock: holding the lock
    proves no live process runs the job, so a `running` record belongs to a process that
    died. Without `job` (every job) it is only safe when no other daemon shares the database.
    """
    query = update(JobRun).where(JobRun.outcome == RUNNING)
    if job is not None:
        query = query.where(JobRun.job == job)
    with engine.begin() as conn:
        return conn.execute(
            query.values(
                outcome="interrupted", finished_at=_utcnow(), error="process ended mid-run"
            )
        ).rowcount


def last_runs(engine: Engine) -> list[RunSummary]:
    """The latest run of every job that ever ran, ordered by job name."""
    latest = select(func.max(JobRun.id)).group_by(JobRun.job).scalar_subquery()
    query = select(JobRun).where(JobRun.id.in_(latest)).order_by(JobRun.job)
    with Session(reader(engine)) as session:
        return [_summary(run) for run in session.scalars(query)]


def recent_runs(engine: Engine, per_job: int = 5) -> dict[str, list[RunSummary]]:
    """The latest `per_job` runs of every job that ever ran, newest first, by job name
    (one indexed read per job: `ix_job_runs_job_started`)."""
    with Session(reader(engine)) as session:
        jobs = sorted(session.scalars(select(JobRun.job).distinct()))
        return {
            job: [
                _summary(run)
                for run in session.scalars(
                    select(JobRun)
                    .where(JobRun.job == job)
                    .order_by(JobRun.started_at.desc(), JobRun.id.desc())
                    .limit(per_job)
                )
            ]
            for job in jobs
        }


def last_success(engine: Engine, job: str) -> datetime | None:
    """When `job` last finished `ok` or `partial`, or None if it never did."""
    query = select(func.max(JobRun.finished_at)).where(
        JobRun.job == job, JobRun.outcome.in_(SUCCEEDED)
    )
    with reader(engine).connect() as conn:
        return conn.execute(query).scalar_one_or_none()


def last_successes(engine: Engine) -> dict[str, datetime]:
    """When each job that ever succeeded last finished `ok` or `partial`, by job name."""
    query = (
        select(JobRun.job, func.max(JobRun.finished_at))
        .where(JobRun.outcome.in_(SUCCEEDED))
        .group_by(JobRun.job)
    )
    with reader(engine).connect() as conn:
        rows = conn.execute(query).all()
    return {str(job): moment for job, moment in rows if moment is not None}


def _summary(run: JobRun) -> RunSummary:
    return RunSummary(
        id=run.id,
        job=run.job,
        started_at=run.started_at,
        finished_at=run.finished_at,
        outcome=run.outcome,
        counts={str(k): int(v) for k, v in json.loads(run.counts or "{}").items()},
        error=run.error,
    )


def audit(
    session: Session,
    actor: str,
    run_id: int | None,
    action: str,
    object_type: str,
    object_id: str,
    detail: str | None = None,
) -> AuditEntry:
    """Add an audit entry in the caller's transaction (committed with the change it records).

    Ids and counts only: `object_id` is e.g. a providerId or submission id, never a name.
    """
    entry = AuditEntry(
        at=_utcnow(),
        actor=actor,
        run_id=run_id,
        action=action,
        object_type=object_type,
        object_id=object_id,
        detail=detail[:_DETAIL_MAX] if detail is not None else None,
    )
    session.add(entry)
    return entry


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit entry to write with `audit_many` (ids and counts only, as for `audit`)."""

    action: str
    object_type: str
    object_id: str
    detail: str | None = None


def audit_many(
    bind: Session | Connection,
    actor: str,
    run_id: int | None,
    records: Iterable[AuditRecord],
    *,
    at: datetime | None = None,
) -> int:
    """Insert many audit entries with one executemany in the caller's transaction; how many.

    The batch form of `audit` for jobs that record hundreds of outcomes per commit: one
    statement instead of one ORM object (and one flush step) per entry.
    """
    moment = at or _utcnow()
    rows = [
        {
            "at": moment,
            "actor": actor,
            "run_id": run_id,
            "action": record.action,
            "object_type": record.object_type,
            "object_id": record.object_id,
            "detail": record.detail[:_DETAIL_MAX] if record.detail is not None else None,
        }
        for record in records
    ]
    if rows:
        bind.execute(insert(AuditEntry.__table__), rows)  # type: ignore[arg-type]
    return len(rows)
