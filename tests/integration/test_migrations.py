"""Alembic migrations produce exactly `syncd/state/models.py`, both ways, on both backends."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, insert, inspect, select

from syncd.state.db import (
    alembic_config,
    current_revision,
    downgrade,
    head_revisions,
    make_engine,
    upgrade,
)
from syncd.state.models import Base


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """An empty database on each backend."""
    url = request.getfixturevalue(f"{request.param}_url")
    engine = make_engine(url)
    yield engine
    engine.dispose()


def schema_diff(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, Base.metadata))


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def test_upgrade_of_an_empty_database_matches_the_models(empty_engine: Engine) -> None:
    """Upgrading an empty database to head gives exactly the models' schema."""
    upgrade(empty_engine)
    assert current_revision(empty_engine) == head_revisions()[0]
    assert schema_diff(empty_engine) == []
    assert tables(empty_engine) == set(Base.metadata.tables) | {"alembic_version"}


def test_downgrade_to_base_then_upgrade_again(empty_engine: Engine) -> None:
    """Downgrade removes every table; a database at base upgrades back to the models."""
    upgrade(empty_engine)
    downgrade(empty_engine, "base")
    assert tables(empty_engine) == {"alembic_version"}
    assert current_revision(empty_engine) is None
    upgrade(empty_engine)
    assert schema_diff(empty_engine) == []


def test_every_revision_upgrades_from_its_predecessor(empty_engine: Engine) -> None:
    """Stepping one revision at a time from base reaches head, and each step downgrades."""
    script = ScriptDirectory.from_config(alembic_config())
    revisions = list(reversed(list(script.walk_revisions())))
    for revision in revisions:
        upgrade(empty_engine, revision.revision)
        assert current_revision(empty_engine) == revision.revision
        downgrade(empty_engine, revision.down_revision or "base")  # type: ignore[arg-type]
        upgrade(empty_engine, revision.revision)
    assert schema_diff(empty_engine) == []


def test_database_at_the_previous_revision_upgrades_with_its_data(empty_engine: Engine) -> None:
    """A database one revision behind, holding rows, upgrades to head and keeps them."""
    script = ScriptDirectory.from_config(alembic_config())
    (head,) = head_revisions()
    previous = script.get_revision(head).down_revision
    assert isinstance(previous, str), "head must have exactly one predecessor"
    upgrade(empty_engine, previous)
    audit_log = Base.metadata.tables["audit_log"]
    row = {
        "at": datetime(2025, 5, 20, tzinfo=UTC),
        "actor": "patients",
        "action": "patient.pushed",
        "object_type": "patient",
        "object_id": "P-1",
    }
    with empty_engine.begin() as conn:
        conn.execute(insert(audit_log).values(row))
    upgrade(empty_engine)
    assert schema_diff(empty_engine) == []
    with empty_engine.connect() as conn:
        assert conn.execute(select(audit_log.c.object_id)).scalars().all() == ["P-1"]


def test_upgrade_twice_is_a_no_op(empty_engine: Engine) -> None:
    """A second upgrade of a migrated database changes nothing."""
    upgrade(empty_engine)
    upgrade(empty_engine)
    assert current_revision(empty_engine) == head_revisions()[0]


@pytest.mark.postgres
def test_concurrent_upgrades_on_postgres_do_not_collide(postgres_url: str) -> None:
    """Two daemons upgrading one PostgreSQL database at once both succeed."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            upgrade(postgres_url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    engine = make_engine(postgres_url)
    assert schema_diff(engine) == []
    engine.dispose()


def test_sqlite_foreign_keys_are_enforced_again_after_a_migration(sqlite_url: str) -> None:
    """Migrations run with SQLite foreign keys off (batch mode); the connection gets them back."""
    engine = make_engine(sqlite_url, busy_timeout_ms=1000)
    upgrade(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def test_upgrade_by_url_disposes_its_engine(sqlite_url: str) -> None:
    """upgrade() accepts a URL as well as an Engine."""
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    assert current_revision(engine) == head_revisions()[0]
    engine.dispose()
