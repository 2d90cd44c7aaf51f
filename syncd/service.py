"""What the CLI's commands do, one function each, on top of `syncd.compose`.

Kept apart from `cli.py` so the command-line layer only parses arguments and renders, and
tests can call the same functions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from syncd.compose import (
    build_health,
    build_hl7_feed,
    build_jobs,
    build_sampler,
    build_schedules,
    runtime,
    shutdown_grace_seconds,
)
from syncd.config import Settings
from syncd.daemon import Daemon
from syncd.exceptions import ConfigError
from syncd.jobs import JobRunner, RunResult
from syncd.state.db import check_migrated, upgrade

log = structlog.get_logger(__name__)

# CLI names of one-shot jobs → the job's name in the scheduler and the run records.
SYNC_TARGETS = {
    "patients": "push_patients",
    "submissions": "poll_submissions",
    "outbox": "deliver_outbox",
    "messages": "send_messages",
    "message-status": "message_status",
    "content": "mirror_content",
}


def migrates_on_start(settings: Settings) -> bool:
    """Whether `run` and `sync` create and migrate the state database themselves; otherwise
    they open an existing one only, and say `run syncd db upgrade` when it is missing."""
    return settings.database.auto_migrate or settings.voxares.is_sandbox


def _prepare_database(settings: Settings, engine: Any) -> None:
    if migrates_on_start(settings):
        upgrade(engine)
    check_migrated(engine)


async def serve(settings: Settings, *, config_path: Path | None = None) -> None:
    """Run the daemon until SIGTERM/SIGINT (`config_path`: named in the status page's
    commands)."""
    started_at = datetime.now(UTC)
    exposed = settings.health.exposure_warning()
    if exposed:
        log.warning("health.exposed", host=settings.health.host, reason=exposed)
    page_exposed = settings.status_page.exposure_warning(
        settings.health.host, health_enabled=settings.health.enabled
    )
    if page_exposed:
        log.warning("status_page.exposed", host=settings.health.host, reason=page_exposed)
    async with runtime(settings, create_database=migrates_on_start(settings)) as rt:
        await asyncio.to_thread(_prepare_database, settings, rt.engine)
        # Runs a crashed process left `running` are marked per job by JobRunner once it
        # holds that job's lock (a peer daemon's live runs are left alone).
        jobs = build_jobs(rt)
        feed = build_hl7_feed(rt)
        daemon = Daemon(
            JobRunner(rt.engine),
            build_schedules(rt, jobs),
            health=build_health(rt, started_at, config_path=config_path),
            shutdown_grace_seconds=shutdown_grace_seconds(settings),
            background=build_sampler(rt),
            services=[feed] if feed is not None else [],
        )
        await daemon.run()


async def sync_once(
    settings: Settings,
    target: str,
    *,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> RunResult | Any:
    """Run one job once (`syncd sync patients`); a dry run of the push returns its counts."""
    job_name = SYNC_TARGETS[target]
    async with runtime(settings, create_database=migrates_on_start(settings)) as rt:
        await asyncio.to_thread(_prepare_database, settings, rt.engine)
        jobs = build_jobs(rt)
        if job_name not in jobs:
            raise ConfigError([f"{_section_of(target)}.enabled: the {target} job is disabled"])
        job = jobs[job_name]
        if dry_run:
            if target != "patients":
                raise ConfigError(["--dry-run: only `sync patients` has a dry run"])
            return await job.run(0, dry_run=True)  # type: ignore[call-arg]
        if progress is not None and target == "patients":
            job = _with_progress(job, progress)
        return await JobRunner(rt.engine).run_once(job)


async def reconcile_once(settings: Settings, *, since: datetime | None = None) -> RunResult:
    """Run the reconciliation sweep now (`syncd sync reconcile`), under the poller's lock."""
    async with runtime(settings) as rt:
        await asyncio.to_thread(_prepare_database, settings, rt.engine)
        jobs = build_jobs(rt)
        if "poll_submissions" not in jobs:
            raise ConfigError(["submissions.enabled: the submissions job is disabled"])
        return await JobRunner(rt.engine).run_once(_Reconcile(jobs["poll_submissions"], since))


class _Reconcile:
    """The poller job, running its sweep instead of its poll (same name, so same lock)."""

    def __init__(self, poller: Any, since: datetime | None) -> None:
        self._poller = poller
        self._since = since
        self.name = poller.name

    async def run(self, run_id: int) -> Any:
        return await self._poller.reconcile(run_id, since=self._since)


def _section_of(target: str) -> str:
    return {
        "patients": "patients",
        "submissions": "submissions",
        "outbox": "outbox",
        "messages": "messages",
        "message-status": "messages",
        "content": "content",
    }[target]


class _ProgressJob:
    """A push job whose run reports progress (the CLI's progress bar)."""

    def __init__(self, job: Any, progress: Callable[[int], None]) -> None:
        self._job = job
        self._progress = progress
        self.name = job.name

    async def run(self, run_id: int) -> Any:
        return await self._job.run(run_id, progress=self._progress)


def _with_progress(job: Any, progress: Callable[[int], None]) -> Any:
    return _ProgressJob(job, progress)
