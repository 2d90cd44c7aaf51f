"""Builds the object graph once: settings → engine → client → sources → jobs.

The CLI calls these functions and nothing else builds long-lived objects, so every command
and the daemon share one construction (and one rate limiter per API key).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import httpx
from sqlalchemy import Engine

from syncd.config import Settings
from syncd.daemon import HealthServer, Schedule
from syncd.jobs import Job
from syncd.normalize import NormalizePolicy
from syncd.sources.base import Source
from syncd.state.db import make_engine
from syncd.voxares.client import Timeouts, VoxaresClient
from syncd.voxares.contract import API_PREFIX
from syncd.voxares.limits import ClientLimits
from syncd.voxares.retry import RetryPolicy

# `voxares.base_url = "sandbox"` runs the emulator inside this process (demo, trials).
EMBEDDED_SANDBOX: Final = "sandbox"
EMBEDDED_BASE_URL: Final = "http://sandbox" + API_PREFIX
# The provider name sent with every patient when `voxares.provider` is not set. The API
# would default to the key's name, which a client cannot read and which changes when a
# clinic rotates to a key with another name: an explicit name keeps the mapping stable.
DEFAULT_PROVIDER: Final = "voxares-syncd"
EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass
class Runtime:
    """Everything a command needs, built from one `Settings`."""

    settings: Settings
    engine: Engine
    client: VoxaresClient
    provider: str
    sandbox: Any | None = None  # syncd.sandbox.state.Sandbox when embedded
    _background: list[asyncio.Task[None]] = field(default_factory=list)

    async def aclose(self) -> None:
        """Stop background tasks, close the client and the engine."""
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.client.aclose()
        self.engine.dispose()


def provider_name(settings: Settings) -> str:
    """The provider name this daemon pushes patients under."""
    return settings.voxares.provider or DEFAULT_PROVIDER


def build_engine(settings: Settings, *, create: bool = True) -> Engine:
    """The state database engine; `create=False` never creates a missing SQLite file."""
    return make_engine(settings.database.url, create=create)


def build_client(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
) -> tuple[VoxaresClient, Any | None]:
    """The Voxares client, and the embedded sandbox when `base_url = "sandbox"`."""
    v = settings.voxares
    limits = ClientLimits(
        requests_per_second=v.requests_per_second, max_concurrency=v.max_concurrency
    )
    timeouts = Timeouts(
        connect=v.connect_timeout, read=v.read_timeout, write=v.write_timeout, pool=v.pool_timeout
    )
    retry = RetryPolicy(
        attempts=v.retry_attempts,
        initial=v.retry_initial_seconds,
        max_backoff=v.retry_max_backoff_seconds,
    )
    sandbox = None
    base_url = v.base_url
    if base_url == EMBEDDED_SANDBOX:
        from syncd.sandbox.app import create_app
        from syncd.sandbox.state import DEMO_API_KEY, Sandbox

        sandbox = Sandbox()
        transport = httpx.ASGITransport(app=create_app(sandbox))
        base_url = EMBEDDED_BASE_URL
        api_key: Any = DEMO_API_KEY
    else:
        api_key = v.api_key
        assert api_key is not None, "load_settings guarantees a key for a real API"
    client = VoxaresClient(
        base_url=base_url,
        api_key=api_key,
        transport=transport,
        limits=limits,
        timeouts=timeouts,
        retry=retry,
    )
    return client, sandbox


@contextlib.asynccontextmanager
async def runtime(settings: Settings, *, create_database: bool = True) -> AsyncIterator[Runtime]:
    """Build a `Runtime`, and close it afterwards (`create_database`: see `build_engine`)."""
    engine = build_engine(settings, create=create_database)
    client, sandbox = build_client(settings)
    rt = Runtime(settings, engine, client, provider_name(settings), sandbox)
    if sandbox is not None:
        from syncd.sandbox.activity import run_activity

        # In-process the sandbox has no server lifespan: drive its simulator from here.
        rt._background.append(asyncio.create_task(run_activity(sandbox)))
    try:
        yield rt
    finally:
        await rt.aclose()


def build_source(settings: Settings, engine: Engine | None = None) -> Source:
    """The configured patient source (CSV, SQL, a FHIR server or a FHIR Bulk export).

    `engine` keeps a FHIR search's `_lastUpdated` cursor; without it (`syncd doctor`)
    every read of a FHIR server is a full read.
    """
    src = settings.patients.source
    if src is None:
        from syncd.exceptions import ConfigError

        raise ConfigError(["patients.source: not configured (a [patients.source] table)"])
    if src.type == "fhir":
        from syncd.sources.fhir_build import build_fhir_source

        return build_fhir_source(src, engine)
    if src.type == "fhir-bulk":
        from syncd.sources.fhir_bulk import BulkNdjsonSource

        return BulkNdjsonSource(
            src.name,
            src.path,
            identifier_system=src.identifier_system,
            since_export=src.since_export,
        )
    columns = src.columns.model_dump(exclude_none=True) if src.columns is not None else None
    if src.type == "csv":
        from syncd.sources.csv import CsvSource

        assert columns is not None
        return CsvSource(
            src.name, src.path, columns=columns, delimiter=src.delimiter, encoding=src.encoding
        )
    from syncd.sources.sql import SqlSource

    return SqlSource(src.name, src.url, src.query, columns=columns, chunk_size=src.chunk_size)


def build_patient_push(rt: Runtime) -> Job:
    """The patient push job."""
    from syncd.patients.push import PatientPush

    p = rt.settings.patients
    policy = NormalizePolicy(
        default_region=p.default_region,
        landline=p.landline,
        invalid_phone=p.invalid_phone,
        date_formats=tuple(p.date_formats),
    )
    return PatientPush(
        rt.engine,
        rt.client,
        build_source(rt.settings, rt.engine),
        policy,
        provider=rt.provider,
        batch_size=p.batch_size,
        missing_rows=p.missing_rows,
        outage_after=p.outage_after,
    )


def build_submission_poller(rt: Runtime) -> Job:
    """The form-submission poller job."""
    from syncd.submissions.poller import SubmissionPoller
    from syncd.submissions.sweep import Sweep

    s = rt.settings.submissions
    start_from = EPOCH if s.start_from == "beginning" else s.start_from
    assert isinstance(start_from, datetime)
    return _named(
        SubmissionPoller(
            rt.engine,
            rt.client,
            overlap=s.overlap_seconds,
            settle=s.settle_seconds,
            page_size=s.page_size,
            max_window_seconds=s.max_window_seconds,
            max_window_items=s.max_window_items,
            detail_concurrency=s.detail_concurrency,
            start_from=start_from,
            provider=rt.provider,
            sweeps=(
                Sweep(
                    "daily",
                    timedelta(seconds=s.sweep_interval_seconds),
                    timedelta(seconds=s.sweep_lookback_seconds),
                ),
                Sweep(
                    "weekly",
                    timedelta(seconds=s.deep_sweep_interval_seconds),
                    timedelta(seconds=s.deep_sweep_lookback_seconds),
                ),
            ),
        ),
        "poll_submissions",
    )


def _named(job: Any, name: str) -> Job:
    """Give a job its scheduler name (the name its runs, lock and freshness check use)."""
    job.name = name
    return job  # type: ignore[no-any-return]


# name → (builder, enabled?, interval seconds, cron, jitter, freshness)
# freshness None: not watched (no "no run yet" warning, no readiness check): housekeeping.
JobSpec = tuple[Callable[[Runtime], Job], bool, float, str | None, float, float | None]


def job_specs(rt: Runtime) -> dict[str, JobSpec]:
    """Every job this configuration enables, by name."""
    return specs_for(rt.settings)


def job_freshness(settings: Settings) -> dict[str, timedelta]:
    """How recently each enabled job must have succeeded to count as fresh (what `/readyz`
    and `syncd status` hold it to), by job name."""
    fresh = {
        name: timedelta(seconds=spec[5])
        for name, spec in specs_for(settings).items()
        if spec[5] is not None
    }
    if settings.hl7.enabled:
        # Not scheduled here (the feed runs it after each message and every
        # apply_interval_seconds), but as watched as any job.
        from syncd.hl7.apply import JOB_NAME as HL7_APPLY

        fresh[HL7_APPLY] = timedelta(seconds=max(600.0, 10 * settings.hl7.apply_interval_seconds))
    return fresh


def specs_for(settings: Settings) -> dict[str, JobSpec]:
    """Every job `settings` enables, by name (the settings-only part of `job_specs`)."""
    s = settings
    specs: dict[str, JobSpec] = {}
    if s.patients.enabled:
        p = s.patients
        specs["push_patients"] = (
            build_patient_push,
            True,
            p.interval_seconds,
            p.cron,
            p.jitter_seconds,
            p.freshness_seconds,
        )
    if s.submissions.enabled:
        q = s.submissions
        specs["poll_submissions"] = (
            build_submission_poller,
            True,
            q.interval_seconds,
            None,
            min(5.0, q.interval_seconds / 10),
            q.freshness_seconds,
        )
    o = s.outbox
    if o.sinks:
        specs["deliver_outbox"] = (
            build_outbox_delivery,
            True,
            o.deliver_interval_seconds,
            None,
            0.0,
            max(600.0, 10 * o.deliver_interval_seconds),
        )
    if s.content.enabled:
        c = s.content
        specs["mirror_content"] = (
            build_content_mirror,
            True,
            c.interval_seconds,
            None,
            min(60.0, c.interval_seconds / 10),
            3 * c.interval_seconds,
        )
    if s.messages.enabled:
        m = s.messages
        fresh = max(600.0, 10 * m.interval_seconds)
        specs["send_messages"] = (build_message_sender, True, m.interval_seconds, None, 0.0, fresh)
        specs["message_status"] = (
            build_message_status,
            True,
            m.status_interval_seconds,
            None,
            0.0,
            max(fresh, 3 * m.status_interval_seconds),
        )
        if m.sources:
            specs["message_sources"] = (
                build_message_sources,
                True,
                m.interval_seconds,
                None,
                0.0,
                fresh,
            )
    # Always: every job writes run records; hourly, a few seconds of work at most. Not
    # watched: the daemon's health does not depend on it, and a shell-only install (one-shot
    # `syncd sync` commands) never runs it, which must not turn `syncd status` yellow.
    specs["housekeeping"] = (build_housekeeping, True, 3600.0, None, 60.0, None)
    return specs


def build_jobs(rt: Runtime) -> dict[str, Job]:
    """Instantiate every enabled job."""
    jobs: dict[str, Job] = {}
    for name, (builder, *_rest) in job_specs(rt).items():
        job = builder(rt)
        jobs[name] = _named(job, name)
    return jobs


def build_schedules(rt: Runtime, jobs: dict[str, Job]) -> list[Schedule]:
    """When each enabled job runs."""
    specs = job_specs(rt)
    return [
        Schedule(job, interval_seconds=spec[2], cron=spec[3], jitter_seconds=spec[4])
        for name, job in jobs.items()
        for spec in [specs[name]]
    ]


# The least grace a graceful stop gives the runs in flight (seconds).
MIN_SHUTDOWN_GRACE: Final = 20.0


def shutdown_grace_seconds(settings: Settings) -> float:
    """How long a graceful stop lets runs in flight finish before cancelling them.

    Long enough for one API call to end by its own timeouts (connect + read, plus a margin):
    an SMS send cancelled mid-air ends `unknown`, so the sends already claimed must be able
    to finish. The service manager must wait longer than this before it kills the process
    (the systemd unit's TimeoutStopSec=60 covers the default 40 s).
    """
    v = settings.voxares
    return max(MIN_SHUTDOWN_GRACE, v.connect_timeout + v.read_timeout + 5.0)


def build_health(
    rt: Runtime,
    started_at: datetime,
    *,
    config_path: Path | None = None,
    syncd: str = "syncd",
) -> HealthServer | None:
    """The health endpoint and its readiness checks, when enabled, with the status page at
    `/` when that is enabled too (`config_path` and `syncd`: for the commands it shows).

    Raises `ConfigError` when the page's credential file cannot be read."""
    h = rt.settings.health
    if not h.enabled:
        return None
    from syncd.health import database_check, job_freshness_check, migrations_check
    from syncd.state.db import head_revisions
    from syncd.state_metrics import StateCollector

    checks: dict[str, Callable[[], str | None]] = {
        "database": database_check(rt.engine),
        "migrations": migrations_check(rt.engine, head_revisions()),
    }
    freshness = job_freshness(rt.settings)
    for name, limit in freshness.items():
        checks[f"job:{name}"] = job_freshness_check(rt.engine, name, limit, started_at=started_at)
    state = StateCollector(rt.engine, freshness, rt.settings.outbox.sinks)
    return HealthServer(
        h.host,
        h.port,
        checks,
        collectors=[state],
        routes=build_status_page(rt, config_path=config_path, syncd=syncd),
    )


def build_status_page(
    rt: Runtime, *, config_path: Path | None = None, syncd: str = "syncd"
) -> list[Any]:
    """The status page's routes (none when `status_page.enabled` is false)."""
    page = rt.settings.status_page
    if not page.enabled:
        return []
    from syncd.config_page import read_credential
    from syncd.status_page.page import PageAccess, PageConfig, status_page_routes

    access = PageAccess(page.auth, read_credential(page))
    config = PageConfig(
        freshness=job_freshness(rt.settings),
        configured_sinks=tuple(rt.settings.outbox.sinks),
        refresh_seconds=page.refresh_seconds,
        syncd=syncd,
        config_path=config_path,
        access=access,
    )
    return list(status_page_routes(rt.engine, config))


def build_sampler(rt: Runtime) -> list[Callable[[], Coroutine[Any, Any, None]]]:
    """The status page's sampler loop, when the page is served (nothing reads it else)."""
    page = rt.settings.status_page
    if not (page.enabled and rt.settings.health.enabled):
        return []
    from syncd.status_page.samples import sampler_task

    retention = timedelta(days=page.retention_days)

    def loop() -> Coroutine[Any, Any, None]:
        return sampler_task(rt.engine, interval=page.sample_interval_seconds, retention=retention)

    return [loop]


def build_sinks(settings: Settings) -> dict[str, Any]:
    """One sink object per `[outbox.sinks.<name>]`."""
    from syncd.sinks.ndjson import NdjsonFileSink
    from syncd.sinks.webhook import WebhookSink

    sinks: dict[str, Any] = {}
    for name, cfg in settings.outbox.sinks.items():
        if cfg.type == "webhook":
            assert cfg.secret is not None
            sinks[name] = WebhookSink(
                name,
                cfg.url,
                cfg.secret.get_secret_value(),
                connect_timeout=cfg.connect_timeout,
                read_timeout=cfg.read_timeout,
                max_attempts_4xx=cfg.max_attempts_4xx,
            )
        elif cfg.type == "file":
            sinks[name] = NdjsonFileSink(
                name, cfg.directory, rotate_bytes=cfg.rotate_bytes, rotate_daily=cfg.rotate_daily
            )
        else:
            from syncd.sinks.amqp import AmqpSink

            sinks[name] = AmqpSink(name, cfg.url, cfg.exchange, cfg.routing_key)
    return sinks


def build_outbox_delivery(rt: Runtime) -> Job:
    """The outbox delivery job."""
    from syncd.outbox.delivery import OutboxDeliveryJob
    from syncd.outbox.routing import routes_from_settings

    o = rt.settings.outbox
    return OutboxDeliveryJob(
        rt.engine,
        build_sinks(rt.settings),
        routes_from_settings(o),
        batch_size=o.batch_size,
        batches_in_flight=o.batches_in_flight,
        max_attempts=o.max_attempts,
        max_age=timedelta(hours=o.max_age_hours),
        keep_order_per_patient=o.keep_order_per_patient,
        lease_seconds=_delivery_lease_seconds(rt.settings),
        retention=timedelta(days=o.retention_days),
        # An idle sink looks for new events this often while another sink's batch runs on:
        # never less often than the runs start, so a slow sink delays no one.
        pause_seconds=min(1.0, o.deliver_interval_seconds),
    )


def build_housekeeping(rt: Runtime) -> Job:
    """Job-run history pruning, and outbox retention when no sink's delivery job does it."""
    from syncd.housekeeping import HousekeepingJob

    s = rt.settings
    return HousekeepingJob(
        rt.engine,
        run_history_days=s.database.run_history_days,
        outbox_retention_days=None if s.outbox.sinks else s.outbox.retention_days,
    )


def _delivery_lease_seconds(settings: Settings) -> float:
    """A claim's lease must outlast the slowest batch: every event of a batch may wait for
    its connect and read timeouts, 16 at a time (the webhook sink's concurrency), shared
    with the sink's other batches in flight."""
    slowest = 0.0
    for cfg in settings.outbox.sinks.values():
        if cfg.type == "webhook":
            slowest = max(slowest, cfg.connect_timeout + cfg.read_timeout)
    o = settings.outbox
    rounds = -(-(o.batch_size * o.batches_in_flight) // 16)
    return max(120.0, 2 * rounds * slowest)


def build_content_mirror(rt: Runtime) -> Job:
    """The content mirror job."""
    from syncd.content.mirror import ContentMirror

    return ContentMirror(rt.engine, rt.client)


def build_message_sender(rt: Runtime) -> Job:
    """The SMS sender job."""
    from syncd.messages.sender import MessageSender

    return MessageSender(rt.engine, rt.client, provider=rt.provider)


def build_message_status(rt: Runtime) -> Job:
    """The SMS delivery-status job."""
    from syncd.messages.status import MessageStatusPoller

    return MessageStatusPoller(rt.engine, rt.client, provider=rt.provider)


def build_hl7_feed(rt: Runtime) -> Any:
    """The HL7 v2 ADT feed (`syncd.hl7.feed.Hl7Feed`), or None when `[hl7]` is off."""
    h = rt.settings.hl7
    if not h.enabled:
        return None
    from syncd.hl7.apply import Hl7Apply
    from syncd.hl7.feed import Hl7Feed
    from syncd.hl7.mapping import Hl7Mapping

    m = h.mapping
    apply = Hl7Apply(
        rt.engine,
        rt.client,
        _patient_policy(rt.settings),
        Hl7Mapping(
            identifier_authority=m.identifier_authority,
            identifier_type=m.identifier_type,
            name_type=m.name_type,
            mobile_equipment=tuple(m.mobile_equipment),
            mobile_use=tuple(m.mobile_use),
            email_use=tuple(m.email_use),
        ),
        provider=rt.provider,
        source=h.name,
        batch_size=h.batch_size,
        default_charset=h.default_charset,
    )
    return Hl7Feed(rt.engine, apply, h)


def _patient_policy(settings: Settings) -> NormalizePolicy:
    """`[patients]`'s normalisation policy, shared by every patient source. An HL7 feed's
    birth dates arrive as ISO dates (the mapping converts PID-7)."""
    p = settings.patients
    return NormalizePolicy(
        default_region=p.default_region,
        landline=p.landline,
        invalid_phone=p.invalid_phone,
        date_formats=tuple(p.date_formats),
    )


def build_message_sources(rt: Runtime) -> Job:
    """The job that turns configured message sources into SMS requests."""
    from syncd.messages.sources import MessageSourcesJob

    return MessageSourcesJob(rt.engine, rt.settings.messages.sources, provider=rt.provider)
