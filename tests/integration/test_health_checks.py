"""Readiness checks against a real state database (SQLite, and PostgreSQL when running)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Column, Engine, MetaData, String, Table, create_engine, insert

from syncd.health import (
    database_check,
    freshness_reason,
    job_freshness_check,
    migration_reason,
    migrations_check,
)
from syncd.state.models import Base, JobRun

NOW = datetime(2025, 5, 20, 9, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """An engine on an empty state database of each supported kind."""
    url_fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    engine = create_engine(request.getfixturevalue(url_fixture))
    try:
        yield engine
    finally:
        engine.dispose()


def add_run(engine: Engine, job: str, outcome: str, finished_at: datetime) -> None:
    """Record one finished job run."""
    with engine.begin() as conn:
        conn.execute(
            insert(JobRun).values(
                job=job,
                started_at=finished_at - timedelta(seconds=5),
                finished_at=finished_at,
                outcome=outcome,
                counts="{}",
            )
        )


def stamp(engine: Engine, revision: str) -> None:
    """Write an Alembic version row as `alembic stamp` would."""
    table = Table("alembic_version", MetaData(), Column("version_num", String(32)))
    with engine.begin() as conn:
        table.create(conn)
        conn.execute(insert(table).values(version_num=revision))


def test_database_check_passes_on_reachable_db(engine: Engine) -> None:
    """A database that answers SELECT 1 is ready."""
    assert database_check(engine)() is None


def test_database_check_names_error_class_only(tmp_path: object) -> None:
    """An unreachable database fails with the error class, never its path or URL."""
    engine = create_engine(f"sqlite:///{tmp_path}/missing-dir/secret-name.db")
    try:
        reason = database_check(engine)()
    finally:
        engine.dispose()
    assert reason == "unreachable (OperationalError)"


def test_migrations_check(engine: Engine) -> None:
    """Readiness follows the Alembic revision: none, the head, or another revision."""
    assert migrations_check(engine, ["a1"])() == "not migrated: run `syncd db upgrade`"
    stamp(engine, "a1")
    assert migrations_check(engine, ["a1"])() is None
    assert migrations_check(engine, ["b2"])() == (
        "at revision a1, code expects b2: run `syncd db upgrade`"
    )


def test_job_freshness_check(engine: Engine) -> None:
    """A job is ready while its last ok run is within max_age; failed runs do not count,
    and the reason says how many failed since."""
    Base.metadata.create_all(engine)
    add_run(engine, "patients", "failed", NOW - timedelta(minutes=40))
    add_run(engine, "patients", "ok", NOW - timedelta(minutes=20))
    add_run(engine, "patients", "failed", NOW - timedelta(minutes=1))
    add_run(engine, "poll", "ok", NOW - timedelta(minutes=1))
    long_ago = NOW - timedelta(days=1)

    def check(job: str, minutes: int) -> str | None:
        return job_freshness_check(
            engine, job, timedelta(minutes=minutes), started_at=long_ago, now=lambda: NOW
        )()

    assert check("patients", 30) is None
    assert check("patients", 10) == "last success 1200s ago (limit 600s); 1 failed run since"
    assert check("content", 10) == "no successful run in 86400s (limit 600s)"


def test_a_partial_run_keeps_a_job_fresh_and_failed_runs_do_not(engine: Engine) -> None:
    """A partial run (work done, some items retried next run) counts as a success; a job
    whose runs all failed within max_age is stale, with the failures named."""
    Base.metadata.create_all(engine)
    add_run(engine, "push_patients", "partial", NOW - timedelta(minutes=5))
    add_run(engine, "send_messages", "ok", NOW - timedelta(minutes=70))
    for minutes in (50, 35, 20):
        add_run(engine, "send_messages", "failed", NOW - timedelta(minutes=minutes))
    long_ago = NOW - timedelta(days=1)

    def check(job: str) -> str | None:
        return job_freshness_check(
            engine, job, timedelta(minutes=30), started_at=long_ago, now=lambda: NOW
        )()

    assert check("push_patients") is None
    assert check("send_messages") == "last success 4200s ago (limit 1800s); 3 failed runs since"


def test_job_freshness_check_without_table(tmp_path: object) -> None:
    """A database without the job_runs table fails the check by error class."""
    engine = create_engine(f"sqlite:///{tmp_path}/empty.db")
    try:
        reason = job_freshness_check(engine, "poll", timedelta(minutes=5), started_at=NOW)()
    finally:
        engine.dispose()
    assert reason == "job runs unreadable (OperationalError)"


@pytest.mark.parametrize(
    ("last_success", "started_ago", "expected"),
    [
        (timedelta(minutes=5), timedelta(days=1), None),
        (timedelta(minutes=10), timedelta(days=1), None),  # the limit itself is still fresh
        (timedelta(minutes=11), timedelta(days=1), "last success 660s ago (limit 600s)"),
        (None, timedelta(minutes=3), None),  # just started: one max_age of grace
        (None, timedelta(minutes=15), "no successful run in 900s (limit 600s)"),
        (timedelta(days=2), timedelta(minutes=3), None),  # restarted after downtime
    ],
)
def test_freshness_reason(
    last_success: timedelta | None, started_ago: timedelta, expected: str | None
) -> None:
    """Freshness counts from the later of the last success and the daemon's start."""
    reason = freshness_reason(
        None if last_success is None else NOW - last_success,
        now=NOW,
        max_age=timedelta(minutes=10),
        started_at=NOW - started_ago,
    )
    assert reason == expected


def test_freshness_reason_naive_is_utc() -> None:
    """A naive timestamp (SQLite) is read as UTC, not local time."""
    naive = (NOW - timedelta(minutes=11)).replace(tzinfo=None)
    reason = freshness_reason(
        naive, now=NOW, max_age=timedelta(minutes=10), started_at=NOW - timedelta(days=1)
    )
    assert reason == "last success 660s ago (limit 600s)"


def test_migration_reason_with_several_heads() -> None:
    """Several heads are named sorted, and equal sets in any order are current."""
    assert migration_reason(["b", "a"], ["a", "b"]) is None
    assert migration_reason(["b"], ["c", "a"]) == (
        "at revision b, code expects a,c: run `syncd db upgrade`"
    )
