"""The Voxares client's own CPU per call: `python -m bench.client_cpu [CALLS] [RUNS]`.

CALLS calls of each kind at C = 16 through `VoxaresClient` to the served sandbox with no
latency, timed with `time.process_time` (this process: the event loop and the client,
nothing else): a one-item list page, a ~74 KB submission detail, a patient upsert (POST).
Prints the median and every run per kind; the user-mode share beside it. Used for
BENCHMARKS.md (B5, "the client's own CPU"); not one of `python -m bench`'s groups, since
it has no target of its own.
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

from bench import env
from syncd.logging import configure_logging
from syncd.voxares import ClientLimits, PatientUpsert, VoxaresClient

CONCURRENCY = 16
KINDS = ("list", "detail", "post")


def _user_seconds() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime


async def _one_run(base_url: str, ids: list[str], calls: int) -> dict[str, tuple[float, float]]:
    """Milliseconds of process CPU (and of user-mode CPU) per call, per kind."""
    # The rate limiter runs (as in the daemon) but never binds.
    limits = ClientLimits(max_concurrency=CONCURRENCY, requests_per_second=100_000)
    figures: dict[str, tuple[float, float]] = {}
    async with VoxaresClient(base_url=base_url, api_key=env.API_KEY, limits=limits) as client:

        def call(kind: str, k: int) -> Awaitable[object]:
            if kind == "list":
                return client.list_form_submissions(page_size=1)
            if kind == "detail":
                return client.get_form_submission(ids[k % len(ids)])
            upsert = PatientUpsert(
                provider_id=f"cpu-{k % 200}",
                first_name="Ana",
                last_name="Kovac",
                email="ana@example.org",
            )
            return client.upsert_patient(upsert)

        async def many(
            kind: str, count: int, make: Callable[[str, int], Awaitable[object]]
        ) -> None:
            slots = asyncio.Semaphore(CONCURRENCY)

            async def one(k: int) -> None:
                async with slots:
                    await make(kind, k)

            await asyncio.gather(*(one(k) for k in range(count)))

        for kind in KINDS:
            await many(kind, CONCURRENCY * 2, call)  # connections open, caches warm
            cpu, user = time.process_time(), _user_seconds()
            await many(kind, calls, call)
            figures[kind] = (
                1000 * (time.process_time() - cpu) / calls,
                1000 * (_user_seconds() - user) / calls,
            )
    return figures


def main(calls: int = 1500, runs: int = 5) -> None:
    """Serve the sandbox, seed 100 answered submissions, measure `runs` times."""
    configure_logging("WARNING")
    with env.served_sandbox(0.0) as sandbox:
        sandbox.admin.seed_patients(50, id_prefix="bench-")
        ids = sandbox.admin.seed_submissions(100, status="Completed")
        results = [asyncio.run(_one_run(sandbox.base_url, ids, calls)) for _ in range(runs)]
    for kind in KINDS:
        total = [run[kind][0] for run in results]
        user = [run[kind][1] for run in results]
        print(
            f"{kind:6} {statistics.median(total):.3f} ms/call (user {statistics.median(user):.3f}),"
            f" runs {' '.join(f'{value:.3f}' for value in total)}"
        )


if __name__ == "__main__":
    main(*(int(argument) for argument in sys.argv[1:3]))
