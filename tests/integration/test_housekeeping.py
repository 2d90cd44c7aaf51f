"""Job `housekeeping`: old job runs are deleted, but never a job's latest run or latest
success (what `syncd status`, `/readyz` and the last-success metric read). Real state
databases, SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from syncd.housekeeping import HousekeepingJob, prune_runs
from syncd.state.models import AuditEntry, JobRun
from syncd.state.runs import last_runs, last_successes

NOW = datetime.now(UTC)


def add_run(engine: Engine, job: str, outcome: str, days_ago: float) -> int:
    finished = NOW - timedelta(days=days_ago)
    with Session(engine) as session, session.begin():
        run = JobRun(
            job=job,
            started_at=finished - timedelta(seconds=1),
            finished_at=None if outcome == "running" else finished,
            outcome=outcome,
        )
        session.add(run)
        session.flush()
        return run.id


def run_ids(engine: Engine) -> set[int]:
    with Session(engine) as session:
        return set(session.scalars(select(JobRun.id)))


def test_old_runs_go_but_each_jobs_latest_run_and_latest_success_stay(
    state_engine: Engine,
) -> None:
    old_ok = [add_run(state_engine, "push_patients", "ok", 90 - n) for n in range(5)]
    old_failed = add_run(state_engine, "push_patients", "failed", 60)
    recent = add_run(state_engine, "push_patients", "ok", 1)
    # A job whose last success is old and whose runs fail since: both stay.
    stale_success = add_run(state_engine, "deliver_outbox", "ok", 80)
    old_failures = [add_run(state_engine, "deliver_outbox", "failed", 70 - n) for n in range(3)]
    before = (last_runs(state_engine), last_successes(state_engine))

    pruned = prune_runs(state_engine, 30, now=NOW, chunk_size=2)  # several chunks

    assert pruned == len(old_ok) + 1 + len(old_failures) - 1
    assert run_ids(state_engine) == {recent, stale_success, old_failures[-1]}
    assert old_failed not in run_ids(state_engine)
    assert (last_runs(state_engine), last_successes(state_engine)) == before
    with Session(state_engine) as session:
        audits = session.scalars(select(AuditEntry).where(AuditEntry.action == "job_runs.pruned"))
        assert sum(int(a.detail.split()[0].split("=")[1]) for a in audits if a.detail) == pruned


async def test_the_job_prunes_runs_and_leaves_the_outbox_alone_when_a_sink_does(
    state_engine: Engine,
) -> None:
    add_run(state_engine, "send_messages", "ok", 40)
    keep = add_run(state_engine, "send_messages", "ok", 2)
    job = HousekeepingJob(state_engine, run_history_days=30, outbox_retention_days=None)
    counts = await job.run(None)
    assert (counts.runs_pruned, counts.events_pruned) == (1, 0)
    assert run_ids(state_engine) == {keep}
    assert (await job.run(None)).runs_pruned == 0  # nothing left to prune
