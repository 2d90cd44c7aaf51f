"""B6's child: one re-sync in a fresh process, printing its counts and peak RSS as JSON.

`python -m bench.rss_child CONFIG_TOML` runs the patient push once through compose and
JobRunner (no API call is expected: the mirror already holds every row) and prints
`{"counts": ..., "seconds": ..., "maxrss_kb": ...}` with the peak RSS of this process.

The peak is `VmHWM` from /proc/self/status, not `ru_maxrss`: Linux carries the parent's
high-water mark across fork and exec into `ru_maxrss`, so a child started by a benchmark
runner that had grown to 250 MB reported 250 MB whatever it used itself.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from bench import env
from bench.core import run_job
from syncd.compose import build_patient_push
from syncd.config import load_settings
from syncd.logging import configure_logging


def main() -> None:
    """Entry point."""
    configure_logging("WARNING", "json")
    settings = load_settings(Path(sys.argv[1]), env={"SYNCD_VOXARES__API_KEY": env.API_KEY})
    result, elapsed = asyncio.run(run_job(settings, build_patient_push, "push_patients"))
    print(
        json.dumps({"counts": dict(result.counts), "seconds": elapsed, "maxrss_kb": peak_rss_kb()})
    )


def peak_rss_kb() -> int:
    """This process's peak resident set size in KiB (`VmHWM`, reset by exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


if __name__ == "__main__":
    main()
