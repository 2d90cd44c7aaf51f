"""The health app served by uvicorn on a real loopback port, as the daemon runs it."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping

import httpx
import pytest
import structlog
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from starlette.applications import Starlette

from syncd.exceptions import ConfigError
from syncd.health import (
    Heartbeat,
    ReadinessCheck,
    bind_health_socket,
    create_health_app,
    heartbeat_task,
    serve_health,
)
from syncd.metrics import JOB_RUNS
from tests.waiting import async_wait_until


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Serve = Callable[[Starlette], Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def served() -> AsyncIterator[Serve]:
    """Serve apps on free loopback ports; stop every server at the end of the test."""
    tasks: list[asyncio.Task[None]] = []
    clients: list[httpx.AsyncClient] = []

    async def start(app: Starlette) -> httpx.AsyncClient:
        sock = bind_health_socket("127.0.0.1", 0)
        port = sock.getsockname()[1]
        tasks.append(asyncio.create_task(serve_health(app, "127.0.0.1", port, sock=sock)))
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60)
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.aclose()
    for task in tasks:
        task.cancel()
    for task in tasks:
        with pytest.raises(asyncio.CancelledError):
            await task


def app_with(
    checks: Mapping[str, ReadinessCheck] | None = None,
    clock: Clock | None = None,
    heartbeat: Callable[[], float] | None = None,
    check_timeout: float = 5.0,
) -> Starlette:
    """A health app with a fresh heartbeat and the given checks."""
    clock = clock or Clock()
    return create_health_app(
        heartbeat=heartbeat or clock,
        readiness_checks=checks or {},
        stale_after=30.0,
        check_timeout=check_timeout,
        clock=clock,
    )


async def test_healthz_ok_then_stale(served: Serve) -> None:
    """/healthz answers 200 while the heartbeat is recent and 503 once it is stale."""
    clock = Clock()
    last_beat = clock.now
    client = await served(app_with(clock=clock, heartbeat=lambda: last_beat))

    fresh = await client.get("/healthz")
    clock.now += 31
    stale = await client.get("/healthz")

    assert fresh.status_code == 200
    assert fresh.json()["status"] == "ok"
    assert stale.status_code == 503
    assert stale.json() == {"status": "stale", "heartbeat_age_seconds": 31.0}


async def test_heartbeat_task_keeps_healthz_fresh(
    served: Serve,
) -> None:
    """A running heartbeat_task keeps /healthz at 200; a stopped one lets it go stale."""
    clock = Clock()
    beat = Heartbeat(clock)
    beating = asyncio.create_task(heartbeat_task(beat, interval=0.01))
    app = create_health_app(heartbeat=beat, readiness_checks={}, stale_after=30, clock=clock)
    client = await served(app)

    clock.now += 100  # long past stale, unless the task beats again
    await async_wait_until(lambda: beat() == clock.now, "a beat after the clock moved")
    alive = await client.get("/healthz")
    beating.cancel()
    with pytest.raises(asyncio.CancelledError):
        await beating
    clock.now += 31
    dead = await client.get("/healthz")

    assert alive.status_code == 200
    assert dead.status_code == 503
    assert beat.is_fresh(30) is False


async def test_readyz_all_pass(served: Serve) -> None:
    """/readyz is 200 and lists every check as passed when all return None."""
    client = await served(app_with({"database": lambda: None, "job:patients": lambda: None}))

    answer = await client.get("/readyz")

    assert answer.status_code == 200
    assert answer.json() == {
        "status": "ready",
        "failed": {},
        "passed": ["database", "job:patients"],
    }


async def test_readyz_names_failures(served: Serve) -> None:
    """/readyz is 503 and names each failed check with its reason."""
    checks: dict[str, ReadinessCheck] = {
        "database": lambda: None,
        "migrations": lambda: "not migrated: run `syncd db upgrade`",
        "job:poll": lambda: "last success 900s ago (limit 600s)",
    }
    client = await served(app_with(checks))

    answer = await client.get("/readyz")

    assert answer.status_code == 503
    assert answer.json() == {
        "status": "not_ready",
        "failed": {
            "migrations": "not migrated: run `syncd db upgrade`",
            "job:poll": "last success 900s ago (limit 600s)",
        },
        "passed": ["database"],
    }


async def test_raising_check_reports_class_only(
    served: Serve,
) -> None:
    """A check that raises fails by exception class; its message (maybe data) is not shown."""

    def leaky() -> str | None:
        raise RuntimeError("postgresql://syncd:hunter2@db/state patient Jane Doe")

    client = await served(app_with({"database": leaky}))
    with structlog.testing.capture_logs() as logs:
        answer = await client.get("/readyz")

    assert answer.status_code == 503
    assert answer.json()["failed"] == {"database": "check raised RuntimeError"}
    assert "hunter2" not in answer.text
    assert "Jane" not in repr(logs)
    raised = [e for e in logs if e["event"] == "health.check_raised"]
    assert raised == [
        {
            "event": "health.check_raised",
            "check": "database",
            "error": "RuntimeError",
            "log_level": "warning",
        }
    ]


async def test_hung_check_times_out(served: Serve) -> None:
    """A check that blocks is reported as timed out instead of hanging the probe."""
    release = threading.Event()

    def hung() -> str | None:
        release.wait(120)  # until the test is over: the check never returns in time
        return None

    client = await served(app_with({"database": hung}, check_timeout=0.5))
    started = time.monotonic()
    try:
        answer = await client.get("/readyz")
    finally:
        release.set()
    elapsed = time.monotonic() - started

    assert answer.status_code == 503
    assert answer.json()["failed"] == {"database": "timed out after 0.5s"}
    assert elapsed < 30  # answered after the check's timeout, not after the hung check


async def test_metrics_exposes_registry(served: Serve) -> None:
    """/metrics serves syncd.metrics.REGISTRY in the Prometheus text format."""
    JOB_RUNS.labels(job="health-test", outcome="ok").inc()
    client = await served(app_with())

    answer = await client.get("/metrics")

    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    assert 'syncd_job_runs_total{job="health-test",outcome="ok"}' in answer.text


class OneGauge:
    """A scrape-time collector with one gauge (stands for the state database's)."""

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("syncd_test_collected", "collected per scrape", labels=["x"])
        family.add_metric(["y"], 7.0)
        yield family


async def test_metrics_exposes_readiness_and_extra_collectors(served: Serve) -> None:
    """/metrics shows each readiness check as 1 (passing) or 0 (failing), and what the
    app's extra collectors yield, beside the registry."""
    failing = "migrations"
    app = create_health_app(
        heartbeat=Clock(),
        readiness_checks={"database": lambda: None, failing: lambda: "not migrated"},
        clock=Clock(),
        collectors=[OneGauge()],
    )
    client = await served(app)

    answer = await client.get("/metrics")

    assert answer.status_code == 200
    assert 'syncd_readiness_check{check="database"} 1.0' in answer.text
    assert 'syncd_readiness_check{check="migrations"} 0.0' in answer.text
    assert 'syncd_test_collected{x="y"} 7.0' in answer.text
    assert "syncd_job_runs_total" in answer.text


async def test_serving_leaves_signal_handlers_alone(
    served: Serve,
) -> None:
    """uvicorn embedded by serve_health installs no SIGTERM/SIGINT handlers of its own."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    client = await served(app_with())

    assert (await client.get("/healthz")).status_code == 200
    during = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    assert during == before


async def test_cancel_closes_the_port() -> None:
    """Cancelling the serve_health task shuts the server down and frees the port."""
    sock = bind_health_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    task = asyncio.create_task(serve_health(app_with(), "127.0.0.1", port, sock=sock))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        assert (await client.get("/healthz")).status_code == 200

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=60)

    with pytest.raises(OSError, match="refused"):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


async def test_serve_binds_host_and_port_itself() -> None:
    """Without a socket, serve_health binds host:port from the configuration."""
    free = bind_health_socket("127.0.0.1", 0)
    port = free.getsockname()[1]
    free.close()
    task = asyncio.create_task(serve_health(app_with(), "127.0.0.1", port))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    answer = await client.get("/healthz")
                    break
                except httpx.ConnectError:  # the task binds on its first steps
                    assert time.monotonic() < deadline, "the server never bound its port"
                    await asyncio.sleep(0.02)
        assert answer.status_code == 200
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_busy_port_is_a_config_error() -> None:
    """A port already in use is reported as a ConfigError naming health.port."""
    taken = bind_health_socket("127.0.0.1", 0)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(
            ConfigError, match=rf"health\.port: cannot listen on 127\.0\.0\.1:{port}"
        ):
            bind_health_socket("127.0.0.1", port)
    finally:
        taken.close()
