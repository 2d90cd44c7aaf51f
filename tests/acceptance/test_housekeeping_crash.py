"""kill -9 of housekeeping's run pruning inside a chunk and between chunks, then a rerun:
the job runs left are those an uninterrupted run leaves, and the audit trail accounts for
exactly the runs deleted.

Each case prunes a seeded state database in a subprocess with `SYNCD_CRASH_AT=<step>:<n>`
(the process SIGKILLs itself the n-th time it reaches the step: no rollback, no cleanup),
checks what the kill left, then prunes again without the variable. A twin database with the
same seed, pruned once without a kill, is the reference. SQLite and PostgreSQL.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from syncd.housekeeping import JOB_NAME, STEP_CHUNK_COMMITTED, STEP_DELETED_BEFORE_AUDIT
from syncd.state.models import AuditEntry, JobRun
from syncd.state.runs import SUCCEEDED
from tests.acceptance.conftest import clean_env
from tests.conftest import BACKENDS, migrated_engine, new_postgres_database

KILLED = -signal.SIGKILL
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
KEEP_DAYS = 30
CHUNK = 3  # runs per transaction: the seed below prunes 26 runs in 9 chunks

# `prune_runs` in its own process, as the housekeeping job calls it (with a small chunk).
PRUNE = """\
import sys
from datetime import datetime
from syncd.housekeeping import prune_runs
from syncd.state.db import make_engine
url, keep_days, now, chunk = sys.argv[1:]
engine = make_engine(url)
print(prune_runs(engine, float(keep_days), now=datetime.fromisoformat(now), chunk_size=int(chunk)))
engine.dispose()
"""


@dataclass(frozen=True)
class SeedRun:
    """A job run to seed: its job, outcome and how many days before NOW it ended."""

    job: str
    outcome: str  # "running": started then, never finished
    days_ago: float


def seed_runs() -> list[SeedRun]:
    """Old and recent runs of four jobs, in the order they ended (ids follow time)."""
    runs = [SeedRun("deliver_outbox", "failed" if n % 3 == 0 else "ok", 90 - n) for n in range(12)]
    runs.append(SeedRun("deliver_outbox", "ok", 2))
    # Its latest success and its latest run are both old, and both stay.
    runs.append(SeedRun("push_patients", "ok", 85))
    runs += [SeedRun("push_patients", "failed", 75 - n) for n in range(6)]
    runs.append(SeedRun("poll_submissions", "running", 50))  # never finished: stays
    runs += [SeedRun("poll_submissions", "ok", 65 - n) for n in range(5)]
    runs += [SeedRun("send_messages", "partial", 45 - n) for n in range(6)]
    return sorted(runs, key=lambda run: -run.days_ago)


def expected_kept(ids: dict[int, SeedRun]) -> set[int]:
    """The runs the keep rules keep: unfinished, recent, or a job's latest run or success."""
    kept = {i for i, run in ids.items() if run.outcome == "running" or run.days_ago < KEEP_DAYS}
    for job in {run.job for run in ids.values()}:
        kept.add(max(i for i, run in ids.items() if run.job == job))
        successes = [i for i, run in ids.items() if run.job == job and run.outcome in SUCCEEDED]
        if successes:
            kept.add(max(successes))
    return kept


def seed(engine: Engine) -> dict[int, SeedRun]:
    """Write the seed runs; each by its id."""
    ids = {}
    with Session(engine) as session, session.begin():
        for run in seed_runs():
            ended = NOW - timedelta(days=run.days_ago)
            row = JobRun(
                job=run.job,
                started_at=ended - timedelta(seconds=1),
                finished_at=None if run.outcome == "running" else ended,
                outcome=run.outcome,
            )
            session.add(row)
            session.flush()
            ids[row.id] = run
    return ids


@dataclass(frozen=True)
class Pruned:
    """What a state database holds after pruning: the runs left and the prune audit."""

    run_ids: set[int]
    audits: list[tuple[int, int, int]]  # (runs, first_id, last_id), in the order written


def read(engine: Engine) -> Pruned:
    """The runs left and the audit entries of pruning."""
    with Session(engine) as session:
        run_ids = set(session.scalars(select(JobRun.id)))
        entries = session.scalars(
            select(AuditEntry)
            .where(AuditEntry.actor == JOB_NAME, AuditEntry.action == "job_runs.pruned")
            .order_by(AuditEntry.id)
        )
        audits = []
        for entry in entries:
            fields = dict(part.split("=") for part in (entry.detail or "").split())
            audits.append((int(fields["runs"]), int(fields["first_id"]), int(fields["last_id"])))
    return Pruned(run_ids, audits)


def prune(engine: Engine, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    """Prune in a subprocess, killed at `crash_at` when given."""
    url = engine.url.render_as_string(hide_password=False)
    env = clean_env(SYNCD_CRASH_AT=crash_at) if crash_at else clean_env()
    return subprocess.run(
        [sys.executable, "-c", PRUNE, url, str(KEEP_DAYS), NOW.isoformat(), str(CHUNK)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_audit_accounts_for(pruned: Pruned, seeded: set[int]) -> None:
    """One audit entry per committed chunk: their counts add up to the runs gone, and the
    ids they name are gone and in order, chunk after chunk."""
    gone = seeded - pruned.run_ids
    assert sum(runs for runs, _, _ in pruned.audits) == len(gone)
    assert all(runs == CHUNK for runs, _, _ in pruned.audits[:-1])
    bounds = [i for _, first, last in pruned.audits for i in (first, last)]
    assert bounds == sorted(bounds)
    assert set(bounds) <= gone


@pytest.fixture(params=BACKENDS)
def new_state(request: pytest.FixtureRequest) -> Iterator[Callable[[], Engine]]:
    """Makes fresh migrated state databases on one backend; dropped afterwards."""
    with ExitStack() as stack:
        made = 0

        def make() -> Engine:
            nonlocal made
            made += 1
            if request.param == "sqlite":
                url = f"sqlite:///{request.getfixturevalue('tmp_path')}/state-{made}.db"
            else:
                server = request.getfixturevalue("postgres_server")
                url = stack.enter_context(new_postgres_database(server))
            return stack.enter_context(migrated_engine(url))

        yield make


@pytest.mark.parametrize(
    ("step", "nth", "chunks_done"),
    [
        (STEP_DELETED_BEFORE_AUDIT, 1, 0),  # the first chunk deleted, not audited
        (STEP_DELETED_BEFORE_AUDIT, 4, 3),  # mid-way, inside a chunk
        (STEP_CHUNK_COMMITTED, 2, 2),  # between two chunks
    ],
)
def test_pruning_killed_then_rerun_ends_like_an_uninterrupted_run(
    new_state: Callable[[], Engine], step: str, nth: int, chunks_done: int
) -> None:
    """A kill inside a chunk rolls back its delete with its audit entry, one between chunks
    keeps the chunks committed; the rerun leaves the runs and audit an uninterrupted run
    leaves: each job's latest run and latest success, unfinished and recent runs."""
    reference_engine, engine = new_state(), new_state()
    ids = seed(reference_engine)
    assert seed(engine) == ids
    keep = expected_kept(ids)

    uninterrupted = prune(reference_engine)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]
    reference = read(reference_engine)
    assert reference.run_ids == keep
    assert_audit_accounts_for(reference, set(ids))
    assert len(reference.audits) > nth  # the kill is not in the last chunk

    killed = prune(engine, f"{step}:{nth}")
    assert killed.returncode == KILLED, killed.stderr[-2000:]
    at_kill = read(engine)
    assert len(at_kill.audits) == chunks_done
    assert len(ids) - len(at_kill.run_ids) == chunks_done * CHUNK
    assert at_kill.audits == reference.audits[:chunks_done]
    assert_audit_accounts_for(at_kill, set(ids))

    rerun = prune(engine)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert int(rerun.stdout) == len(ids) - len(keep) - chunks_done * CHUNK
    final = read(engine)
    assert final.run_ids == reference.run_ids
    assert final.audits == reference.audits
