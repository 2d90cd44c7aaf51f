"""Fan-out on a real PostgreSQL never passes an event whose transaction is still open, however
long it stays open: the event is fanned out when it commits, to every sink (and on both
backends a seq gap alone never holds fan-out back or loses an event)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, insert, text
from structlog.testing import capture_logs

from syncd.outbox import fanout
from syncd.outbox.backoff import BackoffPolicy
from syncd.outbox.delivery import OutboxDeliveryJob
from syncd.outbox.events import NewEvent, emit_many
from syncd.outbox.routing import Route
from syncd.sinks.base import Answered, Delivered, DeliveryOutcome, EventEnvelope
from syncd.state.db import make_engine, upgrade
from syncd.state.models import OutboxEvent
from tests.conftest import migrated_engine, new_postgres_database

FAST = BackoffPolicy(initial_seconds=0.01, max_seconds=0.05)
# Far past the 120 s after which the old fan-out took a seq gap for a rolled-back transaction.
LATER = timedelta(minutes=10)


class RecordingSink:
    """A sink that takes every event and remembers the order of their ids."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.received: list[str] = []

    async def deliver(
        self,
        events: Sequence[EventEnvelope],
        *,
        attempts: Sequence[int] | None = None,
        answered: Answered | None = None,
    ) -> list[DeliveryOutcome]:
        self.received.extend(event.event_id for event in events)
        return [Delivered()] * len(events)

    async def aclose(self) -> None:
        return None


@pytest.fixture
def pg_engine(postgres_url: str) -> Iterator[Engine]:
    """A migrated PostgreSQL database of its own."""
    with migrated_engine(postgres_url) as engine:
        yield engine


def emit_one(conn: Connection, name: str) -> int:
    """One event in `conn`'s open transaction; its payload names it; returns its seq."""
    (seq,) = emit_many(
        conn, [NewEvent("form_submission.updated", f'{{"n":"{name}"}}'.encode(), None)]
    )
    return seq


def event_ids(engine: Engine) -> dict[int, str]:
    """{seq: event_id}."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT seq, event_id FROM outbox_events"))
        return {seq: event_id for seq, event_id in rows}


def take_xid(conn: Connection) -> None:
    """Make `conn`'s open transaction take its transaction id now."""
    conn.execute(text("SELECT pg_current_xact_id()"))


def delivery_job(engine: Engine, sinks: dict[str, RecordingSink]) -> OutboxDeliveryJob:
    """Delivers to `sinks` from the beginning, its clock 10 minutes ahead of the events."""
    return OutboxDeliveryJob(
        engine,
        sinks,
        {name: Route(name, start="beginning") for name in sinks},
        backoff=FAST,
        lease_seconds=30,
        clock=lambda: datetime.now(UTC) + LATER,
    )


@pytest.mark.postgres
@pytest.mark.parametrize("first_xid", ["held", "committed"])
def test_an_event_committed_long_after_a_later_one_reaches_every_sink(
    pg_engine: Engine, first_xid: str
) -> None:
    """A transaction holds seq 1 open while seq 2 commits and 10 minutes pass on the job's
    clock; when it commits, its event is delivered to every sink, each event exactly once."""
    sinks = {name: RecordingSink(name) for name in ("crm", "archive")}
    job = delivery_job(pg_engine, sinks)
    with pg_engine.connect() as held, pg_engine.connect() as other:
        held_tx, other_tx = held.begin(), other.begin()
        if first_xid == "committed":
            take_xid(other)  # the transaction that commits first is the older one
        held_seq = emit_one(held, "held")
        later_seq = emit_one(other, "later")
        other_tx.commit()
        assert held_seq < later_seq

        with capture_logs() as logs:
            asyncio.run(job.run())
        ids = event_ids(pg_engine)
        if first_xid == "committed":
            # Older than the open transaction: final, fanned out and delivered now.
            expected_first = [ids[later_seq]]
        else:
            # It waits behind the open transaction, and that is reported, not skipped.
            expected_first = []
            assert any(e["event"] == "outbox.fanout_held_back" for e in logs)
        assert all(sink.received == expected_first for sink in sinks.values())

        held_tx.commit()
    asyncio.run(job.run())
    ids = event_ids(pg_engine)
    order = [held_seq, later_seq] if first_xid == "held" else [later_seq, held_seq]
    for sink in sinks.values():
        assert sink.received == [ids[seq] for seq in order], sink.name


@pytest.mark.postgres
def test_a_sink_starting_now_gets_an_event_whose_transaction_was_open(pg_engine: Engine) -> None:
    """ "now" starts after the final events only: an event still uncommitted when the sink's
    cursor was made is fanned out to it once it commits."""
    emit_and_commit(pg_engine, "before")
    route = Route("late", start="now")
    with pg_engine.connect() as held, held.begin():
        take_xid(held)
        emit_one(held, "open")
        assert fanout.fan_out(pg_engine, route).queued == 0  # creates the cursor
    assert fanout.fan_out(pg_engine, route).queued == 1


def emit_and_commit(engine: Engine, name: str) -> int:
    with engine.begin() as conn:
        return emit_one(conn, name)


def add_event_at_seq(engine: Engine, seq: int) -> None:
    """An event with a chosen seq (to make the gaps a rolled-back transaction leaves)."""
    with engine.begin() as conn:
        conn.execute(
            insert(OutboxEvent).values(
                seq=seq,
                event_id=f"evt-{seq}",
                event_type="form_submission.updated",
                ordering_key=None,
                payload="{}",
                created_at=datetime.now(UTC),
            )
        )


def test_seq_gaps_neither_hold_fan_out_back_nor_lose_events(state_engine: Engine) -> None:
    """Gaps (rolled-back seqs) are passed at once, with no time rule; every event is queued."""
    for seq in (1, 3, 7):
        add_event_at_seq(state_engine, seq)
    route = Route("s", start="beginning")
    with capture_logs() as logs:
        assert fanout.fan_out(state_engine, route, now=datetime.now(UTC)).queued == 3
    assert fanout.fan_out(state_engine, route).queued == 0
    assert not [e for e in logs if e["log_level"] == "warning"]


def test_fan_out_reads_events_through_the_xid_index(state_engine: Engine) -> None:
    """The fan-out query is a range search on ix_outbox_events_xid_seq, never a table scan."""
    plan = explain(
        state_engine,
        "SELECT seq, xid, event_type FROM outbox_events WHERE (xid, seq) > (:x, :s) "
        "ORDER BY xid, seq LIMIT 1000",
        {"x": 0, "s": 0},
    )
    assert "ix_outbox_events_xid_seq" in plan, plan


def explain(engine: Engine, query: str, params: dict[str, Any]) -> str:
    """The query plan as text (SQLite's EXPLAIN QUERY PLAN; PostgreSQL's EXPLAIN with
    sequential scans priced out, since an empty table would otherwise always be scanned)."""
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            rows = conn.execute(text(f"EXPLAIN QUERY PLAN {query}"), params).all()
            return "\n".join(str(row[-1]) for row in rows)
        conn.execute(text("SET enable_seqscan = off"))
        rows = conn.execute(text(f"EXPLAIN {query}"), params).all()
        return "\n".join(str(row[0]) for row in rows)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def unmigrated_engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """An empty database on each backend, not migrated yet."""
    engine = make_engine(request.getfixturevalue(f"{request.param}_url"))
    yield engine
    engine.dispose()


def test_upgrade_keeps_events_ahead_of_a_cursor_ahead(unmigrated_engine: Engine) -> None:
    """A database from revision 0002 with a cursor at seq 1 of 3: after the upgrade, fan-out
    queues seqs 2 and 3, then the events written afterwards."""
    engine = unmigrated_engine
    upgrade(engine, "0002")
    now = datetime.now(UTC)
    with engine.begin() as conn:
        for seq in (1, 2, 3):
            conn.execute(
                text(
                    "INSERT INTO outbox_events (seq, event_id, event_type, payload, created_at) "
                    "VALUES (:seq, :id, 'a.x', '{}', :at)"
                ),
                {"seq": seq, "id": f"evt-{seq}", "at": now},
            )
        conn.execute(
            text("INSERT INTO sink_cursors (sink, last_seq, updated_at) VALUES ('s', 1, :at)"),
            {"at": now},
        )
    upgrade(engine)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:  # the explicit seqs above did not move the sequence
            conn.execute(text("SELECT setval('outbox_events_seq_seq', 3)"))
    emit_and_commit(engine, "after")
    assert fanout.fan_out(engine, Route("s")).queued == 3
    with engine.connect() as conn:
        queued = conn.execute(text("SELECT event_seq FROM outbox_deliveries ORDER BY 1"))
        assert [seq for (seq,) in queued] == [2, 3, 4]


@pytest.mark.postgres
def test_an_open_transaction_of_another_database_does_not_hold_fan_out_back(
    pg_engine: Engine, postgres_server: str
) -> None:
    """Only this database's transactions can write its events: another application's long
    transaction on the same server leaves fan-out alone, while our own holds it back."""
    with new_postgres_database(postgres_server) as other_url:
        other = create_engine(other_url)
        try:
            with other.connect() as foreign, foreign.begin():
                take_xid(foreign)  # older than the event below, and still open
                emit_and_commit(pg_engine, "mine")
                assert fanout.fan_out(pg_engine, Route("s", start="beginning")) == (1, 0)
        finally:
            other.dispose()
    with pg_engine.connect() as own, own.begin():
        take_xid(own)
        emit_and_commit(pg_engine, "behind")
        assert fanout.fan_out(pg_engine, Route("s")) == (0, 1)
    assert fanout.fan_out(pg_engine, Route("s")) == (1, 0)


@pytest.mark.parametrize(
    ("xid32", "near", "expected"),
    [
        (100, 105, 100),  # just before
        (110, 105, 110),  # assigned after `near` was read
        (2**32 - 5, 2**32 + 3, 2**32 - 5),  # across an epoch boundary
        (2, 2**32 - 1, 2**32 + 2),  # the other way round
        (7, 5 * 2**32 + 9, 5 * 2**32 + 7),
    ],
)
def test_widen_xid_takes_the_nearest_epoch(xid32: int, near: int, expected: int) -> None:
    """A 32-bit xid of pg_stat_activity becomes the 64-bit xid nearest the next xid."""
    assert fanout.widen_xid(xid32, near) == expected
