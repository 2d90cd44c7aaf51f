"""The long-running service: schedules jobs, serves health, talks to systemd, stops cleanly.

Each job runs on its own interval or cron, never overlapping itself (APScheduler
`max_instances=1` plus the per-job database lock in `JobRunner`, which also keeps a second
daemon on the same database away). SIGTERM/SIGINT stop the scheduler, ask every job that
can stop cleanly (`request_stop`, e.g. the SMS sender: claim nothing new) to do so, give
in-flight runs a grace period to finish, then cancel them; every job leaves its state
resumable, so a cancelled run is picked up by the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from syncd import sdnotify
from syncd.jobs import Job, JobRunner, Stoppable

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

log = structlog.get_logger(__name__)

HEARTBEAT_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Schedule:
    """When one job runs: every `interval_seconds`, or on a crontab line."""

    job: Job
    interval_seconds: float | None = None
    cron: str | None = None
    jitter_seconds: float = 0.0
    run_at_start: bool = True


class Service(Protocol):
    """Something the daemon runs beside its scheduled jobs (the HL7 listener): started
    before the scheduler (`start` raises `ConfigError` when it cannot bind), stopped first
    on shutdown, before the runs in flight are drained."""

    name: str

    async def start(self, runner: JobRunner) -> None: ...

    async def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class HealthServer:
    """Where to serve /healthz, /readyz and /metrics, and what readiness means."""

    host: str
    port: int
    readiness_checks: Mapping[str, Callable[[], str | None]]
    # Scrape-time collectors served on /metrics beside syncd.metrics.REGISTRY.
    collectors: Sequence[Collector] = ()
    # More routes on the same server (the status page at `/`).
    routes: Sequence[Any] = ()
    # A socket already bound to host:port (`health.bind_health_socket`), e.g. by a caller
    # that asked for port 0 and must print the port before the daemon starts.
    listener: socket.socket | None = field(default=None, compare=False)


class Daemon:
    """Runs scheduled jobs until told to stop."""

    def __init__(
        self,
        runner: JobRunner,
        schedules: list[Schedule],
        *,
        health: HealthServer | None = None,
        shutdown_grace_seconds: float = 20.0,
        background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
        services: Sequence[Service] = (),
    ) -> None:
        self.runner = runner
        self.schedules = schedules
        self.services = list(services)
        self.health = health
        # Loops beside the jobs (the status page's sampler), cancelled at shutdown.
        self.background = background
        self.shutdown_grace_seconds = shutdown_grace_seconds
        self.heartbeat = time.monotonic()
        self._stop = asyncio.Event()
        self._in_flight: set[asyncio.Task[object]] = set()

    def alive(self) -> bool:
        """True while the event loop keeps beating (what /healthz and the watchdog use)."""
        return time.monotonic() - self.heartbeat < 10 * HEARTBEAT_SECONDS

    def request_stop(self) -> None:
        """Ask the daemon to stop (signal handlers and tests call this)."""
        self._stop.set()

    async def _run_job(self, job: Job) -> None:
        # The run is a task of its own, shielded from the scheduler: APScheduler's asyncio
        # executor cancels its futures on shutdown, and only `_drain` may cancel a run.
        task: asyncio.Task[object] = asyncio.create_task(self.runner.run_once(job))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        await asyncio.shield(task)

    def _trigger(self, schedule: Schedule) -> IntervalTrigger | CronTrigger:
        jitter = int(schedule.jitter_seconds) or None
        if schedule.cron:
            return CronTrigger.from_crontab(schedule.cron, timezone="UTC", jitter=jitter)
        return IntervalTrigger(seconds=schedule.interval_seconds or 60, jitter=jitter)

    async def _beat(self) -> None:
        while True:
            self.heartbeat = time.monotonic()
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT (or `request_stop`), then shut down gracefully.

        Raises `ConfigError` before starting anything when the health port cannot be bound.
        """
        listener = None
        if self.health is not None:
            from syncd.health import bind_health_socket

            # Bound here, before anything starts: a busy port is a ConfigError (exit 78)
            # that stops start-up, not a failure hidden in a background task.
            listener = self.health.listener
            if listener is None:
                listener = bind_health_socket(self.health.host, self.health.port)
        started: list[Service] = []
        try:
            for service in self.services:
                await service.start(self.runner)
                started.append(service)
        except BaseException:
            for service in reversed(started):
                await service.stop()
            if listener is not None:
                listener.close()
            raise
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)

        background: list[asyncio.Task[None]] = [asyncio.create_task(self._beat())]
        if self.health is not None:
            from syncd.health import create_health_app, serve_health

            app = create_health_app(
                heartbeat=lambda: self.heartbeat,
                readiness_checks=self.health.readiness_checks,
                collectors=self.health.collectors,
                extra_routes=self.health.routes,
            )
            background.append(
                asyncio.create_task(
                    serve_health(app, self.health.host, self.health.port, sock=listener)
                )
            )
        background.append(asyncio.create_task(sdnotify.watchdog_task(self.alive)))
        background.extend(asyncio.create_task(loop_()) for loop_ in self.background)

        scheduler = AsyncIOScheduler(timezone="UTC")
        for schedule in self.schedules:
            scheduler.add_job(
                self._run_job,
                self._trigger(schedule),
                args=[schedule.job],
                id=schedule.job.name,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
                next_run_time=_now() if schedule.run_at_start else None,
            )
        freeze_start_up_objects()
        scheduler.start()
        sdnotify.ready()
        log.info("daemon.started", jobs=[s.job.name for s in self.schedules])
        try:
            await self._stop.wait()
        finally:
            sdnotify.stopping()
            log.info("daemon.stopping", in_flight=len(self._in_flight))
            # No new runs, then the grace period for the ones in flight (a run the scheduler
            # had already started joins them), then the rest is cancelled and awaited.
            scheduler.pause()
            for service in reversed(started):
                await service.stop()
            self._ask_jobs_to_stop()
            await self._drain()
            scheduler.shutdown(wait=False)
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            log.info("daemon.stopped")

    def _ask_jobs_to_stop(self) -> None:
        """Tell each job that can wind down cleanly to start no new work (`Stoppable`)."""
        for schedule in self.schedules:
            if isinstance(schedule.job, Stoppable):
                schedule.job.request_stop()

    async def _drain(self) -> None:
        """Let in-flight runs finish within the grace period, then cancel the rest."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.shutdown_grace_seconds
        while self._in_flight and loop.time() < deadline:
            await asyncio.wait(set(self._in_flight), timeout=deadline - loop.time())
        pending = set(self._in_flight)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def freeze_start_up_objects() -> None:
    """Take everything alive now out of the garbage collector's generations (`gc.freeze`).

    Once the daemon is composed, what is alive (modules, the engine, the client, the jobs:
    ~110,000 objects) lives as long as the process. A full collection traversed all of it
    each time: in a 20,000-detail poll (B5) ten collections of ~50 ms, each a stall of the
    event loop; frozen, they take ~4 ms (BENCHMARKS.md, item 33). Frozen objects are still
    freed by reference counting; only cycles among them would be kept.
    """
    gc.collect()
    gc.freeze()


def _now() -> object:
    from datetime import UTC, datetime

    return datetime.now(UTC)
