"""Liveness, readiness and metrics over HTTP, served inside the daemon's own event loop.

    GET /healthz   200 while the main loop's heartbeat is fresh, 503 once it is stale
    GET /readyz    200 when every readiness check passes, 503 naming the ones that failed
    GET /metrics   the Prometheus exposition of `syncd.metrics.REGISTRY`, the extra
                   collectors the app is given (the state database's, `syncd.state_metrics`),
                   and `syncd_readiness_check{check}`: 1 per passing readiness check, 0 failing
    GET /          the clinic admin's status page, when installed (`syncd.status_page`)

The app knows nothing of the rest of the daemon: it is handed a heartbeat (a callable that
returns the monotonic time of the last beat) and named readiness checks (callables that
return None when fine, or a short reason). The check factories at the bottom build the
standard ones from a SQLAlchemy engine; the composition root decides which to install.

Bodies and reasons carry check names, job names, revision ids and exception class names
only, never a database URL, a row or the API key, because probes are often scraped by
systems outside the clinic's data boundary.

The server is uvicorn on a socket we bind ourselves (so a busy port is a `ConfigError`
instead of uvicorn's `sys.exit`), without uvicorn's signal handlers: the daemon owns
SIGTERM and SIGINT and stops the server by cancelling its task.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import structlog
import uvicorn
from alembic.runtime.migration import MigrationContext
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from syncd.exceptions import ConfigError
from syncd.metrics import REGISTRY
from syncd.state.db import reader
from syncd.state.models import JobRun
from syncd.state.runs import SUCCEEDED

log = structlog.get_logger(__name__)

ReadinessCheck = Callable[[], str | None]
"""A readiness check: None when fine, else a short id-only reason. It may block (it runs
in a worker thread), and it may raise: an exception counts as a failure by its class name."""


class Heartbeat:
    """The main loop's proof of life: the loop calls `beat()`, probes read the last beat.

    Calling the instance returns the monotonic time of the last beat, which is the
    `heartbeat` callable `create_health_app` expects. A new heartbeat counts as a beat.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last = clock()

    def beat(self) -> None:
        """Record that the main loop is making progress now."""
        self._last = self._clock()

    def __call__(self) -> float:
        return self._last

    def age(self) -> float:
        """Seconds since the last beat."""
        return self._clock() - self._last

    def is_fresh(self, max_age: float) -> bool:
        """Whether the last beat is at most `max_age` seconds old (for the watchdog)."""
        return self.age() <= max_age


async def heartbeat_task(heartbeat: Heartbeat, interval: float = 5.0) -> None:
    """Beat every `interval` seconds until cancelled.

    Run it in the daemon's event loop: a loop blocked by synchronous work stops beating,
    so /healthz turns 503 and the systemd watchdog (fed only while fresh) restarts us.
    """
    while True:
        heartbeat.beat()
        await asyncio.sleep(interval)


def create_health_app(
    *,
    heartbeat: Callable[[], float],
    readiness_checks: Mapping[str, ReadinessCheck],
    stale_after: float = 60.0,
    check_timeout: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    registry: CollectorRegistry = REGISTRY,
    collectors: Sequence[Collector] = (),
    extra_routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """The health, readiness and metrics app.

    `heartbeat()` returns the `clock()` time of the main loop's last beat; /healthz is 503
    once it is more than `stale_after` seconds old. Each readiness check runs in a small
    dedicated thread pool (they may block on the database) and fails if it takes longer
    than `check_timeout` seconds, so a hung database cannot hang the probe or starve the
    event loop's default executor that the jobs use.

    /metrics runs the readiness checks too (as `syncd_readiness_check`), then collects
    `registry` and `collectors` in that pool: collectors may read the database.
    `extra_routes`: the status page's.
    """
    checks = dict(readiness_checks)
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="syncd-health")

    async def healthz(request: Request) -> Response:
        age = clock() - heartbeat()
        fresh = age <= stale_after
        body = {"status": "ok" if fresh else "stale", "heartbeat_age_seconds": round(age, 3)}
        if not fresh:
            log.warning("health.heartbeat_stale", age_seconds=round(age, 1))
        return JSONResponse(body, status_code=200 if fresh else 503)

    async def failures() -> dict[str, str]:
        failed: dict[str, str] = {}
        for name, check in checks.items():
            reason = await _run_check(name, check, executor, check_timeout)
            if reason is not None:
                failed[name] = reason
        return failed

    async def readyz(request: Request) -> Response:
        failed = await failures()
        passed = [name for name in checks if name not in failed]
        if failed:
            log.warning("health.not_ready", failed=sorted(failed))
        body = {"status": "not_ready" if failed else "ready", "failed": failed, "passed": passed}
        return JSONResponse(body, status_code=503 if failed else 200)

    async def metrics(request: Request) -> Response:
        readiness = _ReadinessCollector(list(checks), await failures())
        sources = [_Passthrough(registry), *collectors, readiness]
        loop = asyncio.get_running_loop()
        body = await loop.run_in_executor(executor, _exposition, sources)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            *extra_routes,
        ]
    )


def _exposition(sources: Sequence[Collector]) -> bytes:
    """One scrape of every source (a registry per scrape: the state collector's families
    exist only while it reads them)."""
    scrape = CollectorRegistry(auto_describe=False)
    for source in sources:
        scrape.register(source)
    return generate_latest(scrape)


class _Passthrough(Collector):
    """A registry seen as one collector of a scrape's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterable[Metric]:
        return self._registry.collect()


class _ReadinessCollector(Collector):
    """`syncd_readiness_check{check}`: what /readyz answered, as a gauge per check."""

    def __init__(self, names: list[str], failed: Mapping[str, str]) -> None:
        self._names = names
        self._failed = failed

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "syncd_readiness_check",
            "1 while the readiness check passes, 0 while it fails (/readyz names why)",
            labels=["check"],
        )
        for name in self._names:
            family.add_metric([name], 0.0 if name in self._failed else 1.0)
        yield family


async def _run_check(
    name: str, check: ReadinessCheck, executor: ThreadPoolExecutor, limit: float
) -> str | None:
    """One check's reason, with a timeout and exceptions reduced to their class name."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(limit):
            return await loop.run_in_executor(executor, check)
    except TimeoutError:
        return f"timed out after {limit:g}s"
    except Exception as exc:
        # The exception's text may quote a URL or a row; its class name cannot.
        log.warning("health.check_raised", check=name, error=type(exc).__name__)
        return f"check raised {type(exc).__name__}"


class _EmbeddedServer(uvicorn.Server):
    """uvicorn that leaves signal handling to the daemon that embeds it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_health_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0 picks a free one).

    Listening before the server starts means early probes queue in the backlog instead
    of being refused. A port that cannot be bound is a configuration problem.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError([f"health.host: cannot listen on {host}:{port} ({_why(exc)})"]) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError([f"health.port: cannot listen on {host}:{port} ({_why(exc)})"]) from None
    return sock


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


async def serve_health(
    app: Starlette, host: str, port: int, *, sock: socket.socket | None = None
) -> None:
    """Serve `app` on host:port until this coroutine's task is cancelled.

    Run it as a task in the daemon's loop. Cancelling the task shuts uvicorn down cleanly
    (listener closed, open connections finished) before the cancellation propagates.
    Pass `sock` (from `bind_health_socket`) to serve an already bound socket.
    """
    listener = sock if sock is not None else bind_health_socket(host, port)
    config = uvicorn.Config(
        app,
        lifespan="off",
        ws="none",
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=2,
    )
    server = _EmbeddedServer(config)
    serving = asyncio.ensure_future(server.serve(sockets=[listener]))
    log.info("health.listening", host=host, port=listener.getsockname()[1])
    try:
        await asyncio.shield(serving)
    except asyncio.CancelledError:
        server.should_exit = True
        await serving
        raise
    finally:
        listener.close()
        log.info("health.stopped")


# --- readiness checks over the state database -------------------------------------------


def database_check(engine: Engine) -> ReadinessCheck:
    """Ready when the state database answers a trivial query."""

    probe = reader(engine)

    def check() -> str | None:
        try:
            with probe.connect() as conn:
                conn.execute(select(1))
        except SQLAlchemyError as exc:
            return f"unreachable ({type(exc).__name__})"
        return None

    return check


def migrations_check(engine: Engine, expected_heads: Collection[str]) -> ReadinessCheck:
    """Ready when the database's Alembic revision is the code's head revision(s).

    `expected_heads` is what `alembic.script.ScriptDirectory.get_heads()` gives for the
    migrations shipped with this code.
    """
    expected = frozenset(expected_heads)
    probe = reader(engine)

    def check() -> str | None:
        try:
            with probe.connect() as conn:
                current = frozenset(MigrationContext.configure(conn).get_current_heads())
        except SQLAlchemyError as exc:
            return f"revision unreadable ({type(exc).__name__})"
        return migration_reason(current, expected)

    return check


def migration_reason(current: Collection[str], expected: Collection[str]) -> str | None:
    """Why a database at `current` revision(s) is not at `expected`, or None if it is."""
    if set(current) == set(expected):
        return None
    if not current:
        return "not migrated: run `syncd db upgrade`"
    return (
        f"at revision {','.join(sorted(current))}, code expects {','.join(sorted(expected))}: "
        "run `syncd db upgrade`"
    )


def job_freshness_check(
    engine: Engine,
    job: str,
    max_age: timedelta,
    *,
    started_at: datetime,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ReadinessCheck:
    """Ready while `job` succeeded within `max_age`, counting from `started_at` at the latest.

    A success is a run that ended `ok` or `partial` (it did its work, or part of it and the
    rest is retried next run; `syncd status` warns about partial runs). A `failed` run never
    refreshes the check, so a job whose runs keep failing (an outage, a wrong key) turns
    stale once its last success is older than `max_age`; the reason says how many runs
    failed since. `started_at` is the daemon's start: a fresh install or a daemon that was
    down for a while gets one `max_age` to complete a run before it is reported stale.
    """
    last_ok = select(func.max(JobRun.finished_at)).where(
        JobRun.job == job, JobRun.outcome.in_(SUCCEEDED)
    )

    probe = reader(engine)

    def check() -> str | None:
        try:
            with probe.connect() as conn:
                last_success = conn.execute(last_ok).scalar_one_or_none()
                failed = select(func.count()).where(JobRun.job == job, JobRun.outcome == "failed")
                if last_success is not None:
                    failed = failed.where(JobRun.finished_at > last_success)
                failures = int(conn.execute(failed).scalar_one())
        except SQLAlchemyError as exc:
            return f"job runs unreadable ({type(exc).__name__})"
        return freshness_reason(
            last_success, now=now(), max_age=max_age, started_at=started_at, failures=failures
        )

    return check


def freshness_reason(
    last_success: datetime | None,
    *,
    now: datetime,
    max_age: timedelta,
    started_at: datetime,
    failures: int = 0,
) -> str | None:
    """Why a job whose last success was `last_success` is stale at `now`, or None if fresh.

    `failures`: runs that failed since that success, named in the reason. Naive datetimes
    are taken as UTC (SQLite returns timezone-aware columns naive).
    """
    reference = _utc(started_at)
    if last_success is not None:
        reference = max(reference, _utc(last_success))
    age = _utc(now) - reference
    if age <= max_age:
        return None
    limit = int(max_age.total_seconds())
    if last_success is None:
        reason = f"no successful run in {int(age.total_seconds())}s (limit {limit}s)"
    else:
        reason = f"last success {int(age.total_seconds())}s ago (limit {limit}s)"
    if failures:
        reason += f"; {failures} failed run{'s' if failures != 1 else ''} since"
    return reason


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
