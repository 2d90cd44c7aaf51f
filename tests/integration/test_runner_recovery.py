"""JobRunner recovers the run records a crashed process left behind."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from syncd.jobs import JobRunner
from syncd.state.db import make_engine, upgrade
from syncd.state.models import JobRun
from syncd.state.runs import start_run


class _CountingJob:
    name = "count_things"

    async def run(self, run_id: int) -> dict[str, int]:
        return {"things": 3}


async def test_a_run_left_running_is_marked_interrupted_by_the_next_run(sqlite_url: str) -> None:
    """A `running` record of the same job (its process died) becomes `interrupted`; other
    jobs' running records are left alone (a peer may be running them)."""
    engine = make_engine(sqlite_url)
    upgrade(engine)
    crashed = start_run(engine, "count_things")
    peer = start_run(engine, "another_job")

    result = await JobRunner(engine).run_once(_CountingJob())

    with Session(engine) as session:
        outcomes: dict[int, Any] = {
            r.id: (r.outcome, r.error) for r in session.scalars(select(JobRun))
        }
    engine.dispose()
    assert result.outcome == "ok"
    assert result.counts == {"things": 3}
    assert outcomes[crashed] == ("interrupted", "process ended mid-run")
    assert outcomes[peer][0] == "running"
    assert result.run_id is not None
    assert outcomes[result.run_id][0] == "ok"
