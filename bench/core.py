"""What a benchmark returns, how runs are combined, and how the table is printed."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from syncd.compose import Runtime, runtime
from syncd.config import Settings
from syncd.daemon import freeze_start_up_objects
from syncd.jobs import Job, JobRunner, RunResult
from syncd.state.db import upgrade

Figures = dict[str, float]


@dataclass(frozen=True)
class Bench:
    """One benchmark's row of the table: what it measures and how its target is judged.

    `ratio` names the figure compared with the target, `check` says whether a run's
    figures meet it (None: the figure is only reported).
    """

    id: str
    work: str
    ratio: str
    target: str
    check: Callable[[Mapping[str, float]], bool] | None


@dataclass
class Outcome:
    """Every run's figures of one benchmark, and their medians."""

    bench: Bench
    runs: list[Figures] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def median(self) -> Figures:
        """The median of each figure over the runs."""
        keys = {key for run in self.runs for key in run}
        return {
            key: statistics.median(run[key] for run in self.runs if key in run)
            for key in sorted(keys)
        }

    def met(self) -> bool | None:
        """Whether the median meets the target (None when there is no target)."""
        if self.bench.check is None or not self.runs:
            return None
        return self.bench.check(self.median())

    def as_json(self) -> dict[str, Any]:
        """The outcome as plain JSON values."""
        return {
            "work": self.bench.work,
            "ratio_figure": self.bench.ratio,
            "target": self.bench.target,
            "met": self.met(),
            "median": self.median(),
            "runs": self.runs,
            "notes": self.notes,
        }


async def run_job(
    settings: Settings, build: Callable[[Runtime], Job], name: str
) -> tuple[RunResult, float]:
    """Build one job through `syncd.compose` and run it once through `JobRunner`.

    Returns the run's result and its wall time in seconds (the migration of the state
    database, done first as `syncd db upgrade` would, is not timed).
    """
    async with runtime(settings) as rt:
        await asyncio.to_thread(upgrade, rt.engine)
        job = build(rt)
        job.name = name
        freeze_start_up_objects()  # as the daemon does once composed
        started = time.perf_counter()
        result = await JobRunner(rt.engine).run_once(job)
        elapsed = time.perf_counter() - started
    if result.outcome != "ok":
        raise RuntimeError(f"{name} ended {result.outcome}: {result.error}")
    return result, elapsed


def migrate(engine: Engine) -> None:
    """Create or migrate a state database (setup, never timed)."""
    upgrade(engine)


def format_table(outcomes: list[Outcome]) -> str:
    """The results table: id, work, the ratio figure's median, target, verdict."""
    lines = [f"{'id':<5} {'figure':<28} {'median':>12}  {'target':<16} {'met':<4} work"]
    for outcome in outcomes:
        median = outcome.median()
        value = median.get(outcome.bench.ratio)
        shown = "-" if value is None else f"{value:,.3f}"
        met = {True: "yes", False: "NO", None: "-"}[outcome.met()]
        lines.append(
            f"{outcome.bench.id:<5} {outcome.bench.ratio:<28} {shown:>12}  "
            f"{outcome.bench.target:<16} {met:<4} {outcome.bench.work}"
        )
    return "\n".join(lines)


def expect(condition: bool, what: object) -> None:
    """Stop the benchmark when its work did not go as it must (kept under `python -O`)."""
    if not condition:
        raise RuntimeError(f"benchmark precondition failed: {what}")
