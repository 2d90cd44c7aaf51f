"""Sink isolation: the delivery latency of healthy sinks, beside a healthy and a hanging one.

The real daemon (`syncd.compose` from a TOML file, as `syncd run` builds it, the default
5 s delivery interval and the lease and timeouts it derives) delivers to three sinks: a
webhook receiver that answers at once (`quick`), an NDJSON file (`archive`) and a webhook
receiver (`hanging`) that, in the second phase, accepts every request and never answers
(each request then waits for the sink's 10 s read timeout). A writer emits events at a
steady rate all along. Each phase starts from a fresh state database. For every event the
latency is the time from its commit to its first arrival at `quick` (the receiver's clock)
or in the `archive` file (polled every 20 ms); same process, same monotonic clock.

    .venv/bin/python scripts/sink_isolation.py --seconds 600

Prints, per phase and healthy sink, the count and p50/p95/p99/max latency, and the ratio of
the hanging phase's p99 to the healthy phase's. Exit code 1 when a ratio exceeds 2 or an
event never arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import env  # noqa: E402 (after the path set-up)
from syncd.compose import build_jobs, build_schedules, runtime  # noqa: E402
from syncd.config import Settings  # noqa: E402
from syncd.daemon import Daemon  # noqa: E402
from syncd.jobs import JobRunner  # noqa: E402
from syncd.logging import configure_logging  # noqa: E402
from syncd.outbox.events import emit  # noqa: E402
from syncd.state.db import make_engine, session_factory, upgrade  # noqa: E402

SECRET = "whsec_" + "c2luay1pc29sYXRpb24tc2NyaXB0LXNlY3JldC0zMmI="
HEALTHY_SINKS = ("quick", "archive")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the sink opens up to 16 connections at once

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet on connections the sink gave up on."""


@dataclass
class Receiver:
    """A webhook endpoint in a thread: records each webhook-id's first arrival; answers 204
    at once, or, while `hang` is set, never (until `close`)."""

    hang: bool = False
    arrivals: dict[str, float] = field(default_factory=dict)
    released: threading.Event = field(default_factory=threading.Event)
    _server: _Server | None = None

    def start(self) -> str:
        """Serve on a loopback port; the URL."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                event_id = self.headers.get("webhook-id", "")
                if receiver.hang:
                    receiver.released.wait()
                    return
                receiver.arrivals.setdefault(event_id, time.monotonic())
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self._server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def close(self) -> None:
        """Answer nothing more and stop serving."""
        self.released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class FileWatch:
    """Polls the NDJSON directory and records each event id's first appearance."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.arrivals: dict[str, float] = {}
        self._offsets: dict[Path, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        """Start polling."""
        self._thread.start()

    def close(self) -> None:
        """Stop polling."""
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for path in sorted(self.directory.glob("*.ndjson")):
                with path.open("rb") as handle:
                    handle.seek(self._offsets.get(path, 0))
                    data = handle.read()
                complete = data[: data.rfind(b"\n") + 1]
                self._offsets[path] = self._offsets.get(path, 0) + len(complete)
                seen = time.monotonic()
                for line in complete.splitlines():
                    self.arrivals.setdefault(json.loads(line)["id"], seen)


def settings_for(folder: Path, db_url: str, quick: str, hanging: str) -> Settings:
    """The daemon's configuration: the outbox and its three sinks, every other job off."""
    config = env.base_config(base_url="http://127.0.0.1:9/api/v1/integration", db_url=db_url)
    webhook = {"type": "webhook", "secret": SECRET, "events": ["*"], "start": "beginning"}
    config["outbox"] = {
        "sinks": {
            "quick": {**webhook, "url": quick},
            "hanging": {**webhook, "url": hanging},
            "archive": {
                "type": "file",
                "events": ["*"],
                "start": "beginning",
                "directory": str(folder / "archive"),
            },
        }
    }
    return env.load_bench_settings(folder, config, env.API_KEY)


def emit_steadily(db_url: str, rate: float, seconds: float, emitted: dict[str, float]) -> None:
    """Write one event every 1/rate s for `seconds`; record each id's commit time."""
    engine = make_engine(db_url)
    sessions = session_factory(engine)
    started = time.monotonic()
    n = 0
    try:
        while (due := started + n / rate) < started + seconds:
            time.sleep(max(0.0, due - time.monotonic()))
            with sessions.begin() as session:
                event = emit(
                    session,
                    event_type="form_submission.updated",
                    payload={"n": n, "submissionId": str(uuid.uuid4())},
                    ordering_key=f"P{n % 50}",
                )
            emitted[event.event_id] = time.monotonic()
            n += 1
    finally:
        engine.dispose()


def wait_until(condition: Callable[[], bool], seconds: float) -> None:
    """Poll `condition` every 0.2 s for at most `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.2)


async def run_daemon(settings: Settings, stop: asyncio.Event) -> None:
    """`syncd run` in this process until `stop` is set."""
    async with runtime(settings) as rt:
        await asyncio.to_thread(upgrade, rt.engine)
        jobs = build_jobs(rt)
        daemon = Daemon(JobRunner(rt.engine), build_schedules(rt, jobs))
        task = asyncio.create_task(daemon.run())
        await stop.wait()
        daemon.request_stop()
        await task


@dataclass
class Phase:
    """One phase's latencies per healthy sink (seconds), and the events that never came."""

    latencies: dict[str, list[float]]
    missing: dict[str, int]


@contextlib.contextmanager
def receivers(hang: bool) -> Iterator[tuple[str, Receiver, str]]:
    quick, hanging = Receiver(), Receiver(hang=hang)
    try:
        yield quick.start(), quick, hanging.start()
    finally:
        quick.close()
        hanging.close()


def run_phase(hang: bool, seconds: float, rate: float, drain: float) -> Phase:
    """Emit for `seconds` with the third sink healthy or hanging; wait up to `drain` for
    the healthy sinks to get the last events."""
    with env.workdir() as folder, receivers(hang) as (quick_url, quick, hanging_url):
        db_url = f"sqlite:///{folder}/state.db"
        upgrade(db_url)
        settings = settings_for(folder, db_url, quick_url, hanging_url)
        (folder / "archive").mkdir(mode=0o700)
        watch = FileWatch(folder / "archive")
        watch.start()
        emitted: dict[str, float] = {}

        async def main() -> None:
            stop = asyncio.Event()
            daemon = asyncio.create_task(run_daemon(settings, stop))
            await asyncio.to_thread(emit_steadily, db_url, rate, seconds, emitted)
            await asyncio.to_thread(
                wait_until,
                lambda: set(emitted) <= set(quick.arrivals) and set(emitted) <= set(watch.arrivals),
                drain,
            )
            stop.set()
            await daemon

        try:
            asyncio.run(main())
        finally:
            watch.close()
        arrivals = {"quick": quick.arrivals, "archive": watch.arrivals}
        return Phase(
            latencies={
                sink: [arrivals[sink][i] - t for i, t in emitted.items() if i in arrivals[sink]]
                for sink in HEALTHY_SINKS
            },
            missing={
                sink: sum(1 for i in emitted if i not in arrivals[sink]) for sink in HEALTHY_SINKS
            },
        )


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank above interpolation (statistics.quantiles)."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def summary(phase: Phase) -> dict[str, dict[str, float]]:
    """Per sink: count, missing, p50, p95, p99, max (seconds)."""
    return {
        sink: {
            "events": len(values),
            "missing": phase.missing[sink],
            "p50": round(percentile(values, 50), 3),
            "p95": round(percentile(values, 95), 3),
            "p99": round(percentile(values, 99), 3),
            "max": round(max(values), 3) if values else float("nan"),
        }
        for sink, values in phase.latencies.items()
    }


def main(argv: list[str] | None = None) -> int:
    """Run both phases; print the figures; 1 when isolation does not hold."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="emitting, per phase")
    parser.add_argument("--rate", type=float, default=5.0, help="events per second")
    parser.add_argument("--drain", type=float, default=60.0, help="wait for the last events")
    args = parser.parse_args(argv)
    configure_logging("ERROR", "console")
    figures: dict[str, Any] = {}
    for name, hang in (("healthy", False), ("hanging", True)):
        figures[name] = summary(run_phase(hang, args.seconds, args.rate, args.drain))
        print(name, json.dumps(figures[name]), flush=True)
    ratios = {
        sink: round(figures["hanging"][sink]["p99"] / figures["healthy"][sink]["p99"], 2)
        for sink in HEALTHY_SINKS
    }
    print("p99 ratio (hanging / healthy)", json.dumps(ratios))
    missing = sum(figures[p][s]["missing"] for p in figures for s in HEALTHY_SINKS)
    return 0 if missing == 0 and all(r <= 2 for r in ratios.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
