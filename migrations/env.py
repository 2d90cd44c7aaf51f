"""Alembic environment: how a migration reaches the state database.

`syncd.state.db.upgrade()` hands over an open connection in `config.attributes`, so the
migration runs on the engine the daemon configured (pragmas, BEGIN IMMEDIATE) and inside the
caller's transaction. The `alembic` command line (developers only) builds the engine from
`-x url=...`, `sqlalchemy.url`, `SYNCD_DATABASE__URL` or the default SQLite file, in that order.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection

from syncd.state.models import Base

DEFAULT_URL = "sqlite:///./voxares-syncd.db"

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
        or os.environ.get("SYNCD_DATABASE__URL")
        or DEFAULT_URL
    )


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode recreates the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )


def run_offline() -> None:
    """Print the SQL instead of running it (`alembic upgrade head --sql`)."""
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Run on the caller's connection, or on a fresh engine from the command line."""
    given: Connection | None = config.attributes.get("connection")
    if given is not None:
        _configure(given)
        with context.begin_transaction():
            context.run_migrations()
        return

    from syncd.logging import configure_logging
    from syncd.state.db import make_engine

    configure_logging("INFO", "auto")
    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
