"""Readers never queue behind a writer on SQLite, and the outbox backlog reads only the rows
it counts (an index search, never a scan of the deliveries table), on both backends."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import OperationalError

from syncd.health import database_check, job_freshness_check, migrations_check
from syncd.outbox import queries
from syncd.state.db import check_migrated, head_revisions, make_engine, upgrade
from syncd.state.runs import last_runs
from syncd.status import gather_status

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def sqlite_pair(tmp_path: Path) -> Iterator[tuple[Engine, Engine]]:
    """A migrated SQLite file, as a writer's engine and as a prober's with a short busy
    timeout (a wait for the write lock fails fast instead of hanging the test)."""
    url = f"sqlite:///{tmp_path}/state.db"
    writer = make_engine(url)
    upgrade(writer)
    prober = make_engine(url, busy_timeout_ms=50)
    yield writer, prober
    prober.dispose()
    writer.dispose()


def test_readers_answer_while_a_writer_holds_the_database(
    sqlite_pair: tuple[Engine, Engine],
) -> None:
    """With a write transaction open, /readyz's checks, status and the outbox views all
    answer (deferred read transactions), instead of failing with "database is locked"."""
    writer, prober = sqlite_pair
    with writer.connect() as conn, conn.begin():
        conn.execute(text("SELECT 1"))  # began IMMEDIATE: holds the write lock
        assert database_check(prober)() is None
        assert migrations_check(prober, head_revisions())() is None
        fresh = job_freshness_check(
            prober, "j", timedelta(hours=1), started_at=NOW, now=lambda: NOW
        )
        assert fresh() is None
        check_migrated(prober)
        assert last_runs(prober) == []
        assert gather_status(prober, now=NOW).sinks == []
        assert queries.backlog(prober, now=NOW) == {}
        assert queries.sink_states(prober) == {}
        assert queries.list_events(prober) == []
        assert queries.show_event(prober, "nope") is None


def test_writers_still_take_the_write_lock_at_begin(sqlite_pair: tuple[Engine, Engine]) -> None:
    """A transaction that may write still begins IMMEDIATE: it waits for the writer (and
    here, with a 50 ms busy timeout, gives up) instead of deadlocking on an upgrade."""
    writer, prober = sqlite_pair
    with writer.connect() as conn, conn.begin():
        conn.execute(text("SELECT 1"))
        with prober.connect() as other, pytest.raises(OperationalError, match="locked"):
            other.begin()


# --- the backlog's query plan ---------------------------------------------------------------

EVENTS = 20_000  # delivered rows a scan would read; a few pending and dead ones beside them


def fill(engine: Engine) -> None:
    """20,000 delivered deliveries, 3 pending (2 sinks) and 1 dead; statistics refreshed."""
    at = NOW.replace(tzinfo=None) if engine.dialect.name == "sqlite" else NOW
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO outbox_events (seq, event_id, event_type, payload, created_at) "
                "VALUES (:seq, :id, 'a.x', '{}', :at)"
            ),
            [{"seq": n, "id": f"e{n}", "at": at} for n in range(1, EVENTS + 1)],
        )
        rows = [
            {"seq": n, "sink": "crm", "state": "delivered", "at": at} for n in range(1, EVENTS + 1)
        ]
        for n, (sink, state) in enumerate(
            [("crm", "pending"), ("crm", "pending"), ("archive", "pending"), ("archive", "dead")]
        ):
            rows[n] = {"seq": n + 1, "sink": sink, "state": state, "at": at}
        conn.execute(
            text(
                "INSERT INTO outbox_deliveries (event_seq, sink, state, attempts, "
                "next_attempt_at, created_at) VALUES (:seq, :sink, :state, 0, :at, :at)"
            ),
            rows,
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))


def backlog_plans(engine: Engine) -> list[str]:
    """The plan of every statement `backlog` runs on the deliveries table."""
    statements: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, params: Any, *_rest: Any) -> None:
        if "outbox_deliveries" in statement:
            statements.append((statement, params))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        assert queries.backlog(engine, now=NOW) == {
            "archive": queries.SinkBacklog(pending=1, oldest_age_seconds=0.0, dead=1),
            "crm": queries.SinkBacklog(pending=2, oldest_age_seconds=0.0, dead=0),
        }
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    plans = []
    with engine.connect() as conn:
        for statement, params in statements:
            explain = "EXPLAIN QUERY PLAN " if conn.dialect.name == "sqlite" else "EXPLAIN "
            rows = conn.exec_driver_sql(explain + statement, params).all()
            plans.append("\n".join(str(row[-1]) for row in rows))
    return plans


def test_backlog_searches_an_index_instead_of_scanning_deliveries(state_engine: Engine) -> None:
    """Among 20,000 delivered rows, the backlog's statements search the state index only
    (SQLite: SEARCH ... USING COVERING INDEX; PostgreSQL: an index scan, no Seq Scan)."""
    fill(state_engine)
    plans = backlog_plans(state_engine)
    assert plans
    for plan in plans:
        assert "ix_outbox_deliveries_state" in plan, plan
        assert "SCAN outbox_deliveries" not in plan, plan  # SQLite's full scan
        assert "Seq Scan on outbox_deliveries" not in plan, plan
