"""The sink port: the envelope's wire form and the helpers every sink shares."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from syncd.sinks.base import (
    DeadLetter,
    Delivered,
    DisableSink,
    EventEnvelope,
    Retry,
    attempts_for,
    encode_event,
    outcome_counts,
)

PATIENT_NAME = "Ana Horvat"


def _event(**overrides: object) -> EventEnvelope:
    fields: dict[str, object] = {
        "event_id": "e-1",
        "event_type": "form_submission.completed",
        "created_at": datetime(2025, 5, 20, 9, 15, 0, 123456, tzinfo=UTC),
        "payload": {"patient": {"name": PATIENT_NAME}},
    }
    fields.update(overrides)
    return EventEnvelope(**fields)  # type: ignore[arg-type]


def test_to_json_has_the_four_wire_fields() -> None:
    """to_json() is exactly {"id", "type", "createdAt", "data"} with an API-style timestamp."""
    assert _event().to_json() == {
        "id": "e-1",
        "type": "form_submission.completed",
        "createdAt": "2025-05-20T09:15:00.123Z",
        "data": {"patient": {"name": PATIENT_NAME}},
    }


def test_created_at_is_rendered_in_utc() -> None:
    """An aware timestamp in another zone is converted to UTC; a naive one is read as UTC."""
    plus_two = datetime(2025, 5, 20, 11, 15, tzinfo=timezone(timedelta(hours=2)))
    assert _event(created_at=plus_two).to_json()["createdAt"] == "2025-05-20T09:15:00.000Z"
    naive = datetime(2025, 5, 20, 9, 15)
    assert _event(created_at=naive).to_json()["createdAt"] == "2025-05-20T09:15:00.000Z"


def test_repr_leaves_out_the_payload() -> None:
    """The envelope's repr names the event but never shows patient data."""
    text = repr(_event())
    assert "e-1" in text
    assert PATIENT_NAME not in text


def test_envelope_is_immutable() -> None:
    """An envelope is frozen: a sink cannot alter what other sinks will see."""
    with pytest.raises(AttributeError):
        _event().event_id = "other"  # type: ignore[misc]


def test_encode_event_is_compact_json_and_keeps_unicode() -> None:
    """The shared encoding is compact and leaves non-ASCII letters as they are."""
    text = encode_event(_event(payload={"city": "Čakovec"}))
    assert text.startswith('{"id":"e-1","type":')
    assert '"data":{"city":"Čakovec"}' in text


@pytest.mark.parametrize("bad", [float("nan"), datetime(2025, 1, 1), {1, 2}])
def test_encode_event_rejects_what_json_cannot_carry(bad: object) -> None:
    """NaN, datetimes and sets in a payload raise, so sinks can dead-letter the event."""
    with pytest.raises((TypeError, ValueError)):
        encode_event(_event(payload={"x": bad}))


def test_outcome_counts_counts_each_kind() -> None:
    """Counts per outcome kind add up to the batch, for the batch log line."""
    outcomes = [
        Delivered(),
        Delivered(),
        Retry("HTTP 500"),
        DeadLetter("HTTP 400"),
        DisableSink("x"),
    ]
    assert outcome_counts(outcomes) == {
        "delivered": 2,
        "retry": 1,
        "dead_letter": 1,
        "disable_sink": 1,
    }


def test_attempts_default_to_one_and_must_match_the_batch() -> None:
    """Missing attempt numbers mean first tries; a length mismatch is a caller bug."""
    events = [_event(), _event(event_id="e-2")]
    assert attempts_for(events, None) == [1, 1]
    assert attempts_for(events, (3, 1)) == [3, 1]
    with pytest.raises(ValueError, match="1 attempt numbers for 2 events"):
        attempts_for(events, [1])
