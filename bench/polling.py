"""B9 steady-state polling and B10 the reconciliation sweep, against the served sandbox.

B9: after a first poll has caught up with `initial` answered submissions, `cycles` times:
write `per_cycle` new versions at the sandbox (half new submissions answered, half
answers to submissions that were pending), wait one poll interval, poll. Reported: detail
GETs per new version (1.0 is the physical minimum: every new version's answers must be
read once; the overlap re-lists known versions and must read none of them), list calls per
poll, response bytes read per new version, and the end-to-end latency from a version's
`updatedAt` on the server to its outbox event's commit (p50/p99; the floor is
`settle_seconds` plus up to one interval, the poller's documented visibility delay).

B10: then one reconciliation sweep (`syncd sync reconcile`'s path) over everything
recorded: list calls only (one per 100 submissions, plus the one that reads the server's
clock), no detail read, seconds per sweep.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from bench import env
from bench.core import Figures, expect, migrate
from bench.patients import api_calls, calls_between
from syncd.compose import build_submission_poller, runtime
from syncd.jobs import JobRunner
from syncd.state.models import OutboxEvent
from syncd.submissions.poller import SubmissionPoller
from syncd.voxares import client as voxares_client
from syncd.voxares.contract import parse_timestamp

LATENCY_MS = 20.0
CONCURRENCY = 16
SETTLE_SECONDS = 1.0
OVERLAP_SECONDS = 10.0
INTERVAL_SECONDS = 1.0
DETAIL = "GET /form-submissions/{submission_id}"


@contextmanager
def _bytes_read() -> Iterator[list[int]]:
    """Count the response body bytes the Voxares client reads (a measuring wrapper)."""
    total = [0]
    original = voxares_client.json_or_none

    def counting(response: httpx.Response) -> Any:
        total[0] += len(response.content)
        return original(response)

    voxares_client.json_or_none = counting
    try:
        yield total
    finally:
        voxares_client.json_or_none = original


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


def run(initial: int, cycles: int, per_cycle: int, folder: Path) -> dict[str, Figures]:
    """B9 and B10 on one sandbox and one state database."""
    with env.served_sandbox(LATENCY_MS) as sandbox, env.database("sqlite", folder) as db_url:
        sandbox.admin.seed_patients(200, id_prefix="bench-")
        start = datetime.now(UTC) - timedelta(hours=1)
        for offset in range(0, initial, 100):
            sandbox.admin.seed_submissions(
                min(100, initial - offset),
                status="Completed",
                at=start + timedelta(seconds=offset // 100),
            )
        pending = sandbox.admin.seed_submissions(
            cycles * (per_cycle // 2), status="Pending", at=start + timedelta(minutes=30)
        )
        config = env.base_config(base_url=sandbox.base_url, db_url=db_url, concurrency=CONCURRENCY)
        config["submissions"] = {
            "enabled": True,
            "page_size": 100,
            "detail_concurrency": CONCURRENCY,
            "max_window_items": 2000,
            "settle_seconds": SETTLE_SECONDS,
            "overlap_seconds": OVERLAP_SECONDS,
            "interval_seconds": INTERVAL_SECONDS,
            # The sweeps are B10's, run by hand below, not at the end of a poll.
            "sweep_interval_seconds": 0,
            "deep_sweep_interval_seconds": 0,
        }
        settings = env.load_bench_settings(folder, config, env.API_KEY)
        return asyncio.run(_measure(settings, sandbox, pending, cycles, per_cycle, start))


async def _measure(
    settings: Any,
    sandbox: Any,
    pending: list[str],
    cycles: int,
    per_cycle: int,
    start: datetime,
) -> dict[str, Figures]:
    async with runtime(settings) as rt:
        await asyncio.to_thread(migrate, rt.engine)
        job = build_submission_poller(rt)
        runner = JobRunner(rt.engine)
        first = await runner.run_once(job)
        expect(first.outcome == "ok", first)
        with rt.engine.connect() as connection:
            first_seq = connection.scalar(select(func.max(OutboxEvent.seq))) or 0
        written = 0
        polls = 0
        before = await asyncio.to_thread(api_calls, sandbox)
        with _bytes_read() as read:
            for cycle in range(cycles):
                half = per_cycle // 2
                await asyncio.to_thread(
                    sandbox.admin.seed_submissions, per_cycle - half, status="Completed"
                )
                for submission_id in pending[cycle * half : (cycle + 1) * half]:
                    await asyncio.to_thread(sandbox.admin.transition, submission_id, "Completed")
                written += per_cycle
                await asyncio.sleep(INTERVAL_SECONDS)
                result = await runner.run_once(job)
                expect(result.outcome == "ok", result)
                polls += 1
            # The last versions become visible `settle` after they were written.
            await asyncio.sleep(SETTLE_SECONDS + 0.5)
            result = await runner.run_once(job)
            expect(result.outcome == "ok", result)
            polls += 1
        after = await asyncio.to_thread(api_calls, sandbox)
        latencies = _latencies(rt.engine, first_seq)
        expect(len(latencies) == written, (len(latencies), written))
        details = calls_between(before, after, DETAIL)
        lists = calls_between(before, after) - details

        # Every submission once: the sweep lists each one's latest version.
        submissions = first.counts["emitted"] + cycles * (per_cycle - per_cycle // 2)
        assert isinstance(job, SubmissionPoller)
        before = await asyncio.to_thread(api_calls, sandbox)
        started = time.perf_counter()
        swept = await job.reconcile(None, since=start - timedelta(minutes=1))
        sweep_seconds = time.perf_counter() - started
        after = await asyncio.to_thread(api_calls, sandbox)
    expect(swept.sweep_found == 0, swept)
    b9: Figures = {
        "details_per_new_version": details / written,
        "list_calls_per_poll": lists / polls,
        "kb_read_per_new_version": read[0] / 1024 / written,
        "latency_p50_s": statistics.median(latencies),
        "latency_p99_s": _percentile(latencies, 0.99),
        "new_versions": written,
        "polls": polls,
        "detail_calls": details,
        "list_calls": lists,
    }
    sweep_details = calls_between(before, after, DETAIL)
    sweep_lists = calls_between(before, after) - sweep_details
    b10: Figures = {
        "submissions": submissions,
        "list_calls": sweep_lists,
        "detail_calls": sweep_details,
        "list_calls_per_100_submissions": 100 * sweep_lists / submissions,
        "seconds_per_sweep": sweep_seconds,
        # Extra passes over a window whose listing did not add up, and windows halved.
        "relists": swept.relists,
        "splits": swept.splits,
    }
    return {"B9": b9, "B10": b10}


def _latencies(engine: Any, after_seq: int) -> list[float]:
    """Seconds from each event's version `updatedAt` to the event's commit (its created_at)."""
    query = select(OutboxEvent.payload, OutboxEvent.created_at).where(OutboxEvent.seq > after_seq)
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    latencies = []
    for payload, created_at in rows:
        updated = parse_timestamp(json.loads(payload)["submission"]["updatedAt"])
        committed = created_at if created_at.tzinfo else created_at.replace(tzinfo=UTC)
        latencies.append((committed - updated).total_seconds())
    return latencies
