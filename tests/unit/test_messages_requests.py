"""Pure parts of SMS requests: argument checks, resolution moves, send bodies, event payloads."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from syncd.messages.body import mirror_fields, send_body
from syncd.messages.requests import RequestBody, request_problems
from syncd.messages.states import ACTIONS, STATES, resolution_target
from syncd.messages.status import Tracked, event_payload
from syncd.voxares.models import Message

GOOD: dict[str, Any] = {
    "key": "k-1",
    "provider": "ehr",
    "provider_id": "P-1",
    "content": "Hi",
    "template_id": None,
    "origin": "api",
}


def test_a_good_request_has_no_problems() -> None:
    """Inline content, or a template id: both fine."""
    assert request_problems(**GOOD) == []
    assert request_problems(**{**GOOD, "content": None, "template_id": "t-1"}) == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"key": ""}, "key must not be empty"),
        ({"key": "k" * 257}, "key is longer than 256 characters"),
        ({"provider": " "}, "provider must not be empty"),
        ({"origin": "o" * 65}, "origin is longer than 64 characters"),
        ({"content": None}, "exactly one of content and template_id must be given"),
        ({"template_id": "t-1"}, "exactly one of content and template_id must be given"),
        ({"content": ""}, "content must not be empty"),
        ({"content": None, "template_id": "t" * 65}, "template_id is longer than 64 characters"),
    ],
)
def test_request_problems_name_the_argument(change: dict[str, Any], problem: str) -> None:
    """Each bad argument is named, with the limit it broke."""
    assert request_problems(**{**GOOD, **change}) == [problem]


def test_problems_never_quote_values() -> None:
    """A too-long key is reported by its length, not shown."""
    problems = request_problems(**{**GOOD, "key": "Ana Horvat " * 30})
    assert "Ana" not in " ".join(problems)


def test_request_body_repr_hides_the_text() -> None:
    """The SMS text is written for one patient: never in a repr."""
    body = RequestBody("ehr", "P-1", "Ana, your results are ready", None)
    assert "results" not in repr(body)
    assert "P-1" in repr(body)


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("action", ACTIONS)
def test_resolution_moves(state: str, action: str) -> None:
    """resend from unknown|failed → pending; mark-sent/cancel only from unknown."""
    expected = {
        ("resend", "unknown"): "pending",
        ("resend", "failed"): "pending",
        ("mark-sent", "unknown"): "sent",
        ("cancel", "unknown"): "cancelled",
    }.get((action, state))
    assert resolution_target(action, state) == expected


def test_an_unknown_action_is_refused() -> None:
    """Only the three actions exist."""
    with pytest.raises(ValueError, match="action must be one of"):
        resolution_target("retry", "unknown")


def test_the_send_body_carries_the_mirror_patient() -> None:
    """Names, mobile, email and birth date from the mirror; ids and text from the request."""
    patient = mirror_fields(
        '{"providerId": "P-1", "firstName": "Ana", "lastName": "Horvat", '
        '"mobileNumber": "+385991234567", "dateOfBirth": "1990-01-15", "extra": "x"}'
    )
    body = send_body(
        provider="ehr", provider_id="P-1", content=None, template_id="t-1", patient=patient
    )
    assert body.to_body() == {
        "providerId": "P-1",
        "provider": "ehr",
        "practiceTemplateId": "t-1",
        "firstName": "Ana",
        "lastName": "Horvat",
        "mobileNumber": "+385991234567",
        "dateOfBirth": "1990-01-15",
    }
    assert "Ana" not in repr(body)


@pytest.mark.parametrize("payload", [None, "", "not json", "[1, 2]", '{"firstName": 5}'])
def test_an_unusable_mirror_payload_adds_nothing(payload: str | None) -> None:
    """No mirror row, or one that does not parse: the send carries the id only."""
    assert mirror_fields(payload) == {}
    body = send_body(
        provider="ehr",
        provider_id="P-1",
        content="Hi",
        template_id=None,
        patient=mirror_fields(payload),
    )
    assert body.to_body() == {"providerId": "P-1", "provider": "ehr", "content": "Hi"}


def test_a_body_needs_exactly_one_of_content_and_template() -> None:
    """Both, or neither: refused before any call (the error hides values)."""
    with pytest.raises(ValidationError):
        send_body(provider="ehr", provider_id="P-1", content="a", template_id="t", patient={})


def test_status_event_payload_is_ids_and_status_only() -> None:
    """{messageId, requestKey, providerId, status, sentOn}: never the text."""
    tracked = Tracked("k-1", "P-1", "m-1", "Pending")
    message = Message(
        message_id="m-1",
        status="Sent",
        content="Ana, your results are ready",
        sent_on=datetime(2025, 5, 20, 9, 15, tzinfo=UTC),
    )
    assert event_payload(tracked, message) == {
        "messageId": "m-1",
        "requestKey": "k-1",
        "providerId": "P-1",
        "status": "Sent",
        "sentOn": "2025-05-20T09:15:00.000Z",
    }
    unsent = Message(message_id="m-1", status="Pending")
    assert event_payload(tracked, unsent)["sentOn"] is None
