"""Running one job once: the lock, the job-run record, log context and metrics.

Both the daemon's scheduler and the one-shot CLI commands (`syncd sync patients`) go through
`JobRunner.run_once`, so a run looks the same in `syncd status` however it was started, and
two processes on one database never run the same job at the same time.

How a run ends (see `syncd.state.runs` for what each outcome means): a job that raises is
`failed`; a job that returns a result is `ok` unless the result says otherwise with an
`outcome` attribute (`ok`, `partial` or `failed`) and an id-only `problem` text. A run whose
lock is lost while it runs (a lease taken over, the lock's connection gone) is cancelled and
recorded `failed`: another process may now run the same job.

Logging: one line per run that did something (`job.finished` with its counts at INFO,
`partial` at WARNING, `failed` at ERROR); a run that did nothing logs at DEBUG only, so an
idle daemon stays quiet.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol, runtime_checkable

import structlog
from sqlalchemy import Engine

from syncd import metrics
from syncd.exceptions import JobLocked, SyncdError
from syncd.logging import bind_job
from syncd.state.locks import JobLockHandle, acquire_job_lock, release_dead_local_lease
from syncd.state.runs import Outcome, finish_run, interrupt_stale_runs, start_run
from syncd.workers import host_name, owner_id, process_alive

log = structlog.get_logger(__name__)

# What a job's result may say about its run (anything else is refused as `failed`).
ResultOutcome = Literal["ok", "partial", "failed"]
RESULT_OUTCOMES: Final[tuple[ResultOutcome, ...]] = ("ok", "partial", "failed")


class Job(Protocol):
    """A unit of scheduled work. `run` returns its counters (a dataclass or a mapping).

    The result may also carry `outcome` ("ok", "partial", "failed"), `problem` (id-only text
    for the run record when not ok) and `idle` (True when the run found nothing to do).
    """

    name: str

    async def run(self, run_id: int) -> Any: ...


# Exit codes of `syncd sync <job>`, on the severity scale `syncd status` uses (Nagios).
EXIT_OK: Final = 0
EXIT_PARTIAL: Final = 1  # some items failed for now; they are retried next run
EXIT_FAILED: Final = 2  # the run failed, stopped early, or could not start
EXIT_LOCKED: Final = 75  # EX_TEMPFAIL: another process runs this job; try again later


@runtime_checkable
class Stoppable(Protocol):
    """A job that can wind down cleanly: after `request_stop` its run starts no new work,
    finishes what it started and returns (the daemon calls it on SIGTERM, before the grace
    period). Jobs without it are cancelled if they outlast the grace period."""

    def request_stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RunResult:
    """How one run ended."""

    job: str
    run_id: int | None
    outcome: str  # ok | partial | failed | locked | interrupted
    counts: Mapping[str, int]
    error: str | None = None

    @property
    def exit_code(self) -> int:
        """The exit code of a one-shot command that made this run."""
        if self.outcome == "ok":
            return EXIT_OK
        if self.outcome == "partial":
            return EXIT_PARTIAL
        if self.outcome == "locked":
            return EXIT_LOCKED
        return EXIT_FAILED


def counts_of(result: Any) -> dict[str, int]:
    """The integer counters of a job's result, whatever its shape."""
    if result is None:
        return {}
    mapping: Mapping[str, Any]
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        mapping = dataclasses.asdict(result)
    elif isinstance(result, Mapping):
        mapping = result
    else:
        return {}
    return {k: int(v) for k, v in mapping.items() if isinstance(v, int | bool)}


def verdict(result: Any) -> tuple[ResultOutcome, str | None]:
    """The outcome a job's result reports for its run, and the id-only problem text."""
    reported = getattr(result, "outcome", "ok")
    for outcome in RESULT_OUTCOMES:
        if reported == outcome:
            break
    else:
        return "failed", f"the job reported an unknown outcome {str(reported)[:32]!r}"
    problem = getattr(result, "problem", None)
    if outcome == "ok" or not isinstance(problem, str):
        return outcome, None
    return outcome, problem


def did_work(result: Any, counts: Mapping[str, int]) -> bool:
    """Whether a run did anything worth a log line: its result's `idle` when it has one,
    else any non-zero counter."""
    idle = getattr(result, "idle", None)
    if isinstance(idle, bool):
        return not idle
    return any(counts.values())


def describe_error(exc: BaseException) -> str:
    """An id-only description of a failure: our own messages are PHI-free by design;
    anything else is reduced to its class name, since its text may quote data."""
    if isinstance(exc, SyncdError):
        return f"{type(exc).__name__}: {exc}"[:1000]
    return type(exc).__name__


class _LockKeeper:
    """Renews a held job lock in the background and stops the run it guards when the lock
    is lost.

    Lost means `renew` raised `JobLocked` (a lease taken over or expired, an advisory lock's
    connection gone), or renewing kept failing until the lease's end had passed. A single
    failed renewal of a lease that has not expired yet (a busy database) is retried at the
    next tick: the lease is renewed three times per `lease_seconds`.
    """

    def __init__(self, job: str, handle: JobLockHandle, lease_seconds: float) -> None:
        self.job = job
        self.handle = handle
        self.interval = lease_seconds / 3
        self.lost: BaseException | None = None
        self._guarded: asyncio.Future[Any] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if getattr(self.handle, "renew", None) is not None:
            self._task = asyncio.create_task(self._keep())

    def guard(self, run: asyncio.Future[Any]) -> None:
        """Cancel `run` if the lock is (or already was) lost."""
        self._guarded = run
        if self.lost is not None:
            run.cancel()

    async def stop(self) -> None:
        """Stop renewing (the caller releases the lock next)."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await asyncio.to_thread(self.handle.renew)
            except JobLocked as exc:
                self._lose(exc)
                return
            except Exception as exc:
                expires_at = self.handle.expires_at
                if expires_at is not None and datetime.now(UTC) >= expires_at:
                    self._lose(exc)
                    return
                log.warning("job.lock_renew_failed", job=self.job, error=describe_error(exc))

    def _lose(self, exc: BaseException) -> None:
        self.lost = exc
        log.error("job.lock_lost", job=self.job, error=describe_error(exc))
        if self._guarded is not None:
            self._guarded.cancel()


def _being_cancelled() -> bool:
    """Whether the current task itself was asked to stop (a shutdown), not just its child."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class JobRunner:
    """Runs jobs once each, under a per-job lock, recording every run."""

    def __init__(self, engine: Engine, *, lease_seconds: float = 120.0) -> None:
        self.engine = engine
        self.lease_seconds = lease_seconds
        self.host = host_name()
        self.owner = owner_id()

    async def run_once(self, job: Job) -> RunResult:
        """Run `job` now unless another process holds its lock."""
        acquiring = asyncio.ensure_future(asyncio.to_thread(self._acquire, job.name))
        try:
            handle = await asyncio.shield(acquiring)
        except JobLocked:
            log.info("job.skipped_locked", job=job.name)
            metrics.JOB_RUNS.labels(job.name, "locked").inc()
            return RunResult(job.name, None, "locked", {})
        except asyncio.CancelledError:
            # The thread taking the lock cannot be cancelled: wait for it and give back
            # what it took, or the lock would outlive this run (a lease until it expires,
            # an advisory lock until the pooled connection is garbage-collected).
            with contextlib.suppress(Exception):
                late = await acquiring
                await asyncio.to_thread(late.release)
            raise
        keeper = _LockKeeper(job.name, handle, self.lease_seconds)
        keeper.start()
        try:
            return await self._run_locked(job, keeper)
        finally:
            await keeper.stop()
            await asyncio.to_thread(handle.release)

    def _acquire(self, job: str) -> JobLockHandle:
        """Take the job's lock; once more after releasing a lease a killed process left."""
        try:
            return acquire_job_lock(self.engine, job, self.owner, self.lease_seconds)
        except JobLocked:
            if not release_dead_local_lease(self.engine, job, self.host, process_alive):
                raise
        return acquire_job_lock(self.engine, job, self.owner, self.lease_seconds)

    async def _run_locked(self, job: Job, keeper: _LockKeeper) -> RunResult:
        # We hold the job's lock, so a run of it still marked `running` died with its process.
        stale = await asyncio.to_thread(interrupt_stale_runs, self.engine, job.name)
        if stale:
            log.warning("job.previous_run_interrupted", job=job.name, runs=stale)
        starting = asyncio.ensure_future(asyncio.to_thread(start_run, self.engine, job.name))
        try:
            run_id = await asyncio.shield(starting)
        except asyncio.CancelledError:
            # As with the lock: the thread writes the record anyway; close it, then stop.
            with contextlib.suppress(Exception):
                late_id = await starting
                await asyncio.to_thread(
                    finish_run, self.engine, late_id, "interrupted", {}, "cancelled at shutdown"
                )
            raise
        started = time.monotonic()
        with bind_job(job.name, run_id):
            log.debug("job.started")
            # The job runs as a task of its own so that losing the lock can cancel it alone.
            body: asyncio.Future[Any] = asyncio.ensure_future(job.run(run_id))
            keeper.guard(body)
            try:
                result = await body
            except asyncio.CancelledError:
                if keeper.lost is not None and not _being_cancelled():
                    error = f"lost the job lock ({describe_error(keeper.lost)})"
                    return await self._finished(job, run_id, started, "failed", {}, error)
                await asyncio.to_thread(
                    finish_run, self.engine, run_id, "interrupted", {}, "cancelled at shutdown"
                )
                metrics.JOB_RUNS.labels(job.name, "interrupted").inc()
                log.warning("job.interrupted")
                raise
            except Exception as exc:
                return await self._finished(job, run_id, started, "failed", {}, describe_error(exc))
            counts = counts_of(result)
            if keeper.lost is not None:  # the job swallowed the cancel, or ended just then
                error = f"lost the job lock ({describe_error(keeper.lost)})"
                return await self._finished(job, run_id, started, "failed", counts, error)
            outcome, problem = verdict(result)
            return await self._finished(
                job, run_id, started, outcome, counts, problem, worked=did_work(result, counts)
            )

    async def _finished(
        self,
        job: Job,
        run_id: int,
        started: float,
        outcome: Outcome,
        counts: dict[str, int],
        error: str | None,
        *,
        worked: bool = True,
    ) -> RunResult:
        """Record, count and log the end of a run (one log line per run)."""
        await asyncio.to_thread(finish_run, self.engine, run_id, outcome, counts, error)
        elapsed = time.monotonic() - started
        metrics.JOB_RUNS.labels(job.name, outcome).inc()
        metrics.JOB_DURATION.labels(job.name).observe(elapsed)
        seconds = round(elapsed, 3)
        if outcome == "failed":
            log.error("job.failed", seconds=seconds, error=error, **counts)
        elif outcome == "partial":
            log.warning("job.finished", outcome=outcome, seconds=seconds, error=error, **counts)
        else:
            emit = log.info if worked else log.debug
            emit("job.finished", outcome=outcome, seconds=seconds, **counts)
        return RunResult(job.name, run_id, outcome, counts, error)
