"""How `JobRunner` records a run's end: ok, partial and failed from the job's own result,
one log line per run that did work (none at INFO for an idle run), and a run whose lock is
lost stopped and recorded failed, with its lock released.

Real state databases (SQLite leases, PostgreSQL advisory locks); the jobs are small real
objects satisfying the `Job` protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, select, text, update
from sqlalchemy.orm import Session
from structlog.testing import capture_logs

from syncd import metrics
from syncd.jobs import JobRunner
from syncd.state.db import make_engine, upgrade
from syncd.state.locks import JobLockHandle, advisory_key
from syncd.state.models import JobLock, JobRun
from syncd.state_metrics import StateCollector


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    """A migrated SQLite state database."""
    engine = make_engine(sqlite_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """A migrated state database on each backend."""
    fixture = "postgres_url" if request.param == "postgres" else "sqlite_url"
    engine = make_engine(request.getfixturevalue(fixture))
    upgrade(engine)
    yield engine
    engine.dispose()


@dataclass
class Report:
    """A job result that says how its run went, as `PushCounts` does."""

    pushed: int = 0
    failed: int = 0
    outcome: str = "ok"
    problem: str | None = None


@dataclass
class ReportingJob:
    """A job that returns a given result."""

    name: str
    result: Any

    async def run(self, run_id: int) -> Any:
        return self.result


@dataclass
class HangingJob:
    """A job that signals it started, then runs for `seconds` unless cancelled."""

    name: str
    seconds: float = 60.0
    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: bool = False
    finished: bool = False

    async def run(self, run_id: int) -> dict[str, int]:
        self.started.set()
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        self.finished = True
        return {"done": 1}


def recorded(engine: Engine, job: str) -> list[JobRun]:
    """Every run of `job`, oldest first."""
    with Session(engine, expire_on_commit=False) as session:
        rows = list(session.scalars(select(JobRun).where(JobRun.job == job).order_by(JobRun.id)))
        session.expunge_all()
    return rows


def runs_counted(job: str, outcome: str) -> float:
    """`syncd_job_runs{job, outcome}` now."""
    value = metrics.REGISTRY.get_sample_value(
        "syncd_job_runs_total", {"job": job, "outcome": outcome}
    )
    return value or 0.0


@pytest.mark.parametrize(
    ("report", "outcome", "error"),
    [
        (Report(pushed=3), "ok", None),
        (
            Report(pushed=3, failed=1, outcome="partial", problem="1 row failed"),
            "partial",
            "1 row failed",
        ),
        (Report(failed=4, outcome="failed", problem="4 rows failed"), "failed", "4 rows failed"),
        (Report(outcome="bogus"), "failed", "the job reported an unknown outcome 'bogus'"),
    ],
    ids=["ok", "partial", "failed", "unknown"],
)
async def test_a_run_is_recorded_with_the_outcome_its_result_reports(
    engine: Engine, report: Report, outcome: str, error: str | None
) -> None:
    """A result's `outcome` and `problem` become the run record's outcome and error, and
    the run is counted under that outcome in `syncd_job_runs`."""
    name = f"reporting_{outcome}_{report.outcome}"
    before = runs_counted(name, outcome)
    result = await JobRunner(engine).run_once(ReportingJob(name, report))
    assert (result.outcome, result.error) == (outcome, error)
    [run] = recorded(engine, name)
    assert (run.outcome, run.error) == (outcome, error)
    assert runs_counted(name, outcome) == before + 1


async def test_last_success_gauge_counts_ok_and_partial_but_not_failed(engine: Engine) -> None:
    """`syncd_job_last_success_timestamp_seconds` (read from the runs at scrape time) moves
    on ok and partial runs only."""
    name = "gauged"
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(engine, {name: timedelta(minutes=10)}, []))

    def gauge() -> float | None:
        return registry.get_sample_value("syncd_job_last_success_timestamp_seconds", {"job": name})

    await JobRunner(engine).run_once(ReportingJob(name, Report(failed=1, outcome="failed")))
    assert gauge() is None
    await JobRunner(engine).run_once(ReportingJob(name, Report(failed=1, outcome="partial")))
    first = gauge()
    assert first is not None
    assert abs(first - datetime.now(UTC).timestamp()) < 60


async def test_an_idle_run_logs_nothing_at_info(engine: Engine) -> None:
    """A run whose counters are all zero logs at DEBUG only (an idle daemon stays quiet)."""
    with capture_logs() as logs:
        await JobRunner(engine).run_once(ReportingJob("idle", {"delivered": 0, "claimed": 0}))
    assert [e["event"] for e in logs if e["log_level"] == "debug"].count("job.finished") == 1
    loud = [e for e in logs if e["log_level"] != "debug"]
    assert loud == []


@dataclass
class IdleFlag:
    """A result that counts API calls but says it found nothing to do."""

    windows: int = 1
    pages: int = 1
    idle: bool = True


async def test_a_result_may_say_it_was_idle_despite_non_zero_counters(engine: Engine) -> None:
    """A result's `idle` attribute decides, so a poll that found nothing stays quiet."""
    with capture_logs() as logs:
        await JobRunner(engine).run_once(ReportingJob("poll", IdleFlag()))
    assert [e for e in logs if e["log_level"] != "debug"] == []


async def test_a_run_that_did_work_logs_one_info_line_with_its_counts(engine: Engine) -> None:
    """One INFO line per working run, carrying its counts; nothing else at INFO."""
    with capture_logs() as logs:
        await JobRunner(engine).run_once(ReportingJob("busy", {"delivered": 7, "claimed": 7}))
    loud = [e for e in logs if e["log_level"] != "debug"]
    assert len(loud) == 1
    assert loud[0]["event"] == "job.finished"
    assert (loud[0]["log_level"], loud[0]["delivered"], loud[0]["outcome"]) == ("info", 7, "ok")


async def test_partial_and_failed_results_log_one_warning_or_error_line(engine: Engine) -> None:
    """A partial run logs one WARNING line, a failed one one ERROR line, each with counts."""
    with capture_logs() as logs:
        await JobRunner(engine).run_once(
            ReportingJob("p", Report(pushed=2, failed=1, outcome="partial", problem="x"))
        )
        await JobRunner(engine).run_once(
            ReportingJob("f", Report(failed=3, outcome="failed", problem="y"))
        )
    loud = [(e["event"], e["log_level"], e["failed"]) for e in logs if e["log_level"] != "debug"]
    assert loud == [("job.finished", "warning", 1), ("job.failed", "error", 3)]


# --- losing the lock ----------------------------------------------------------------------


def expire_lease(engine: Engine, job: str) -> None:
    """Make the job's SQLite lease end in the past (a renewal then finds it lost)."""
    with engine.begin() as conn:
        conn.execute(
            update(JobLock)
            .where(JobLock.job == job)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=5))
        )


def drop_lock_connection(engine: Engine, job: str) -> None:
    """Terminate the PostgreSQL session holding the job's advisory lock."""
    with engine.connect() as conn:
        terminated = conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_locks"
                " WHERE locktype = 'advisory' AND granted AND objsubid = 1"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND ((classid::bigint << 32) | objid::bigint) = :key"
            ),
            {"key": advisory_key(job)},
        ).all()
        conn.commit()
    assert terminated == [(True,)]


async def test_a_run_that_loses_its_lock_is_stopped_recorded_failed_and_releases(
    any_engine: Engine,
) -> None:
    """Lock lost mid-run (lease expired, or the advisory lock's session killed): the job is
    cancelled, the run recorded `failed` naming the lock, `job.lock_lost` logged, the lock's
    release still runs, and the next run can take the lock at once."""
    job = HangingJob("guarded")
    runner = JobRunner(any_engine, lease_seconds=0.9)  # renewed every 0.3 s
    with capture_logs() as logs:
        running = asyncio.create_task(runner.run_once(job))
        await asyncio.wait_for(job.started.wait(), timeout=10)
        if any_engine.dialect.name == "postgresql":
            await asyncio.to_thread(drop_lock_connection, any_engine, "guarded")
        else:
            await asyncio.to_thread(expire_lease, any_engine, "guarded")
        result = await asyncio.wait_for(running, timeout=20)

    assert result.outcome == "failed"
    assert result.error is not None
    assert result.error.startswith("lost the job lock (JobLocked")
    assert job.cancelled
    assert not job.finished
    [run] = recorded(any_engine, "guarded")
    assert (run.outcome, run.error) == ("failed", result.error)
    assert any(e["event"] == "job.lock_lost" and e["log_level"] == "error" for e in logs)
    with Session(any_engine) as session:  # released: no lease row left behind
        assert session.scalars(select(JobLock)).all() == []
    again = await JobRunner(any_engine).run_once(ReportingJob("guarded", {"done": 1}))
    assert again.outcome == "ok"


@dataclass
class StubbornJob:
    """A job that swallows its cancellation and returns counts anyway."""

    name: str
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, run_id: int) -> dict[str, int]:
        self.started.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(60)
        return {"done": 1}


async def test_a_job_that_ignores_the_cancel_after_losing_its_lock_is_still_failed(
    engine: Engine,
) -> None:
    """A job that swallows the cancel and returns still ran without its lock: `failed`."""
    job = StubbornJob("stubborn")
    running = asyncio.create_task(JobRunner(engine, lease_seconds=0.9).run_once(job))
    await asyncio.wait_for(job.started.wait(), timeout=10)
    await asyncio.to_thread(expire_lease, engine, "stubborn")
    result = await asyncio.wait_for(running, timeout=20)
    assert (result.outcome, result.counts) == ("failed", {"done": 1})
    assert result.error is not None
    assert result.error.startswith("lost the job lock")


class ScriptedLock(JobLockHandle):
    """A lock handle whose renewals fail as scripted (a busy or unreachable database)."""

    def __init__(self, job: str, failures: int, expires_at: datetime | None) -> None:
        super().__init__(job, "test:1")
        self.failures = failures
        self.expires_at = expires_at
        self.renewals = 0
        self.released_calls = 0

    def _renew(self) -> None:
        self.renewals += 1
        if self.renewals <= self.failures:
            raise OSError("database is locked")

    def _release(self) -> None:
        self.released_calls += 1


class ScriptedRunner(JobRunner):
    """A runner whose lock is a `ScriptedLock` (the job-run records are still real)."""

    def __init__(self, engine: Engine, lock: ScriptedLock, lease_seconds: float) -> None:
        super().__init__(engine, lease_seconds=lease_seconds)
        self.lock = lock

    def _acquire(self, job: str) -> JobLockHandle:
        return self.lock


async def test_a_failed_renewal_before_the_lease_ends_is_retried(engine: Engine) -> None:
    """One renewal failing while the lease is still valid is logged and retried; the run
    goes on and ends ok."""
    lock = ScriptedLock("steady", failures=1, expires_at=datetime.now(UTC) + timedelta(hours=1))
    job = HangingJob("steady", seconds=1.5)
    with capture_logs() as logs:
        result = await ScriptedRunner(engine, lock, lease_seconds=0.6).run_once(job)
    assert result.outcome == "ok"
    assert job.finished
    assert lock.renewals >= 3  # renewing went on after the failure
    assert lock.released_calls == 1
    assert any(e["event"] == "job.lock_renew_failed" for e in logs)


async def test_renewals_failing_past_the_lease_end_lose_the_lock(engine: Engine) -> None:
    """Renewals that keep failing once the lease has run out mean the lock is lost: the run
    is stopped and recorded failed, and the lock is still released."""
    lock = ScriptedLock("expired", failures=100, expires_at=datetime.now(UTC) - timedelta(1))
    job = HangingJob("expired")
    result = await asyncio.wait_for(
        ScriptedRunner(engine, lock, lease_seconds=0.6).run_once(job), timeout=20
    )
    assert result.outcome == "failed"
    assert result.error == "lost the job lock (OSError)"
    assert job.cancelled
    assert lock.released_calls == 1


async def test_a_shutdown_cancel_is_still_interrupted_not_failed(engine: Engine) -> None:
    """Cancelling the run itself (the daemon's drain) records `interrupted` and re-raises,
    as before: only a lost lock turns a cancellation into `failed`."""
    job = HangingJob("drained")
    running = asyncio.create_task(JobRunner(engine).run_once(job))
    await asyncio.wait_for(job.started.wait(), timeout=10)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    [run] = recorded(engine, "drained")
    assert run.outcome == "interrupted"
    with Session(engine) as session:
        assert session.scalars(select(JobLock)).all() == []
