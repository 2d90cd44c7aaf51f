"""B6: peak memory of a re-sync of 1,000,000 rows against one of 100,000.

Each size runs in a fresh subprocess (`bench.rss_child`) whose own peak RSS (`VmHWM`) is
read, so that neither the parent nor an earlier run inflates it. The mirror is filled directly with
the raw-row hashes a previous push would have stored (pushing a million patients through
the sandbox first would take the better part of an hour and measure nothing new): the
re-sync then reads, hashes and looks up every row and makes no API call.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from sqlalchemy import Table

from bench import data, env
from bench.core import Figures, expect, migrate
from bench.patients import patients_config
from syncd.hashing import canonical_json
from syncd.sources.csv import CsvSource
from syncd.state.db import make_engine
from syncd.state.models import PatientMirror

_MIRROR = cast(Table, PatientMirror.__table__)


def seed_mirror(db_url: str, csv_path: Path) -> None:
    """Fill the mirror as if every row of `csv_path` had been pushed (setup)."""
    engine = make_engine(db_url)
    migrate(engine)
    now = datetime.now(UTC)
    source = CsvSource("bench-export", csv_path, columns=data.COLUMNS)
    chunk: list[dict[str, object]] = []
    with engine.begin() as conn:
        for row in source.rows():
            chunk.append(
                {
                    "provider": "bench-ehr",
                    "provider_id": row.fields["providerId"],
                    "voxares_patient_id": str(uuid.uuid4()),
                    "payload_hash": row.raw_hash,
                    "source_row_hash": row.raw_hash,
                    "payload": canonical_json(dict(row.fields)).decode(),
                    "state": "active",
                    "first_pushed_at": now,
                    "last_pushed_at": now,
                    "last_seen_at": now,
                }
            )
            if len(chunk) >= 20_000:
                conn.execute(_MIRROR.insert(), chunk)
                chunk.clear()
        if chunk:
            conn.execute(_MIRROR.insert(), chunk)
    engine.dispose()


def resync_in_child(rows: int, folder: Path) -> dict[str, float]:
    """Seed a mirror of `rows`, re-sync it in a fresh process; its peak RSS and time."""
    export = data.write_patients(folder / f"patients-{rows}.csv", rows)
    with env.database("sqlite", folder) as db_url:
        seed_mirror(db_url, export)
        config = patients_config(
            base_url="http://127.0.0.1:9/api/v1/integration", db_url=db_url, csv_path=export
        )
        path = env.write_config(folder, config)
        out = subprocess.run(
            [sys.executable, "-m", "bench.rss_child", str(path)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    report = json.loads(out.strip().splitlines()[-1])
    counts = report["counts"]
    expect(counts["unchanged"] == rows and counts["failed"] == 0, counts)
    return {"maxrss_mb": report["maxrss_kb"] / 1024, "seconds": report["seconds"]}


def run(small: int, large: int, folder: Path) -> Figures:
    """Both sizes; the ratio of their peaks."""
    low = resync_in_child(small, folder)
    high = resync_in_child(large, folder)
    return {
        "rows_small": small,
        "rows_large": large,
        "peak_rss_small_mb": low["maxrss_mb"],
        "peak_rss_large_mb": high["maxrss_mb"],
        "ratio": high["maxrss_mb"] / low["maxrss_mb"],
        "seconds_small": low["seconds"],
        "seconds_large": high["seconds"],
        "us_per_row_large": 1e6 * high["seconds"] / large,
    }
