"""Running one job once: the lock, the job-run record, log context and metrics.

Both the daemon's scheduler and the one-shot CLI commands (`syncd sync patients`) go through
`JobRunner.run_once`, so a run looks the same in `syncd status` however it was started, and
two processes on one database never run the same job at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from sqlalchemy import Engine

from syncd import metrics
from syncd.exceptions import JobLocked, SyncdError
from syncd.logging import bind_job
from syncd.state.locks import JobLockHandle, acquire_job_lock, release_dead_local_lease
from syncd.state.runs import finish_run, interrupt_stale_runs, start_run
from syncd.workers import host_name, owner_id, process_alive

log = structlog.get_logger(__name__)


class Job(Protocol):
    """A unit of scheduled work. `run` returns its counters (a dataclass or a mapping)."""

    name: str

    async def run(self, run_id: int) -> Any: ...


@dataclass(frozen=True, slots=True)
class RunResult:
    """How one run ended."""

    job: str
    run_id: int | None
    outcome: str  # ok | failed | locked | interrupted
    counts: Mapping[str, int]
    error: str | None = None


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


def describe_error(exc: BaseException) -> str:
    """An id-only description of a failure: our own messages are PHI-free by design;
    anything else is reduced to its class name, since its text may quote data."""
    if isinstance(exc, SyncdError):
        return f"{type(exc).__name__}: {exc}"[:1000]
    return type(exc).__name__


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
        renewer = asyncio.create_task(self._renew(handle))
        try:
            return await self._run_locked(job)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            await asyncio.to_thread(handle.release)

    def _acquire(self, job: str) -> JobLockHandle:
        """Take the job's lock; once more after releasing a lease a killed process left."""
        try:
            return acquire_job_lock(self.engine, job, self.owner, self.lease_seconds)
        except JobLocked:
            if not release_dead_local_lease(self.engine, job, self.host, process_alive):
                raise
        return acquire_job_lock(self.engine, job, self.owner, self.lease_seconds)

    async def _renew(self, handle: Any) -> None:
        renew = getattr(handle, "renew", None)
        if renew is None:
            return
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            await asyncio.to_thread(renew)

    async def _run_locked(self, job: Job) -> RunResult:
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
            log.info("job.started")
            try:
                result = await job.run(run_id)
            except asyncio.CancelledError:
                await asyncio.to_thread(
                    finish_run, self.engine, run_id, "interrupted", {}, "cancelled at shutdown"
                )
                metrics.JOB_RUNS.labels(job.name, "interrupted").inc()
                log.warning("job.interrupted")
                raise
            except Exception as exc:
                error = describe_error(exc)
                await asyncio.to_thread(finish_run, self.engine, run_id, "failed", {}, error)
                metrics.JOB_RUNS.labels(job.name, "failed").inc()
                metrics.JOB_DURATION.labels(job.name).observe(time.monotonic() - started)
                log.error("job.failed", error=error)
                return RunResult(job.name, run_id, "failed", {}, error)
            counts = counts_of(result)
            await asyncio.to_thread(finish_run, self.engine, run_id, "ok", counts, None)
            elapsed = time.monotonic() - started
            metrics.JOB_RUNS.labels(job.name, "ok").inc()
            metrics.JOB_DURATION.labels(job.name).observe(elapsed)
            log.info("job.finished", seconds=round(elapsed, 3), **counts)
            return RunResult(job.name, run_id, "ok", counts)
