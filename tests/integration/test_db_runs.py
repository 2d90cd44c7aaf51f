"""The job-run record and the audit trail, on both backends."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from syncd.exceptions import StateError
from syncd.state.models import AuditEntry, JobRun
from syncd.state.runs import (
    AuditRecord,
    audit,
    audit_many,
    finish_run,
    interrupt_stale_runs,
    last_runs,
    last_success,
    start_run,
)


@pytest.fixture
def engine(state_engine: Engine) -> Engine:
    """A migrated state database on each backend."""
    return state_engine


def test_run_lifecycle(engine: Engine) -> None:
    """start_run records `running`; finish_run records outcome, counts, error and end time."""
    before = datetime.now(UTC)
    run_id = start_run(engine, "patients")
    (running,) = last_runs(engine)
    assert (running.id, running.job, running.outcome, running.finished_at) == (
        run_id,
        "patients",
        "running",
        None,
    )
    assert running.started_at >= before
    finish_run(engine, run_id, "failed", {"created": 3, "quarantined": 1}, "Unauthorized: 401")
    (done,) = last_runs(engine)
    assert done.outcome == "failed"
    assert done.counts == {"created": 3, "quarantined": 1}
    assert done.error == "Unauthorized: 401"
    assert done.finished_at is not None
    assert done.finished_at >= done.started_at


def test_last_runs_gives_the_latest_run_of_each_job(engine: Engine) -> None:
    """One summary per job, the newest one, ordered by job name."""
    first = start_run(engine, "submissions")
    finish_run(engine, first, "ok", {}, None)
    second = start_run(engine, "submissions")
    other = start_run(engine, "content")
    assert [(r.job, r.id) for r in last_runs(engine)] == [
        ("content", other),
        ("submissions", second),
    ]


def test_last_success_ignores_failures(engine: Engine) -> None:
    """last_success is the end of the newest ok run, None if the job never succeeded."""
    assert last_success(engine, "patients") is None
    ok = start_run(engine, "patients")
    finish_run(engine, ok, "ok", {"unchanged": 10}, None)
    (ok_run,) = last_runs(engine)
    failed = start_run(engine, "patients")
    finish_run(engine, failed, "failed", {}, "ServerError")
    success = last_success(engine, "patients")
    assert success == ok_run.finished_at
    assert success is not None
    assert success.tzinfo == UTC
    assert last_success(engine, "content") is None


def test_last_success_counts_partial_runs(engine: Engine) -> None:
    """A partial run did work and is retried in part: it counts as a success; failed does not."""
    partial = start_run(engine, "patients")
    finish_run(engine, partial, "partial", {"created": 5, "failed": 1}, "1 row failed")
    (partial_run,) = last_runs(engine)
    failed = start_run(engine, "patients")
    finish_run(engine, failed, "failed", {"failed": 6}, "stopped early")
    assert last_success(engine, "patients") == partial_run.finished_at


def test_stale_running_runs_become_interrupted(engine: Engine) -> None:
    """Runs a crash left `running` are marked `interrupted`; finished runs are untouched."""
    crashed = start_run(engine, "patients")
    done = start_run(engine, "content")
    finish_run(engine, done, "ok", {}, None)
    assert interrupt_stale_runs(engine) == 1
    runs = {r.id: r for r in last_runs(engine)}
    assert runs[crashed].outcome == "interrupted"
    assert runs[crashed].finished_at is not None
    assert runs[done].outcome == "ok"
    assert interrupt_stale_runs(engine) == 0


def test_finish_run_validates_its_input(engine: Engine) -> None:
    """An unknown outcome or run id is refused; a long error is cut to the column size."""
    run_id = start_run(engine, "patients")
    with pytest.raises(ValueError, match="outcome must be one of"):
        finish_run(engine, run_id, "running", {}, None)  # type: ignore[arg-type]
    with pytest.raises(StateError, match="no job run with id 999999"):
        finish_run(engine, 999_999, "ok", {}, None)
    finish_run(engine, run_id, "failed", {}, "x" * 5000)
    with engine.connect() as conn:
        error = conn.execute(select(JobRun.error).where(JobRun.id == run_id)).scalar_one()
    assert error == "x" * 1024


def test_audit_is_part_of_the_callers_transaction(engine: Engine) -> None:
    """An audit entry commits with the caller's change and rolls back with it."""
    with Session(engine) as session:
        audit(session, "patients", 1, "patient.pushed", "patient", "P-1", "created")
        session.rollback()
    with Session(engine) as session, session.begin():
        entry = audit(session, "patients", 2, "patient.pushed", "patient", "P-2", "d" * 300)
        assert entry in session.new
    with Session(engine) as session:
        rows = session.scalars(select(AuditEntry)).all()
    assert [(r.run_id, r.object_id, r.action) for r in rows] == [(2, "P-2", "patient.pushed")]
    assert rows[0].detail == "d" * 256
    assert rows[0].at.tzinfo == UTC
    assert rows[0].actor == "patients"


def test_audit_many_writes_every_entry_in_the_callers_transaction(engine: Engine) -> None:
    """audit_many inserts each record (detail cut to 256) and rolls back with the caller."""
    records = [
        AuditRecord("event.delivered", "outbox_event", f"E-{n}", "d" * 300) for n in range(3)
    ]
    with Session(engine) as session:
        assert audit_many(session, "deliver_outbox", 7, records) == 3
        session.rollback()
    at = datetime(2026, 11, 27, 1, 2, 3, tzinfo=UTC)
    with Session(engine) as session, session.begin():
        assert audit_many(session, "deliver_outbox", 8, records, at=at) == 3
        assert audit_many(session, "deliver_outbox", 8, []) == 0
    with Session(engine) as session:
        rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
    assert [(r.run_id, r.object_id, r.action, r.at) for r in rows] == [
        (8, f"E-{n}", "event.delivered", at) for n in range(3)
    ]
    assert {(r.actor, r.object_type, r.detail) for r in rows} == {
        ("deliver_outbox", "outbox_event", "d" * 256)
    }
