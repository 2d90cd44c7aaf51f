"""The state database engine: SQLite file safety and durability, PostgreSQL session setup,
aware UTC timestamps, and the migration check."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, select, text
from sqlalchemy.exc import OperationalError, StatementError

from syncd.exceptions import DatabaseNotMigrated, StateError
from syncd.state.db import (
    check_migrated,
    current_revision,
    database_url_problem,
    head_revisions,
    make_engine,
    normalize_url,
    session_factory,
    upgrade,
)
from syncd.state.models import JobLock


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    """A migrated SQLite state database."""
    engine = make_engine(sqlite_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def postgres_engine(postgres_url: str) -> Iterator[Engine]:
    """A migrated PostgreSQL state database."""
    engine = make_engine(postgres_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest) -> Engine:
    """A migrated state database on each backend."""
    return request.getfixturevalue(f"{request.param}_engine")  # type: ignore[no-any-return]


# --- SQLite file ---------------------------------------------------------------------------------


def test_sqlite_file_and_wal_files_are_private(tmp_path: Path) -> None:
    """The database, its -wal and -shm files are 0600 even under a permissive umask."""
    path = tmp_path / "sub" / "state.db"
    old_umask = os.umask(0o022)
    try:
        engine = make_engine(f"sqlite:///{path}")
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
            conn.execute(text("INSERT INTO t VALUES (1)"))
        files = {p.name: mode(p) for p in path.parent.iterdir()}
        engine.dispose()
    finally:
        os.umask(old_umask)
    assert files == {"state.db": 0o600, "state.db-wal": 0o600, "state.db-shm": 0o600}
    assert mode(path.parent) == 0o700


def test_existing_readable_file_is_tightened(tmp_path: Path) -> None:
    """An existing database readable by others is made 0600."""
    path = tmp_path / "state.db"
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    make_engine(f"sqlite:///{path}").dispose()
    assert mode(path) == 0o600


def test_sqlite_pragmas(sqlite_url: str) -> None:
    """Every connection runs WAL, synchronous=FULL, foreign keys and the busy timeout."""
    engine = make_engine(sqlite_url, busy_timeout_ms=1234)
    with engine.connect() as conn:
        values = [
            conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        ]
    engine.dispose()
    assert values == ["wal", 2, 1, 1234]


def test_sqlite_transactions_take_the_write_lock_at_begin(sqlite_url: str) -> None:
    """BEGIN IMMEDIATE: a second transaction waits for the first, then fails after the
    busy timeout, instead of both reading and one failing when it writes."""
    engine = make_engine(sqlite_url, busy_timeout_ms=100)
    with engine.connect() as first, engine.connect() as second:
        first.begin()
        first.execute(text("SELECT 1"))
        with pytest.raises(OperationalError, match="database is locked"):
            second.begin()
        first.rollback()
    engine.dispose()


def test_sqlite_memory_database_works() -> None:
    """An in-memory SQLite URL creates no file and still migrates."""
    engine = make_engine("sqlite://")
    upgrade(engine)
    assert current_revision(engine) == head_revisions()[0]
    engine.dispose()


# --- PostgreSQL session --------------------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_session_settings(postgres_engine: Engine) -> None:
    """PostgreSQL sessions commit synchronously and speak UTC."""
    with postgres_engine.connect() as conn:
        assert conn.execute(text("SHOW synchronous_commit")).scalar() == "on"
        assert conn.execute(text("SHOW timezone")).scalar() == "UTC"


def test_plain_postgresql_url_means_psycopg3() -> None:
    """postgresql:// is taken as postgresql+psycopg://; other drivers and backends refused."""
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert database_url_problem("postgresql+psycopg2://u@h/db") is not None
    with pytest.raises(StateError, match="backend mysql is not supported"):
        make_engine("mysql+pymysql://u:pw@h/db")
    with pytest.raises(StateError) as info:
        make_engine("oracle://u:hunter2@h/db")
    assert "hunter2" not in str(info.value)


# --- timestamps --------------------------------------------------------------------------------


def test_timestamps_read_back_aware_utc(engine: Engine) -> None:
    """A timestamp written with any offset reads back as the same instant, in UTC."""
    zagreb = timezone(timedelta(hours=2))
    written = datetime(2025, 5, 20, 11, 15, 0, 123456, tzinfo=zagreb)
    with engine.begin() as conn:
        conn.execute(
            insert(JobLock).values(job="j", owner="o", acquired_at=written, expires_at=written)
        )
        read = conn.execute(select(JobLock.acquired_at)).scalar_one()
        later = conn.execute(
            select(JobLock.job).where(JobLock.expires_at < datetime(2025, 5, 20, 9, 16, tzinfo=UTC))
        ).all()
    assert read == written
    assert read.tzinfo == UTC
    assert later == [("j",)]


def test_naive_timestamps_are_refused(engine: Engine) -> None:
    """A naive datetime is an error, not silently taken as local or UTC time."""
    with pytest.raises(StatementError, match="naive datetime"), engine.begin() as conn:
        conn.execute(
            insert(JobLock).values(
                job="j", owner="o", acquired_at=datetime(2025, 1, 1), expires_at=datetime.now(UTC)
            )
        )


def test_session_factory_keeps_objects_after_commit(sqlite_engine: Engine) -> None:
    """Objects stay readable after commit (no expire-on-commit reload)."""
    now = datetime.now(UTC)
    with session_factory(sqlite_engine)() as session:
        lock = JobLock(job="j", owner="o", acquired_at=now, expires_at=now)
        session.add(lock)
        session.commit()
    assert lock.owner == "o"


# --- migration state -----------------------------------------------------------------------


def test_empty_database_is_not_migrated(sqlite_url: str) -> None:
    """check_migrated on an empty database says, in one line, to run `syncd db upgrade`."""
    engine = make_engine(sqlite_url)
    with pytest.raises(DatabaseNotMigrated) as info:
        check_migrated(engine)
    message = str(info.value)
    assert "\n" not in message
    assert "syncd db upgrade" in message
    assert current_revision(engine) is None
    engine.dispose()


def test_migrated_database_passes_the_check(engine: Engine) -> None:
    """After upgrade the database is at the code's head revision."""
    check_migrated(engine)
    assert current_revision(engine) in head_revisions()


def test_database_at_base_is_not_migrated(sqlite_url: str) -> None:
    """A database with Alembic's version table but no revision is told to upgrade."""
    engine = make_engine(sqlite_url)
    upgrade(engine, "base")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS alembic_version (version_num VARCHAR(32))"))
    with pytest.raises(DatabaseNotMigrated, match="no schema: run `syncd db upgrade`"):
        check_migrated(engine)
    engine.dispose()


def test_database_behind_the_code_is_told_to_upgrade(sqlite_url: str) -> None:
    """A database at an older revision names both revisions and the command to run."""
    engine = make_engine(sqlite_url)
    upgrade(engine, "0001")
    if "0001" in head_revisions():
        pytest.skip("0001 is the only revision")
    with pytest.raises(DatabaseNotMigrated, match=r"at revision 0001, the code needs .*syncd db"):
        check_migrated(engine)
    engine.dispose()


def test_database_from_a_newer_version_is_named(sqlite_engine: Engine) -> None:
    """A revision this code does not know is reported as such (not 'run upgrade')."""
    with sqlite_engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff_future'"))
    with pytest.raises(DatabaseNotMigrated, match="ffff_future, unknown to this version"):
        check_migrated(sqlite_engine)


def test_unreachable_database_is_a_state_error() -> None:
    """A database that cannot be reached raises StateError with the driver's reason (issue
    11: it used to say only `OperationalError`), and never the password."""
    engine = make_engine("postgresql+psycopg://syncd:hunter2@127.0.0.1:1/state")
    with pytest.raises(StateError) as info:
        current_revision(engine)
    message = str(info.value)
    assert message.startswith("cannot open the state database: ")
    assert "port 1 failed: Connection refused" in message
    assert "hunter2" not in message
    engine.dispose()


def test_a_drivers_reason_never_carries_the_password() -> None:
    """Wherever the driver's text quotes the password (as is, or percent-encoded), it is cut."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    from syncd.state.db import database_error_reason

    url = make_url("postgresql+psycopg://syncd:p%40ss%20w0rd@db/state")
    quoted = OperationalError(
        "SELECT 1", {}, Exception("bad conninfo 'password=p@ss w0rd' or p%40ss%20w0rd\nmore")
    )
    assert database_error_reason(quoted, url) == "bad conninfo 'password=***' or ***"
    other = OperationalError("SELECT 1", {}, Exception('FATAL:  database "x" does not exist'))
    assert database_error_reason(other, url) == 'FATAL: database "x" does not exist'
