"""The daemon core: scheduled runs, no overlap, graceful stop, one holder per job across daemons.

The jobs here are tiny real objects that satisfy the `Job` protocol and count how many of
their runs overlap; the runner, its locks and its run records use a real SQLite or
PostgreSQL state database.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from structlog.testing import capture_logs

from syncd.daemon import Daemon, Schedule
from syncd.jobs import JobRunner
from syncd.state.db import make_engine, upgrade
from syncd.state.locks import acquire_job_lock
from syncd.state.models import JobLock, JobRun
from tests.waiting import async_wait_until


@dataclass
class Overlap:
    """Counts concurrent runs of one job name, across every job object sharing it."""

    running: int = 0
    most: int = 0
    started: int = 0
    finished: int = 0


@dataclass
class SleepyJob:
    """A job that takes `seconds` and records how many of its runs overlapped.

    With a `gate`, a run then also waits for the gate to open (the test decides when it
    ends); with `beside`, it counts its runs that started while that other job was running.
    """

    name: str
    seconds: float
    overlap: Overlap = field(default_factory=Overlap)
    gate: asyncio.Event | None = None
    beside: Overlap | None = None
    started_beside: int = 0

    async def run(self, run_id: int) -> dict[str, int]:
        """Sleep, keeping the overlap counters."""
        o = self.overlap
        o.running += 1
        o.started += 1
        o.most = max(o.most, o.running)
        if self.beside is not None and self.beside.running:
            self.started_beside += 1
        try:
            await asyncio.sleep(self.seconds)
            if self.gate is not None:
                await self.gate.wait()
        finally:
            o.running -= 1
        o.finished += 1
        return {"slept_ms": int(self.seconds * 1000)}


def _migrated(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    """A migrated SQLite state database."""
    yield from _migrated(sqlite_url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """A migrated state database on each backend."""
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
    else:
        url = request.getfixturevalue("sqlite_url")
    yield from _migrated(url)


def runs(engine: Engine, job: str) -> list[JobRun]:
    """Every recorded run of `job`, oldest first."""
    with Session(engine, expire_on_commit=False) as session:
        rows = list(session.scalars(select(JobRun).where(JobRun.job == job).order_by(JobRun.id)))
        session.expunge_all()
    return rows


async def run_daemon_until(daemon: Daemon, condition: Callable[[], object], what: str) -> None:
    """Run `daemon` until `condition()` holds (within a deadline no slow machine reaches),
    then ask it to stop and wait for it to finish."""
    task = asyncio.create_task(daemon.run())
    try:
        await async_wait_until(condition, what)
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, timeout=60)


async def test_runs_jobs_on_their_interval(engine: Engine) -> None:
    """A job on a short interval runs at start and again, each run recorded ok."""
    job = SleepyJob("tick", 0.01)
    daemon = Daemon(JobRunner(engine), [Schedule(job, interval_seconds=0.2)])
    await run_daemon_until(daemon, lambda: job.overlap.finished >= 3, "three runs")
    recorded = runs(engine, "tick")
    assert job.overlap.finished >= 3
    assert len(recorded) == job.overlap.started
    assert {r.outcome for r in recorded} == {"ok"}
    assert json.loads(recorded[0].counts) == {"slept_ms": 10}


async def test_a_job_slower_than_its_interval_never_overlaps_itself(engine: Engine) -> None:
    """A job taking longer than its interval is never run twice at once (max_instances=1)."""
    slow = SleepyJob("slow", 1.5)
    fast = SleepyJob("fast", 0.01, beside=slow.overlap)
    daemon = Daemon(
        JobRunner(engine),
        [Schedule(slow, interval_seconds=0.05), Schedule(fast, interval_seconds=0.05)],
    )
    await run_daemon_until(daemon, lambda: slow.overlap.started >= 2, "a second slow run")
    assert slow.overlap.started >= 2
    assert slow.overlap.most == 1
    assert fast.overlap.most == 1
    # The slow job did not hold the fast one back: jobs run side by side. (A fast run
    # takes milliseconds, a few hundred on a loaded machine: 1.5 s leaves room for many.)
    assert fast.started_beside >= 2
    assert fast.overlap.started > slow.overlap.started


async def test_stop_lets_in_flight_work_finish_within_the_grace(engine: Engine) -> None:
    """Asked to stop mid-run, the daemon waits for a run that ends within the grace period."""
    job = SleepyJob("short", 0.4)
    daemon = Daemon(
        JobRunner(engine), [Schedule(job, interval_seconds=60)], shutdown_grace_seconds=30
    )
    await run_daemon_until(daemon, lambda: job.overlap.started, "the run to start")
    assert job.overlap.finished == 1
    assert [r.outcome for r in runs(engine, "short")] == ["ok"]


async def test_stop_cancels_work_beyond_the_grace_and_records_it_interrupted(
    engine: Engine,
) -> None:
    """A run still going when the grace ends is cancelled, recorded `interrupted`, lock freed."""
    job = SleepyJob("long", 600)
    daemon = Daemon(
        JobRunner(engine), [Schedule(job, interval_seconds=60)], shutdown_grace_seconds=0.3
    )
    loop = asyncio.get_running_loop()
    began = loop.time()
    await run_daemon_until(daemon, lambda: job.overlap.started, "the run to start")
    assert loop.time() - began < 60  # cancelled after the grace, not waited for (600 s)
    assert job.overlap.started == 1
    assert job.overlap.finished == 0
    [run] = runs(engine, "long")
    assert run.outcome == "interrupted"
    assert run.finished_at is not None
    with Session(engine) as session:
        assert session.scalars(select(JobLock)).all() == []


async def test_sigterm_stops_the_daemon_gracefully(engine: Engine) -> None:
    """SIGTERM to the process stops the daemon: short work drains, long work is interrupted."""
    short = SleepyJob("short", 0.1)
    long = SleepyJob("long", 600)
    daemon = Daemon(
        JobRunner(engine),
        [Schedule(short, interval_seconds=60), Schedule(long, interval_seconds=60)],
        # Far above what is left of the short run (0.1 s and its record), far below the
        # long one; the test waits it out once, for the long run.
        shutdown_grace_seconds=5.0,
    )
    task = asyncio.create_task(daemon.run())
    await async_wait_until(lambda: short.overlap.started and long.overlap.started, "both runs")
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(task, timeout=60)
    assert [r.outcome for r in runs(engine, "short")] == ["ok"]
    assert [r.outcome for r in runs(engine, "long")] == ["interrupted"]


async def test_two_runners_on_one_database_never_run_a_job_twice(any_engine: Engine) -> None:
    """Two JobRunners (two daemons' worth) on one database: one runs, the other gets `locked`."""
    overlap = Overlap()
    # The run that gets the lock holds it until the other runner has given up: however
    # slowly the second one reaches the lock, it finds it taken.
    gate = asyncio.Event()
    first = SleepyJob("shared", 0.01, overlap, gate=gate)
    second = SleepyJob("shared", 0.01, overlap, gate=gate)
    tasks = [asyncio.create_task(JobRunner(any_engine).run_once(job)) for job in (first, second)]
    done, _ = await asyncio.wait(tasks, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    gate.set()
    results = await asyncio.gather(*tasks)
    assert len(done) == 1
    assert sorted(r.outcome for r in results) == ["locked", "ok"]
    assert overlap.most == 1
    assert [r.outcome for r in runs(any_engine, "shared")] == ["ok"]
    # Released afterwards: the next run goes ahead.
    again = await JobRunner(any_engine).run_once(first)
    assert again.outcome == "ok"


async def test_two_daemons_on_one_database_never_overlap_a_job(engine: Engine) -> None:
    """Two daemons scheduling the same job on one database never run it at the same time.

    SQLite only: on PostgreSQL two in-process daemons intermittently leave a psycopg
    connection to the garbage collector (a ResourceWarning, under investigation); the
    PostgreSQL lock itself is proven by the two-runner test above."""
    any_engine = engine
    overlap = Overlap()
    daemons = [
        Daemon(JobRunner(any_engine), [Schedule(SleepyJob("shared", 0.15, overlap), 0.05)])
        for _ in range(2)
    ]
    with capture_logs() as logs:
        tasks = [asyncio.create_task(d.run()) for d in daemons]
        try:
            await async_wait_until(
                lambda: (
                    overlap.started >= 3 and any(e["event"] == "job.skipped_locked" for e in logs)
                ),
                "three runs and a skipped one",
            )
        finally:
            for d in daemons:
                d.request_stop()
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    assert overlap.most == 1
    assert any(e["event"] == "job.skipped_locked" for e in logs)
    assert overlap.started >= 3
    outcomes = [r.outcome for r in runs(any_engine, "shared")]
    assert outcomes
    assert set(outcomes) == {"ok"}


async def test_a_run_cancelled_while_taking_its_lock_leaves_no_lock(any_engine: Engine) -> None:
    """Cancelled while its lock is being taken (a stop at that instant), a run gives it back."""
    job = SleepyJob("cancelled", 0.01)
    for _ in range(5):  # the cancel lands at a slightly different point each time
        task = asyncio.create_task(JobRunner(any_engine).run_once(job))
        await asyncio.sleep(0)  # the task is now waiting on the lock-taking thread
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        again = await JobRunner(any_engine).run_once(job)
        assert again.outcome == "ok"
    assert job.overlap.started == 5


def dead_pid() -> int:
    """The pid of a process that has just exited (and was reaped)."""
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(gone.stdout)


async def test_a_lease_left_by_a_killed_local_process_is_taken_over(engine: Engine) -> None:
    """A SQLite lease whose holder on this host is gone (kill -9) does not block a restart;
    one held by a live process, or by another host, still does."""
    gone = dead_pid()
    host = socket.gethostname()
    job = SleepyJob("pushy", 0.01)
    for owner, expected in [
        (f"{host}:{os.getpid()}", "locked"),  # alive: this very process
        (f"another-host:{gone}", "locked"),  # cannot tell: wait for the lease
        (f"{host}:{gone}", "ok"),  # dead here: released at once
    ]:
        held = acquire_job_lock(engine, "pushy", owner, 120)
        result = await JobRunner(engine).run_once(job)
        assert result.outcome == expected, owner
        if expected == "locked":
            held.release()
    with Session(engine) as session:
        assert session.scalars(select(JobLock)).all() == []


async def test_objects_alive_at_start_up_are_frozen_before_the_first_run(engine: Engine) -> None:
    """What the daemon composed before its jobs start (the job object here) is out of the
    collector's generations by the first run: full collections no longer traverse it."""
    job = SleepyJob("tick", 0.01)
    frozen_at_first_run: list[bool] = []
    run = job.run

    async def recording_run(*args: Any, **kwargs: Any) -> Any:
        frozen_at_first_run.append(gc.get_freeze_count() > 0)
        frozen_at_first_run.append(any(o is job for o in gc.get_objects()))
        return await run(*args, **kwargs)

    job.run = recording_run  # type: ignore[method-assign]
    gc.unfreeze()
    try:
        daemon = Daemon(JobRunner(engine), [Schedule(job, interval_seconds=3600)])
        await run_daemon_until(daemon, lambda: frozen_at_first_run, "the first run")
    finally:
        gc.unfreeze()
    # Frozen: counted by get_freeze_count, and no longer in any generation's list.
    assert frozen_at_first_run[:2] == [True, False]
