"""F1: FHIR Patient search pages per second; F2: peak RSS of a Bulk NDJSON read vs its size.

F1 serves N synthetic patients from the fixture FHIR server in its own process
(`bench.fhir_child serve`) and reads them all, `page_size` per page, three ways in this
process: a bare httpx loop following the `next` links and parsing the JSON (the baseline:
what the server and HTTP cost, the limit of any reader), the source without validation
(mapping only), and the source as shipped (every Patient validated with fhir.resources).
`ratio` = the source's pages/s over the baseline's.

F2 writes a small and a 10x larger NDJSON export and reads each in a fresh process
(`bench.fhir_child read-bulk`), comparing their peak RSS: the read streams line by line, so
the ratio stays near 1.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.core import Figures, expect
from bench.fhir_child import SYSTEM, patient
from syncd.sources.fhir import FhirPatientSource


@contextmanager
def served(count: int) -> Iterator[str]:
    """The fixture FHIR server with `count` patients in a child process; its FHIR base."""
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.fhir_child", "serve", str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline().strip()
        expect(line.startswith("listening "), line)
        base = line.removeprefix("listening ") + "/fhir"
        with httpx.Client(timeout=30) as probe:
            deadline = time.monotonic() + 60
            while True:
                try:
                    probe.get(f"{base}/metadata").raise_for_status()
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        yield base
    finally:
        child.terminate()
        child.wait(timeout=30)
        if child.stdout is not None:
            child.stdout.close()


def _baseline(base: str, page_size: int) -> tuple[int, int, float]:
    """Pages, resources and seconds of a bare httpx read (JSON parsed, nothing mapped)."""
    pages = resources = 0
    started = time.perf_counter()
    with httpx.Client(timeout=60) as client:
        url: str | None = f"{base}/Patient?_count={page_size}"
        while url is not None:
            body = client.get(url, headers={"Accept": "application/fhir+json"}).json()
            pages += 1
            resources += len(body.get("entry", []))
            url = next((k["url"] for k in body.get("link", []) if k["relation"] == "next"), None)
    return pages, resources, time.perf_counter() - started


def _source(base: str, page_size: int, *, validate: bool) -> tuple[int, int, float]:
    source = FhirPatientSource(
        "bench-fhir", base, identifier_system=SYSTEM, page_size=page_size, validate=validate
    )
    started = time.perf_counter()
    rows = sum(1 for row in source.rows() if row.problem is None)
    seconds = time.perf_counter() - started
    stats = source.last_stats
    assert stats is not None
    return stats.pages, rows, seconds


def run_pages(count: int, page_size: int) -> Figures:
    """F1 (see the module docstring)."""
    expected_pages = math.ceil(count / page_size)
    with served(count) as base:
        _baseline(base, page_size)  # warm-up: both sides' first-request costs
        b_pages, b_rows, b_seconds = _baseline(base, page_size)
        m_pages, m_rows, m_seconds = _source(base, page_size, validate=False)
        v_pages, v_rows, v_seconds = _source(base, page_size, validate=True)
    expect((b_pages, m_pages, v_pages) == (expected_pages,) * 3, (b_pages, m_pages, v_pages))
    expect((b_rows, m_rows, v_rows) == (count,) * 3, (b_rows, m_rows, v_rows))
    return {
        "patients": count,
        "page_size": page_size,
        "pages": v_pages,
        "rows_read": v_rows,
        "baseline_pages_per_s": b_pages / b_seconds,
        "mapped_pages_per_s": m_pages / m_seconds,
        "pages_per_s": v_pages / v_seconds,
        "patients_per_s": v_rows / v_seconds,
        "ratio": (v_pages / v_seconds) / (b_pages / b_seconds),
        "mapped_ratio": (m_pages / m_seconds) / (b_pages / b_seconds),
    }


def write_export(path: Path, count: int) -> Path:
    """A Bulk Data export file of `count` synthetic Patients, one JSON per line."""
    with path.open("w", encoding="utf-8") as out:
        for number in range(count):
            out.write(json.dumps(patient(number), separators=(",", ":")) + "\n")
    return path


def _read_in_child(path: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.fhir_child", "read-bulk", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    report: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return report


def run_bulk_memory(small: int, large: int, folder: Path) -> Figures:
    """F2 (see the module docstring)."""
    low = _read_in_child(write_export(folder / "Patient.small.ndjson", small))
    high = _read_in_child(write_export(folder / "Patient.large.ndjson", large))
    expect((low["rows"], high["rows"]) == (small, large), (low["rows"], high["rows"]))
    expect(low["problems"] + high["problems"] == 0, "synthetic patients must validate")
    return {
        "rows_small": small,
        "rows_large": large,
        "rows_read_small": low["rows"],
        "rows_read_large": high["rows"],
        "peak_rss_small_mb": low["maxrss_kb"] / 1024,
        "peak_rss_large_mb": high["maxrss_kb"] / 1024,
        "ratio": high["maxrss_kb"] / low["maxrss_kb"],
        "us_per_row_large": 1e6 * high["seconds"] / large,
    }
