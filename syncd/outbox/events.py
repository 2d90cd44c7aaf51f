"""The write side of the outbox: every writer records its events through `emit`.

An event is added to the caller's session and committed by the caller together with the
state change it reports (a submission version, an SMS status, a content change), so that
an event exists if and only if its cause was recorded.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from syncd.hashing import canonical_json
from syncd.state.models import OutboxEvent


def emit(
    session: Session,
    *,
    event_type: str,
    payload: Mapping[str, Any] | bytes,
    ordering_key: str | None,
) -> OutboxEvent:
    """Add one outbox event to `session` (not committed, not flushed) and return it.

    `payload` is a JSON object, or its canonical JSON already encoded (`bytes`, e.g. built
    with `canonical_object` around a large member encoded once). The event gets a fresh
    UUID as its public id and the current UTC time; its `seq` is assigned when the
    session flushes.
    """
    event = OutboxEvent(
        event_id=str(uuid.uuid4()),
        event_type=event_type,
        ordering_key=ordering_key,
        payload=_text(payload),
        created_at=datetime.now(UTC),
    )
    session.add(event)
    return event


def _text(payload: Mapping[str, Any] | bytes) -> str:
    # Canonical JSON is ASCII wherever it is not valid UTF-8 (lone surrogates are escaped).
    encoded = payload if isinstance(payload, bytes) else canonical_json(dict(payload))
    return encoded.decode("utf-8")
