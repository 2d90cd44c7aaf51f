"""outbox.emit() and emit_many(), the write side used by the poller and every other writer."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from syncd.hashing import canonical_json
from syncd.outbox import emit
from syncd.outbox.events import NewEvent, emit_many
from syncd.state.db import make_engine, session_factory, upgrade
from syncd.state.models import OutboxEvent


def test_emit_adds_to_the_callers_transaction_only(sqlite_url: str) -> None:
    """An event exists only if the caller commits; a rollback leaves no event behind."""
    engine = make_engine(sqlite_url)
    upgrade(engine)
    try:
        with Session(engine) as session:
            emit(session, event_type="x.happened", payload={"a": 1}, ordering_key=None)
            session.rollback()
        with session_factory(engine).begin() as session:
            first = emit(
                session,
                event_type="x.happened",
                payload={"b": [1, 2], "a": "é"},
                ordering_key="P-1",
            )
            second = emit(session, event_type="x.happened", payload={}, ordering_key=None)
        with Session(engine) as session:
            assert session.scalar(select(func.count()).select_from(OutboxEvent)) == 2
            stored = session.get(OutboxEvent, first.seq)
            assert stored is not None
            # Canonical JSON: sorted keys, no spaces, non-ASCII kept as is.
            assert stored.payload == '{"a":"é","b":[1,2]}'
            assert json.loads(stored.payload) == {"a": "é", "b": [1, 2]}
            assert stored.ordering_key == "P-1"
            assert uuid.UUID(stored.event_id).version == 4
            assert stored.event_id != second.event_id
            assert first.seq < second.seq
            assert abs((datetime.now(UTC) - stored.created_at).total_seconds()) < 60
    finally:
        engine.dispose()


def test_emit_many_stores_an_encoded_payload_as_is(sqlite_url: str) -> None:
    """A payload given as canonical JSON bytes is stored byte for byte, escapes included."""
    engine = make_engine(sqlite_url)
    upgrade(engine)
    encoded = canonical_json({"answers": {"sig": "x\udc80"}, "a": "é"})
    try:
        with session_factory(engine).begin() as session:
            (seq,) = emit_many(session, [NewEvent("x.happened", encoded, None)])
        with Session(engine) as session:
            stored = session.get(OutboxEvent, seq)
            assert stored is not None
            assert (
                stored.payload.encode()
                == encoded
                == b'{"a":"\xc3\xa9","answers":{"sig":"x\\udc80"}}'
            )
    finally:
        engine.dispose()


def test_emit_many_returns_each_rows_seq_in_order(state_engine: Engine) -> None:
    """emit_many inserts in the caller's transaction; seqs rise in input order, row by row."""
    events = [
        NewEvent(f"x.{n}", canonical_json({"n": n, "s": "é" * n}), f"K-{n % 3}") for n in range(30)
    ]
    at = datetime(2025, 5, 20, 9, 0, tzinfo=UTC)
    with session_factory(state_engine).begin() as session:
        assert emit_many(session, []) == []
        seqs = emit_many(session, events, at=at)
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(events)
    with Session(state_engine) as session:
        stored = {e.seq: e for e in session.scalars(select(OutboxEvent))}
    assert sorted(stored) == seqs
    for seq, event in zip(seqs, events, strict=True):
        row = stored[seq]
        assert (row.event_type, row.ordering_key) == (event.event_type, event.ordering_key)
        assert row.payload.encode() == event.payload
        assert row.created_at == at
        assert uuid.UUID(row.event_id).version == 4
    assert len({row.event_id for row in stored.values()}) == len(events)
    with Session(state_engine) as session:
        emit_many(session, events)
        session.rollback()
    with Session(state_engine) as session:
        assert session.scalar(select(func.count()).select_from(OutboxEvent)) == len(events)
