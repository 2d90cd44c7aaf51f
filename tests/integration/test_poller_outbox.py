"""outbox.emit(), the write side used by the poller and every other event writer."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from syncd.hashing import canonical_json
from syncd.outbox import emit
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


def test_emit_stores_an_already_encoded_payload_as_is(sqlite_url: str) -> None:
    """A payload given as canonical JSON bytes is stored byte for byte, escapes included."""
    engine = make_engine(sqlite_url)
    upgrade(engine)
    encoded = canonical_json({"answers": {"sig": "x\udc80"}, "a": "é"})
    try:
        with session_factory(engine).begin() as session:
            event = emit(session, event_type="x.happened", payload=encoded, ordering_key=None)
        with Session(engine) as session:
            stored = session.get(OutboxEvent, event.seq)
            assert stored is not None
            assert (
                stored.payload.encode()
                == encoded
                == b'{"a":"\xc3\xa9","answers":{"sig":"x\\udc80"}}'
            )
    finally:
        engine.dispose()
