"""What a form-submission version is, as an outbox event (pure, no I/O).

A version is identified by `(submission id, updatedAt as the API writes it, content hash)`.
The content hash covers what a downstream system acts on (status, answers, form, patient),
so a change that the API forgot to stamp with a new `updatedAt` is still a new version,
while the same version read twice (overlapping windows, re-runs after a crash) is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from syncd.hashing import canonical_json, canonical_json_of_decoded, canonical_object, sha256_hex
from syncd.submissions.window import Listed
from syncd.voxares.contract import format_timestamp
from syncd.voxares.models import SubmissionDetail

EVENT_TYPE: Final = "form_submission.updated"
# A listed submission whose detail answered 404, 403 or 410 on every read (see README).
REMOVED_EVENT_TYPE: Final = "form_submission.removed"
# The `content_hash` of a removal's version record: a removal is not content, and a later
# successful read of the same `updatedAt` must still count as a new version.
REMOVED_HASH_PREFIX: Final = "removed:"


@dataclass(frozen=True, slots=True)
class PatientLink:
    """The EHR identity of a Voxares patient, known when the patient mirror created it."""

    provider: str
    provider_id: str


@dataclass(frozen=True, slots=True)
class Version:
    """A fetched detail with its dedupe identity and its answers encoded once.

    The answers (tens of KB of data URLs) are the bulk of both the content hash and the
    event payload; `answers` is their canonical JSON, shared by the two.
    """

    key: tuple[str, str, str]
    detail: SubmissionDetail
    answers: bytes  # canonical JSON of `detail.data` (`null` when absent)

    @classmethod
    def of(cls, detail: SubmissionDetail) -> Version:
        """Encode the answers once and derive the dedupe identity from them."""
        answers = canonical_json_of_decoded(detail.data)
        key = (detail.id, format_timestamp(detail.updated_at), _hash(detail, answers))
        return cls(key=key, detail=detail, answers=answers)


def content_hash(detail: SubmissionDetail) -> str:
    """sha256 of the canonical JSON of the version's status, answers, form id and patient id."""
    return _hash(detail, canonical_json(detail.data))


def _hash(detail: SubmissionDetail, answers: bytes) -> str:
    # Exactly the bytes of `canonical_json({"status", "data", "formId", "patientId"})`:
    # stored `submission_versions.content_hash` values must keep matching after upgrades.
    return sha256_hex(
        canonical_object(
            {
                "status": canonical_json(detail.submission_status),
                "data": answers,
                "formId": canonical_json(detail.form.id if detail.form else None),
                "patientId": canonical_json(detail.patient.id if detail.patient else None),
            }
        )
    )


def version_key(detail: SubmissionDetail) -> tuple[str, str, str]:
    """The dedupe identity: (submission id, updatedAt as API text, content hash)."""
    return Version.of(detail).key


def _ts(moment: datetime | None) -> str | None:
    return format_timestamp(moment) if moment is not None else None


def _envelope(detail: SubmissionDetail, link: PatientLink | None) -> dict[str, Any]:
    """Every member of the event payload except the answers."""
    return {
        "submission": {
            "id": detail.id,
            "status": detail.submission_status,
            "createdAt": _ts(detail.created_at),
            "updatedAt": _ts(detail.updated_at),
            "receivedAt": _ts(detail.received_at),
            "requestedBy": detail.requested_by,
        },
        "form": {
            "id": detail.form.id if detail.form else None,
            "displayName": detail.form.display_name if detail.form else None,
        },
        "patient": {
            "voxaresId": detail.patient.id if detail.patient else None,
            "providerId": link.provider_id if link else None,
            "provider": link.provider if link else None,
        },
    }


def event_payload(detail: SubmissionDetail, link: PatientLink | None) -> dict[str, Any]:
    """The `form_submission.updated` payload; `link` is None for a patient not mirrored."""
    return {**_envelope(detail, link), "answers": detail.data if detail.data is not None else {}}


def event_payload_json(version: Version, link: PatientLink | None) -> bytes:
    """`canonical_json(event_payload(...))`, reusing the version's encoded answers."""
    parts = {name: canonical_json(value) for name, value in _envelope(version.detail, link).items()}
    parts["answers"] = version.answers if version.detail.data is not None else b"{}"
    return canonical_object(parts)


def ordering_key(detail: SubmissionDetail, link: PatientLink | None) -> str | None:
    """Per-patient ordering: the EHR providerId when known, else the Voxares patient id."""
    if link is not None:
        return link.provider_id
    return detail.patient.id if detail.patient else None


def removed_payload_json(listed: Listed, status: int, link: PatientLink | None) -> bytes:
    """The `form_submission.removed` payload: ids only, as listed before the detail was gone."""
    return canonical_json(
        {
            "submission": {
                "id": listed.submission_id,
                "updatedAt": format_timestamp(listed.updated_at),
                "detailStatus": status,
            },
            "form": {"id": listed.form_id},
            "patient": {
                "voxaresId": listed.patient_id,
                "providerId": link.provider_id if link else None,
                "provider": link.provider if link else None,
            },
        }
    )
