"""B6's child: one re-sync in a fresh process, printing its counts and peak RSS as JSON.

`python -m bench.rss_child CONFIG_TOML` runs the patient push once through compose and
JobRunner (no API call is expected: the mirror already holds every row) and prints
`{"counts": ..., "seconds": ..., "maxrss_kb": ...}` with `ru_maxrss` of this process.
"""

from __future__ import annotations

import asyncio
import json
import resource
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
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {"counts": dict(result.counts), "seconds": elapsed, "maxrss_kb": usage.ru_maxrss}
        )
    )


if __name__ == "__main__":
    main()
