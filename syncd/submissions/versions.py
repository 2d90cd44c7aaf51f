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

from syncd.hashing import canonical_json, sha256_hex
from syncd.voxares.contract import format_timestamp
from syncd.voxares.models import SubmissionDetail

EVENT_TYPE: Final = "form_submission.updated"


@dataclass(frozen=True, slots=True)
class PatientLink:
    """The EHR identity of a Voxares patient, known when the patient mirror created it."""

    provider: str
    provider_id: str


def content_hash(detail: SubmissionDetail) -> str:
    """sha256 of the canonical JSON of the version's status, answers, form id and patient id."""
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


def version_key(detail: SubmissionDetail) -> tuple[str, str, str]:
    """The dedupe identity: (submission id, updatedAt as API text, content hash)."""
    return detail.id, format_timestamp(detail.updated_at), content_hash(detail)


def _ts(moment: datetime | None) -> str | None:
    return format_timestamp(moment) if moment is not None else None


def event_payload(detail: SubmissionDetail, link: PatientLink | None) -> dict[str, Any]:
    """The `form_submission.updated` payload; `link` is None for a patient not mirrored."""
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
        "answers": detail.data if detail.data is not None else {},
    }


def ordering_key(detail: SubmissionDetail, link: PatientLink | None) -> str | None:
    """Per-patient ordering: the EHR providerId when known, else the Voxares patient id."""
    if link is not None:
        return link.provider_id
    return detail.patient.id if detail.patient else None
