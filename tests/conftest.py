"""Fixtures shared by every test layer: real services, created and dropped per run.

A service that is not running skips its tests with the reason, so a newcomer's laptop
still passes; under CI=true an absent service fails the test instead.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

# Hypothesis fails an example slower than 200 ms (DeadlineExceeded / Flaky) and a strategy
# slow to generate (HealthCheck.too_slow): wall-clock races on a busy 2-core CI box, where
# a GC pause or a descheduled process takes that long. Neither says anything about the
# property under test, so no test here relies on them.
settings.register_profile("syncd", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("syncd")

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

POSTGRES_ADMIN_URL = os.environ.get(
    "SYNCD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
RABBITMQ_URL = os.environ.get("SYNCD_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip (or, in CI, fail) when a service is not listening."""
    if _port_open(host, port):
        return
    reason = f"{name} is not running on {host}:{port}"
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing service is a failure)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The admin URL of the local PostgreSQL server."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    return POSTGRES_ADMIN_URL


@contextmanager
def new_postgres_database(server_url: str) -> Iterator[str]:
    """Create an empty PostgreSQL database with a unique name; drop it afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"syncd_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def migrated_engine(url: str) -> Iterator[Engine]:
    """An engine on `url` with the schema at head; disposed afterwards."""
    from syncd.state.db import make_engine, upgrade

    engine = make_engine(url)
    try:
        upgrade(engine)
        yield engine
    finally:
        engine.dispose()


# Each state-database test runs on SQLite and, marked `postgres`, on PostgreSQL.
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@contextmanager
def _backend_engine(request: pytest.FixtureRequest, folder: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        with migrated_engine(f"sqlite:///{folder}/state.db") as engine:
            yield engine
        return
    with (
        new_postgres_database(request.getfixturevalue("postgres_server")) as url,
        migrated_engine(url) as engine,
    ):
        yield engine


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    with new_postgres_database(postgres_server) as url:
        yield url


@pytest.fixture(params=BACKENDS)
def state_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty state database for one test, on each backend."""
    with _backend_engine(request, tmp_path) as engine:
        yield engine


@pytest.fixture(scope="module", params=BACKENDS)
def module_state_engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """One migrated state database per backend shared by a module (migrating costs ~1 s)."""
    with _backend_engine(request, tmp_path_factory.mktemp("state")) as engine:
        yield engine


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """The URL of the local RabbitMQ broker (each test declares its own queues)."""
    require_service("RabbitMQ", "127.0.0.1", 5672)
    return RABBITMQ_URL


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    """A SQLite state database path in the test's own temporary folder."""
    return f"sqlite:///{tmp_path}/state.db"
