"""Version identity and event payload of form submissions (pure)."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from syncd.hashing import canonical_json, sha256_hex
from syncd.submissions.versions import (
    PatientLink,
    Version,
    content_hash,
    event_payload,
    event_payload_json,
    ordering_key,
    version_key,
)
from syncd.voxares.models import SubmissionDetail
from tests import strategies

# Pinned: the hash of `detail()` as every release so far stored it. If this changes, every
# submission already recorded looks like a new version after an upgrade and is re-emitted.
CONTENT_HASH = "81baab5e9dd56bb2ff8bb174414fce12c54376148766ec2ebd9a2c66f5ab247c"

any_text = st.text(st.characters(exclude_categories=()), max_size=12)
answers = strategies.json_values(any_text, max_size=3, max_leaves=12)
moments = st.datetimes(timezones=st.just(UTC)).map(
    lambda moment: moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
)
details = st.builds(
    lambda fields: SubmissionDetail.model_validate(fields),
    st.fixed_dictionaries(
        {
            "id": any_text,
            "submissionStatus": any_text,
            "updatedAt": moments,
            "data": st.none() | st.dictionaries(any_text, answers, max_size=4),
        },
        optional={
            "createdAt": moments,
            "receivedAt": st.none() | moments,
            "requestedBy": st.none() | any_text,
            "patient": st.none() | st.fixed_dictionaries({"id": any_text}),
            "form": st.none()
            | st.fixed_dictionaries({"id": any_text}, optional={"displayName": any_text}),
        },
    ),
)
links = st.none() | st.builds(PatientLink, provider=any_text, provider_id=any_text)


def formula_of_earlier_releases(detail: SubmissionDetail) -> str:
    """The content hash exactly as releases before the shared encoding computed it."""
    return sha256_hex(
        canonical_json(
            {
                "status": detail.submission_status,
                "data": detail.data,
                "formId": detail.form.id if detail.form else None,
                "patientId": detail.patient.id if detail.patient else None,
            }
        )
    )


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


def test_content_hash_is_pinned() -> None:
    """A known detail hashes to the constant stored by earlier releases."""
    assert content_hash(detail()) == CONTENT_HASH == formula_of_earlier_releases(detail())


@given(details)
def test_content_hash_equals_the_formula_of_earlier_releases(submission: SubmissionDetail) -> None:
    """For any detail (any text, lone surrogates, absent parts) the stored hashes still match."""
    expected = formula_of_earlier_releases(submission)
    assert content_hash(submission) == expected
    assert Version.of(submission).key == (submission.id, version_key(submission)[1], expected)


@given(details, links)
def test_encoded_payload_equals_canonical_json_of_the_payload(
    submission: SubmissionDetail, link: PatientLink | None
) -> None:
    """The payload built around the once-encoded answers is canonical_json of the payload."""
    encoded = event_payload_json(Version.of(submission), link)
    assert encoded == canonical_json(event_payload(submission, link))
