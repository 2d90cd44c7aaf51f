"""B1, B1b, B2, B3, B4: pushing patients from a CSV export to the served sandbox.

B1 pushes N new patients (L = 20 ms, C = 16, no rate limit) and compares patients/s with
the most any client can do against that API, C/L. B1b pushes the first 2,000 rows of the
same file through a plain sequential httpx loop in the same run: the in-run baseline.
B3 re-syncs the unchanged file (0 calls expected), B4 the file with every 100th row
changed (exactly 1% calls expected), on SQLite and on PostgreSQL. B2 pushes with the
sandbox's token bucket at 200 req/s and the client limited to 200 req/s.
"""

from __future__ import annotations

import asyncio
import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import data, env
from bench.core import Figures, expect, run_job
from syncd.compose import build_patient_push
from syncd.config import Settings
from syncd.normalize import NormalizePolicy, normalize_row
from syncd.sandbox.server import ServedSandbox
from syncd.sources.base import SourceRow

LATENCY_MS = 20.0
CONCURRENCY = 16
CHANGE_EVERY = 100  # B4: 1% of the rows


@dataclass(frozen=True)
class PushSizes:
    """How many rows each patient benchmark uses."""

    rows: int  # B1, B3, B4
    baseline_rows: int  # B1b
    rate_limited_rows: int  # B2
    batch_size: int = 1000


def patients_config(
    *,
    base_url: str,
    db_url: str,
    csv_path: Path,
    concurrency: int = CONCURRENCY,
    rps: float = env.UNLIMITED_RPS,
    batch_size: int = 1000,
) -> dict[str, Any]:
    """A configuration with only the patient push on, reading `csv_path`."""
    config = env.base_config(base_url=base_url, db_url=db_url, concurrency=concurrency, rps=rps)
    config["patients"] = {
        "enabled": True,
        "default_region": "HR",
        "batch_size": batch_size,
        "source": {
            "type": "csv",
            "name": "bench-export",
            "path": str(csv_path),
            "columns": dict(data.COLUMNS),
        },
    }
    return config


def api_calls(sandbox: ServedSandbox) -> dict[str, int]:
    """Requests the sandbox answered so far, by "METHOD /template status"."""
    stats = sandbox.admin.stats(fingerprints=False)
    return {str(k): int(v) for k, v in stats["requests"].items()}


def calls_between(before: dict[str, int], after: dict[str, int], prefix: str = "") -> int:
    """How many requests (whose label starts with `prefix`) were answered in between."""
    return sum(n - before.get(label, 0) for label, n in after.items() if label.startswith(prefix))


def statuses_between(before: dict[str, int], after: dict[str, int], status: str) -> int:
    """How many requests answered `status` in between."""
    return sum(
        n - before.get(label, 0) for label, n in after.items() if label.endswith(" " + status)
    )


def push(settings: Settings) -> tuple[dict[str, int], float]:
    """One run of the push job (through compose and JobRunner): its counts and seconds."""
    result, elapsed = asyncio.run(run_job(settings, build_patient_push, "push_patients"))
    return dict(result.counts), elapsed


def measured_push(
    sandbox: ServedSandbox, settings: Settings
) -> tuple[dict[str, int], float, int, dict[str, float]]:
    """A push with the calls it made and the CPU both processes spent on it."""
    assert sandbox.pid is not None
    before = api_calls(sandbox)
    sandbox_cpu, own_cpu = env.process_cpu_seconds(sandbox.pid), env.own_cpu_seconds()
    counts, elapsed = push(settings)
    cpu = {
        "sandbox_cpu_s": env.process_cpu_seconds(sandbox.pid) - sandbox_cpu,
        "daemon_cpu_s": env.own_cpu_seconds() - own_cpu,
    }
    calls = calls_between(before, api_calls(sandbox))
    return counts, elapsed, calls, cpu


def sequential_baseline(sandbox: ServedSandbox, csv_path: Path, rows: int) -> float:
    """Patients/s of a plain loop: read a row, normalise it, POST it, wait, next."""
    policy = NormalizePolicy(default_region="HR")
    wire = {column: field for field, column in data.COLUMNS.items()}
    bodies = []
    with csv_path.open(encoding="utf-8", newline="") as handle:
        for n, record in enumerate(csv.DictReader(handle)):
            if n >= rows:
                break
            fields = {wire[column]: value for column, value in record.items()}
            normalised = normalize_row(SourceRow(n + 2, fields, ""), policy)
            expect(not hasattr(normalised, "reason"), "bench data must be valid")
            bodies.append({**normalised.payload(), "provider": "bench-ehr"})  # type: ignore[union-attr]
    headers = {"Authorization": f"Bearer {env.API_KEY}"}
    started = time.perf_counter()
    with httpx.Client(base_url=sandbox.base_url, headers=headers, timeout=30) as client:
        for body in bodies:
            client.post("/patients", json=body).raise_for_status()
    return len(bodies) / (time.perf_counter() - started)


def run_sqlite(sizes: PushSizes, folder: Path) -> dict[str, Figures]:
    """B1, B1b, B3 and B4 on SQLite, in that order, against one sandbox."""
    export = data.write_patients(folder / "patients.csv", sizes.rows)
    changed = data.write_patients(
        folder / "patients-changed.csv", sizes.rows, change_every=CHANGE_EVERY
    )
    ideal = CONCURRENCY / (LATENCY_MS / 1000)
    with env.served_sandbox(LATENCY_MS) as sandbox, env.database("sqlite", folder) as db_url:

        def settings(path: Path) -> Settings:
            return push_settings(folder, sandbox, db_url, path, sizes.batch_size)

        counts, elapsed, calls, cpu = measured_push(sandbox, settings(export))
        expect(counts["created"] == sizes.rows, counts)
        rate = sizes.rows / elapsed
        b1 = {
            "patients_per_s": rate,
            "ideal_per_s": ideal,
            "ratio": rate / ideal,
            "seconds": elapsed,
            "calls": calls,
            "sandbox_cpu_ms_per_call": 1000 * cpu["sandbox_cpu_s"] / calls,
            "daemon_cpu_ms_per_call": 1000 * cpu["daemon_cpu_s"] / calls,
        }
        baseline = sequential_baseline(sandbox, export, sizes.baseline_rows)
        b1b = {"daemon_per_s": rate, "sequential_per_s": baseline, "speedup": rate / baseline}
        b3, b4 = resyncs(sandbox, settings(export), settings(changed), sizes.rows, "sqlite")
    return {"B1": b1, "B1b": b1b, "B3": b3, "B4": b4}


def run_postgres(sizes: PushSizes, folder: Path) -> dict[str, Figures]:
    """B3 and B4 on PostgreSQL: the mirror is filled by a first push at zero latency."""
    export = data.write_patients(folder / "patients.csv", sizes.rows)
    changed = data.write_patients(
        folder / "patients-changed.csv", sizes.rows, change_every=CHANGE_EVERY
    )
    with env.served_sandbox(0.0) as sandbox, env.database("postgres", folder) as db_url:

        def settings(path: Path) -> Settings:
            return push_settings(folder, sandbox, db_url, path, sizes.batch_size)

        counts, _ = push(settings(export))
        expect(counts["created"] == sizes.rows, counts)
        b3, b4 = resyncs(sandbox, settings(export), settings(changed), sizes.rows, "pg")
    return {"B3": b3, "B4": b4}


def push_settings(
    folder: Path, sandbox: ServedSandbox, db_url: str, csv_path: Path, batch_size: int
) -> Settings:
    """Settings of a push of `csv_path` to `sandbox`, with the state in `db_url`."""
    config = patients_config(
        base_url=sandbox.base_url, db_url=db_url, csv_path=csv_path, batch_size=batch_size
    )
    return env.load_bench_settings(folder, config, env.API_KEY)


def resyncs(
    sandbox: ServedSandbox, same: Settings, changed: Settings, rows: int, prefix: str
) -> tuple[Figures, Figures]:
    """B3 (the unchanged export: no call) then B4 (every 100th row changed: 1 % of calls)."""
    b3 = resync(sandbox, same, rows, expect_calls=0, prefix=prefix)
    expected = data.changed_count(rows, CHANGE_EVERY)
    return b3, resync(sandbox, changed, rows, expect_calls=expected, prefix=prefix)


def resync(
    sandbox: ServedSandbox, settings: Settings, rows: int, *, expect_calls: int, prefix: str
) -> Figures:
    """A re-sync: its API calls, µs per row, and whether the calls were the expected ones."""
    counts, elapsed, calls, _ = measured_push(sandbox, settings)
    expect(counts["rows"] == rows, counts)
    return {
        f"{prefix}_calls": calls,
        f"{prefix}_expected_calls": expect_calls,
        f"{prefix}_us_per_row": 1e6 * elapsed / rows,
        f"{prefix}_seconds": elapsed,
        f"{prefix}_updated": counts.get("updated", 0),
    }


def run_rate_limited(sizes: PushSizes, folder: Path, *, burst: int) -> Figures:
    """B2: push with the sandbox's bucket at 200 req/s (`burst`) and the client at 200/s."""
    rate = 200.0
    export = data.write_patients(folder / "patients-b2.csv", sizes.rate_limited_rows)
    limit = {"rps": rate, "burst": burst}
    with (
        env.served_sandbox(LATENCY_MS, rate_limit=limit) as sandbox,
        env.database("sqlite", folder) as db_url,
    ):
        config = patients_config(
            base_url=sandbox.base_url,
            db_url=db_url,
            csv_path=export,
            rps=rate,
            batch_size=sizes.batch_size,
        )
        before = api_calls(sandbox)
        counts, elapsed = push(env.load_bench_settings(folder, config, env.API_KEY))
        after = api_calls(sandbox)
    expect(counts["created"] == sizes.rate_limited_rows, counts)
    calls = calls_between(before, after)
    return {
        "req_per_s": calls / elapsed,
        "ratio": calls / elapsed / rate,
        "calls": calls,
        "status_429": statuses_between(before, after, "429"),
        "burst": burst,
        "rows": sizes.rate_limited_rows,
        "created": counts["created"],
    }
