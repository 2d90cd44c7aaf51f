"""Routing: glob subscriptions and per-sink formats, as plain values."""

from __future__ import annotations

from typing import Any

import pytest

from syncd.config import OutboxSettings
from syncd.outbox.routing import Route, routes_from_settings


def _submission_payload() -> dict[str, Any]:
    return {
        "submission": {
            "id": "sub-1",
            "status": "Completed",
            "createdAt": "2026-01-02T03:04:05.000Z",
            "updatedAt": "2026-01-02T03:04:06.000Z",
            "receivedAt": "2026-01-02T03:04:06.000Z",
            "requestedBy": None,
        },
        "form": {"id": "form-1", "displayName": "Intake"},
        "patient": {"voxaresId": "p-1", "providerId": "42", "provider": "ehr"},
        "answers": {"allergies": "none", "smoker": False},
    }


@pytest.mark.parametrize(
    ("patterns", "event_type", "expected"),
    [
        (("*",), "form_submission.updated", True),
        (("form_submission.*",), "form_submission.updated", True),
        (("form_submission.*",), "message.status_changed", False),
        (("message.*", "form_submission.updated"), "form_submission.updated", True),
        (("form_submission.updated",), "form_submission.updated.v2", False),
        (("Form_submission.*",), "form_submission.updated", False),
        (("*.updated",), "content.template.updated", True),
    ],
)
def test_subscribes_by_glob(patterns: tuple[str, ...], event_type: str, expected: bool) -> None:
    """A sink takes exactly the event types one of its case-sensitive glob patterns matches."""
    assert Route("crm", patterns).subscribes(event_type) is expected


def test_json_format_passes_the_payload_through() -> None:
    """The json format sends the payload as recorded."""
    payload = _submission_payload()
    assert Route("crm").render("form_submission.updated", payload) is payload


def test_fhir_format_turns_a_submission_into_a_questionnaire_response() -> None:
    """The fhir format makes a form submission's data a QuestionnaireResponse."""
    data = Route("ehr", format="fhir").render("form_submission.updated", _submission_payload())
    assert data["resourceType"] == "QuestionnaireResponse"
    assert data["status"] == "completed"
    assert data["identifier"]["value"] == "sub-1"


def test_fhir_format_leaves_other_event_types_as_recorded() -> None:
    """An event type without a FHIR form goes out as recorded even to a fhir sink."""
    payload = {"messageId": "m-1", "status": "Delivered"}
    assert Route("ehr", format="fhir").render("message.status_changed", payload) is payload


def test_fhir_format_refuses_a_submission_it_cannot_express() -> None:
    """A submission FHIR cannot express raises ValueError (the caller dead-letters it)."""
    payload = _submission_payload()
    payload["submission"]["status"] = "Archived"
    with pytest.raises(ValueError, match=r"submission\.status"):
        Route("ehr", format="fhir").render("form_submission.updated", payload)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"patterns": ()},
        {"patterns": ("",)},
        {"format": "xml"},
        {"start": "yesterday"},
    ],
)
def test_route_rejects_bad_values(kwargs: dict[str, Any]) -> None:
    """A route with no pattern, an unknown format or an unknown start is refused."""
    with pytest.raises(ValueError, match="sink crm"):
        Route("crm", **kwargs)


def test_routes_from_settings() -> None:
    """Every configured sink becomes a route with its patterns, format and start (default:
    the beginning of the outbox, so a fresh install delivers what was written before)."""
    settings = OutboxSettings.model_validate(
        {
            "sinks": {
                "archive": {"type": "file", "directory": "/tmp/x", "events": ["*"]},
                "ehr": {
                    "type": "file",
                    "directory": "/tmp/y",
                    "events": ["form_submission.*"],
                    "format": "fhir",
                    "start": "now",
                },
            }
        }
    )
    assert routes_from_settings(settings) == {
        "archive": Route("archive", ("*",), "json", "beginning"),
        "ehr": Route("ehr", ("form_submission.*",), "fhir", "now"),
    }
