"""Opening the state database, and keeping its schema at the code's revision.

Two backends:

- SQLite (the default): one file, created mode 0600 before the first connection because it
  holds patient data. WAL journal, `synchronous=FULL` (an SMS is sent only after the commit
  that records it is on disk), a busy timeout, foreign keys on. SQLAlchemy emits `BEGIN`
  itself instead of the sqlite3 driver's legacy transaction handling, so a transaction is a
  real transaction (its SELECTs included). A transaction that may write begins `BEGIN
  IMMEDIATE`: two writers wait for each other through the busy timeout instead of failing
  with "database is locked" when a read transaction tries to become a write. A reader
  (`reader(engine)`: status, `/readyz`, the outbox's views) begins a deferred `BEGIN`: in
  WAL mode it reads a consistent snapshot beside a writer instead of queueing behind it.
- PostgreSQL through psycopg 3 (`postgresql+psycopg://`; a plain `postgresql://` URL is
  taken to mean psycopg 3), `synchronous_commit=on`, sessions in UTC.

Schema changes are Alembic migrations in the top-level `migrations/` directory of the
checkout, shipped in the wheel as `syncd/migrations` (see `[tool.setuptools]`).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

import syncd
from syncd.exceptions import DatabaseNotMigrated, StateError

log = structlog.get_logger(__name__)

DEFAULT_BUSY_TIMEOUT_MS = 30_000
# A PostgreSQL advisory-lock key that serialises concurrent `upgrade()` calls.
_UPGRADE_LOCK_KEY = int.from_bytes(b"syncdMig", "big")
_UPGRADE_HINT = "run `syncd db upgrade`"


def database_url_problem(url: str | URL) -> str | None:
    """Why `url` cannot be the state database, or None if it can (never quotes the URL)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "not a valid database URL (sqlite:///path or postgresql+psycopg://...)"
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return None
    if backend == "postgresql":
        if parsed.drivername in ("postgresql", "postgresql+psycopg"):
            return None
        return f"driver {parsed.get_driver_name()} is not supported, use postgresql+psycopg"
    return f"backend {backend} is not supported (sqlite or postgresql)"


def normalize_url(url: str | URL) -> URL:
    """Parse a state database URL; a plain `postgresql://` means psycopg 3."""
    reason = database_url_problem(url)
    if reason:
        raise StateError(f"database.url: {reason}")
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        return parsed.set(drivername="postgresql+psycopg")
    return parsed


# The execution option that marks an engine's transactions read-only (see `reader`).
READ_ONLY_OPTION = "syncd_read_only"


def make_engine(
    url: str | URL, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS, create: bool = True
) -> Engine:
    """An engine for the state database, set up for durability (see the module docstring).

    Statement parameters are hidden from SQLAlchemy's error messages and logs, since they
    can hold patient data. `create=False` (read-only commands, a daemon that does not
    migrate): a SQLite file that does not exist is not created, nor its directory; connecting
    raises `DatabaseNotMigrated` naming the file instead.
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, busy_timeout_ms, create=create)
    return create_engine(
        parsed,
        hide_parameters=True,
        pool_pre_ping=True,
        connect_args={
            "options": "-c synchronous_commit=on -c timezone=UTC",
            "application_name": "voxares-syncd",
        },
    )


def _sqlite_engine(url: URL, busy_timeout_ms: int, *, create: bool) -> Engine:
    path = sqlite_path(url)
    if path is not None and create:
        _create_private_file(path)
    engine = create_engine(url, hide_parameters=True)

    if path is not None and not create:

        @event.listens_for(engine, "do_connect")
        def _existing_only(*_args: Any) -> None:
            # sqlite3.connect would create an empty file (and fail on a missing directory).
            if not path.exists():
                raise DatabaseNotMigrated(f"there is no state database at {path}: {_UPGRADE_HINT}")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 driver: `_on_begin` emits BEGIN.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get("isolation_level") == "AUTOCOMMIT":
            return
        conn.exec_driver_sql("BEGIN" if options.get(READ_ONLY_OPTION) else "BEGIN IMMEDIATE")

    return engine


def reader(engine: Engine) -> Engine:
    """`engine` for transactions that only read (sharing its pool).

    On SQLite they begin deferred, so a probe or a status query never waits for a writer
    (a deferred transaction that then writes could fail to upgrade: never write through
    it). On PostgreSQL nothing changes.
    """
    return engine.execution_options(**{READ_ONLY_OPTION: True})


def sqlite_path(url: str | URL) -> Path | None:
    """The file of a SQLite URL, or None for an in-memory database."""
    parsed = make_url(url)
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _create_private_file(path: Path) -> None:
    """Create the database file mode 0600 (its folder 0700 if missing) before SQLite does.

    SQLite creates the `-wal` and `-shm` files with the permissions of the database file, so
    they are private too. An existing file readable by others is tightened. A folder or file
    that cannot be created is a `StateError` naming the path and the system's reason.
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(
            f"cannot create the state database's directory {path.parent}: {_os_reason(exc)} "
            "(database.url)"
        ) from None
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        if path.is_file():
            _tighten(path)
            return
        raise StateError(
            f"cannot create the state database {path}: not a regular file (database.url)"
        ) from None
    except OSError as exc:
        raise StateError(
            f"cannot create the state database {path}: {_os_reason(exc)} (database.url)"
        ) from None
    os.close(fd)
    log.info("state.db_created")


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def database_error_reason(exc: SQLAlchemyError, url: URL | None = None) -> str:
    """Why the state database could not be reached, in one line, for an operator.

    For a failure to connect (`OperationalError`, `InterfaceError`) that is the driver's own
    first line (`database "x" does not exist`, `Connection refused`, `unable to open
    database file`): it speaks of hosts, ports, roles and databases, never of rows. The
    password of `url` is cut out of it wherever it appears. Anything else is named by its
    class only, since a statement's error can quote the values of a row.
    """
    if not isinstance(exc, OperationalError | InterfaceError) or exc.orig is None:
        return type(exc).__name__
    lines = str(exc.orig).strip().splitlines()
    reason = " ".join(lines[0].split()) if lines else ""
    password = url.password if url is not None else None
    if password:
        for form in {str(password), quote_plus(str(password)), quote(str(password), safe="")}:
            reason = reason.replace(form, "***")
    return reason or type(exc).__name__


def _tighten(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, mode & 0o700)
        log.warning("state.db_permissions_tightened", old_mode=oct(mode))


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions on `engine` that keep loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


# --- migrations ---------------------------------------------------------------------------


def migrations_path() -> Path:
    """The Alembic script directory: packaged in the wheel, or the checkout's `migrations/`."""
    package_dir = Path(syncd.__file__).resolve().parent
    for candidate in (package_dir / "migrations", package_dir.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise StateError("the Alembic migrations are missing from this installation")


def alembic_config(url: str | URL | None = None) -> Config:
    """An Alembic configuration for our migrations, with no ini file and no logging setup."""
    config = Config()
    config.set_main_option("script_location", str(migrations_path()))
    if url is not None:
        rendered = normalize_url(url).render_as_string(hide_password=False)
        config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def head_revisions() -> tuple[str, ...]:
    """The revision(s) the code expects the database to be at."""
    return tuple(ScriptDirectory.from_config(alembic_config()).get_heads())


def current_revision(engine: Engine) -> str | None:
    """The database's revision, or None when no migration ever ran on it."""
    try:
        with reader(engine).connect() as conn:
            heads = MigrationContext.configure(conn).get_current_heads()
    except SQLAlchemyError as exc:
        raise StateError(
            f"cannot open the state database: {database_error_reason(exc, engine.url)}"
        ) from exc
    if len(heads) > 1:
        raise StateError(f"the state database has several revisions: {','.join(sorted(heads))}")
    return heads[0] if heads else None


def check_migrated(engine: Engine) -> None:
    """Raise `DatabaseNotMigrated` unless the database is at the code's head revision."""
    current = current_revision(engine)
    heads = head_revisions()
    if current is not None and current in heads:
        return
    if current is None:
        raise DatabaseNotMigrated(f"the state database has no schema: {_UPGRADE_HINT}")
    script = ScriptDirectory.from_config(alembic_config())
    known = {rev.revision for rev in script.walk_revisions()}
    if current not in known:
        raise DatabaseNotMigrated(
            f"the state database is at revision {current}, unknown to this version of syncd "
            "(written by a newer version?)"
        )
    raise DatabaseNotMigrated(
        f"the state database is at revision {current}, the code needs {','.join(heads)}: "
        f"{_UPGRADE_HINT}"
    )


def upgrade(target: str | URL | Engine, revision: str = "head") -> None:
    """Migrate the database to `revision` (default: the newest). Safe to run twice at once."""
    _run_migration(target, lambda config: command.upgrade(config, revision))
    log.info("state.db_upgraded", revision=revision)


def downgrade(target: str | URL | Engine, revision: str) -> None:
    """Migrate the database back to `revision` (`base` drops every table)."""
    _run_migration(target, lambda config: command.downgrade(config, revision))
    log.info("state.db_downgraded", revision=revision)


def _run_migration(target: str | URL | Engine, step: Callable[[Config], None]) -> None:
    with _engine_for(target) as engine:
        config = alembic_config()
        try:
            with engine.connect() as conn:
                if conn.dialect.name == "sqlite":
                    # SQLite's batch mode recreates tables; with foreign keys enforced,
                    # dropping a parent table would cascade-delete its children's rows.
                    # The pragma only works outside a transaction, hence before BEGIN.
                    _sqlite_pragma(conn, "PRAGMA foreign_keys=OFF")
                try:
                    _migrate_in_one_transaction(conn, config, step)
                finally:
                    if conn.dialect.name == "sqlite":
                        _sqlite_pragma(conn, "PRAGMA foreign_keys=ON")
        except SQLAlchemyError as exc:
            raise StateError(f"migration failed: {database_error_reason(exc, engine.url)}") from exc
        except CommandError as exc:
            raise StateError(f"migration failed: {exc}") from exc


def _migrate_in_one_transaction(
    conn: Connection, config: Config, step: Callable[[Config], None]
) -> None:
    # Alembic sees an external transaction and runs inside it, so a failed step leaves the
    # database as it was. On PostgreSQL an advisory lock makes a second concurrent upgrade
    # wait, then find nothing to do.
    with conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _UPGRADE_LOCK_KEY})
        config.attributes["connection"] = conn
        step(config)
        if conn.dialect.name == "sqlite":
            broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
            if broken:
                raise StateError(f"migration left {len(broken)} rows violating foreign keys")


def _sqlite_pragma(conn: Connection, statement: str) -> None:
    """Run a pragma on the driver connection, outside SQLAlchemy's transaction."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(statement)
    finally:
        cursor.close()


@contextlib.contextmanager
def _engine_for(target: str | URL | Engine) -> Iterator[Engine]:
    if isinstance(target, Engine):
        yield target
        return
    engine = make_engine(target)
    try:
        yield engine
    finally:
        engine.dispose()
