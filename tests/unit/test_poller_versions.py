"""Version identity and event payload of form submissions (pure)."""

from __future__ import annotations

from typing import Any

from syncd.submissions.versions import (
    PatientLink,
    content_hash,
    event_payload,
    ordering_key,
    version_key,
)
from syncd.voxares.models import SubmissionDetail


def detail(**overrides: Any) -> SubmissionDetail:
    body: dict[str, Any] = {
        "id": "sub-1",
        "submissionStatus": "Completed",
        "createdAt": "2025-05-20T09:00:00.000Z",
        "updatedAt": "2025-05-20T09:15:00.120Z",
        "receivedAt": "2025-05-20T09:14:59.000Z",
        "requestedBy": "user-1",
        "patient": {"id": "pat-1", "firstName": "Ana", "lastName": "Kos"},
        "form": {"id": "form-1", "displayName": "Intake"},
        "data": {"q1": "yes", "sig": "data:image/png;base64,AAAA"},
    }
    body.update(overrides)
    return SubmissionDetail.model_validate(body)


def test_content_hash_ignores_key_order_and_changes_with_answers_status_form_patient() -> None:
    """Equal content hashes equal; each identity-bearing field changes the hash."""
    base = content_hash(detail())
    assert base == content_hash(detail(data={"sig": "data:image/png;base64,AAAA", "q1": "yes"}))
    assert base != content_hash(detail(data={"q1": "no"}))
    assert base != content_hash(detail(submissionStatus="Rejected"))
    assert base != content_hash(detail(form={"id": "form-2"}))
    assert base != content_hash(detail(patient={"id": "pat-2"}))
    # Names are not part of the version: a renamed patient is not a new submission version.
    assert base == content_hash(detail(patient={"id": "pat-1", "firstName": "Other"}))


def test_version_key_uses_the_api_timestamp_text() -> None:
    """updatedAt is keyed as the API's ISO text with milliseconds."""
    assert version_key(detail())[:2] == ("sub-1", "2025-05-20T09:15:00.120Z")


def test_payload_resolves_the_ehr_id_through_the_mirror_link() -> None:
    """A mirrored patient carries providerId/provider, and orders by providerId."""
    link = PatientLink(provider="ehr", provider_id="P-77")
    payload = event_payload(detail(), link)
    assert payload == {
        "submission": {
            "id": "sub-1",
            "status": "Completed",
            "createdAt": "2025-05-20T09:00:00.000Z",
            "updatedAt": "2025-05-20T09:15:00.120Z",
            "receivedAt": "2025-05-20T09:14:59.000Z",
            "requestedBy": "user-1",
        },
        "form": {"id": "form-1", "displayName": "Intake"},
        "patient": {"voxaresId": "pat-1", "providerId": "P-77", "provider": "ehr"},
        "answers": {"q1": "yes", "sig": "data:image/png;base64,AAAA"},
    }
    assert ordering_key(detail(), link) == "P-77"


def test_payload_of_an_unmirrored_patient_has_null_ehr_ids() -> None:
    """Without a mirror link providerId is null and the Voxares id orders the events."""
    payload = event_payload(detail(receivedAt=None, data=None), None)
    assert payload["patient"] == {"voxaresId": "pat-1", "providerId": None, "provider": None}
    assert payload["submission"]["receivedAt"] is None
    assert payload["answers"] == {}
    assert ordering_key(detail(), None) == "pat-1"
