"""B5: poll N form submissions (list + detail) from the served sandbox, L = 20 ms, C = 16."""

from __future__ import annotations

import asyncio
import resource
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench import env
from bench.core import Figures, expect, run_job
from bench.patients import api_calls, calls_between
from syncd.compose import build_submission_poller

LATENCY_MS = 20.0
CONCURRENCY = 16
_SEED_CHUNK = 100  # submissions sharing one timestamp


def run(submissions: int, folder: Path) -> Figures:
    """Seed `submissions` answered submissions over the last hour, then poll them once."""
    ideal = CONCURRENCY / (LATENCY_MS / 1000)
    with env.served_sandbox(LATENCY_MS) as sandbox, env.database("sqlite", folder) as db_url:
        sandbox.admin.seed_patients(200, id_prefix="bench-")
        start = datetime.now(UTC) - timedelta(hours=1)
        for chunk, offset in enumerate(range(0, submissions, _SEED_CHUNK)):
            sandbox.admin.seed_submissions(
                min(_SEED_CHUNK, submissions - offset),
                status="Completed",
                at=start + timedelta(seconds=chunk),
            )
        config = env.base_config(base_url=sandbox.base_url, db_url=db_url, concurrency=CONCURRENCY)
        config["submissions"] = {
            "enabled": True,
            "page_size": 100,
            "detail_concurrency": CONCURRENCY,
            "max_window_items": 2000,
        }
        settings = env.load_bench_settings(folder, config, env.API_KEY)
        before = api_calls(sandbox)
        assert sandbox.pid is not None
        sandbox_cpu, own_cpu = env.process_cpu_seconds(sandbox.pid), env.own_cpu_seconds()
        own_sys = resource.getrusage(resource.RUSAGE_SELF).ru_stime
        result, elapsed = asyncio.run(
            run_job(settings, build_submission_poller, "poll_submissions")
        )
        sandbox_cpu = env.process_cpu_seconds(sandbox.pid) - sandbox_cpu
        own_cpu = env.own_cpu_seconds() - own_cpu
        own_sys = resource.getrusage(resource.RUSAGE_SELF).ru_stime - own_sys
        after = api_calls(sandbox)
    calls = calls_between(before, after)
    details = calls_between(before, after, "GET /form-submissions/{submission_id}")
    expect(result.counts["emitted"] == submissions, result.counts)
    rate = calls / elapsed
    return {
        "calls_per_s": rate,
        "ideal_per_s": ideal,
        "ratio": rate / ideal,
        "calls": calls,
        "list_calls": calls - details,
        "detail_calls": details,
        "emitted": result.counts["emitted"],
        "relists": result.counts["relists"],
        "splits": result.counts["splits"],
        "seconds": elapsed,
        "sandbox_cpu_ms_per_call": 1000 * sandbox_cpu / calls,
        "daemon_cpu_ms_per_call": 1000 * own_cpu / calls,
        # The kernel's share of it (socket reads, the SQLite WAL writes and fsyncs).
        "daemon_sys_ms_per_call": 1000 * own_sys / calls,
    }
