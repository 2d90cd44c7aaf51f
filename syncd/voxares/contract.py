"""The Voxares integration API contract, as constants.

Every choice that `docs/voxares-api.md` marks ASSUMED lives here, and both the client
(`syncd.voxares`) and the sandbox (`syncd.sandbox`) import it, so that correcting an
assumption is a one-line change that moves both sides together.

Some ASSUMED choices fill a gap the contract leaves rather than a choice it marks: the
contract documents no deletion of form submissions, yet says a listed submission "can be gone
(404) by the time its detail is read"; `SUBMISSION_DELETION` and `SUBMISSION_GONE_STATUS` say
how this project takes that (ASSUMED).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final, Literal

API_PREFIX: Final = "/api/v1/integration"
PRODUCTION_BASE_URL: Final = "https://api.voxares.com" + API_PREFIX
STAGING_BASE_URL: Final = "https://staging-api.voxares.com" + API_PREFIX

# Pagination (documented): zero-based page, default size 20, max 100.
DEFAULT_PAGE_SIZE: Final = 20
MAX_PAGE_SIZE: Final = 100
# ASSUMED: a pageSize over MAX_PAGE_SIZE is answered with 400 (not clamped).
PAGE_SIZE_OVER_MAX_STATUS: Final = 400

# ASSUMED: POST /patients answers 201 on create and 200 on update.
PATIENT_CREATED_STATUS: Final = 201
PATIENT_UPDATED_STATUS: Final = 200

# ASSUMED: POST /messages/send answers 201 (a message is created).
MESSAGE_SENT_STATUS: Final = 201

# ASSUMED: the status of a sent message is read with GET /messages/:messageId.
MessageStatus = Literal["Pending", "Sent", "Delivered", "Failed"]
MESSAGE_STATUSES: Final = ("Pending", "Sent", "Delivered", "Failed")
FINAL_MESSAGE_STATUSES: Final = frozenset({"Delivered", "Failed"})

SubmissionStatus = Literal["Pending", "Opened", "Completed", "Rejected"]
SUBMISSION_STATUSES: Final = ("Pending", "Opened", "Completed", "Rejected")

# Paths, relative to the base URL.
PATIENTS: Final = "/patients"
PATIENT_BY_EXTERNAL_ID: Final = "/patients/{provider}/{provider_id}"
MESSAGES_SEND: Final = "/messages/send"
MESSAGE_BY_ID: Final = "/messages/{message_id}"  # ASSUMED
PRACTICE_TEMPLATES: Final = "/practice-templates"
FORMS: Final = "/forms"  # ASSUMED
DOCUMENTS: Final = "/documents"  # ASSUMED
FORM_SUBMISSIONS: Final = "/form-submissions"
FORM_SUBMISSION_BY_ID: Final = "/form-submissions/{submission_id}"

# ASSUMED: every endpoint needs one scope; a key without it is answered 403.
Scope = Literal["patients", "messages", "content", "form-submissions"]
ALL_SCOPES: Final = ("patients", "messages", "content", "form-submissions")
SCOPE_BY_PATH_PREFIX: Final = {
    PATIENTS: "patients",
    "/messages": "messages",
    PRACTICE_TEMPLATES: "content",
    FORMS: "content",
    DOCUMENTS: "content",
    FORM_SUBMISSIONS: "form-submissions",
}

# ASSUMED: the fields (firstName, lastName, ...) a patient body may carry; anything else is 400.
PATIENT_FIELDS: Final = (
    "providerId",
    "firstName",
    "lastName",
    "provider",
    "mobileNumber",
    "email",
    "dateOfBirth",
)

# ASSUMED: the fields PATCH /patients/:provider/:providerId may change (the external id and
# provider name are the address, not content); anything else is 400.
PATIENT_PATCH_FIELDS: Final = ("firstName", "lastName", "mobileNumber", "email", "dateOfBirth")

# ASSUMED: an upsert (POST /patients) that omits an optional field leaves the stored value as it
# is; an explicit null clears it.
UPSERT_KEEPS_ABSENT_FIELDS: Final = True

# The documented E.164 shape of mobileNumber.
E164_PATTERN: Final = r"^\+[1-9]\d{6,14}$"

# ASSUMED: a body that fails validation is answered 400 with a NestJS-style list of messages.
VALIDATION_ERROR_STATUS: Final = 400

# ASSUMED: the fields a POST /messages/send body may carry; anything else is 400.
MESSAGE_SEND_FIELDS: Final = (
    "providerId",
    "content",
    "practiceTemplateId",
    "provider",
    "firstName",
    "lastName",
    "mobileNumber",
    "email",
    "dateOfBirth",
)

# ASSUMED: sending to a patient that does not exist, without the names and mobile number needed
# to create it (or to a patient without a mobile number), is answered 422.
MESSAGE_PATIENT_UNUSABLE_STATUS: Final = 422

# ASSUMED: in a form submission, these fields are null until the patient answers (Completed or
# Rejected): `receivedAt`, and `data` in the detail.
SUBMISSION_FIELDS_NULL_UNTIL_ANSWERED: Final = ("receivedAt", "data")

# ASSUMED (the contract documents no deletion): a form submission can be deleted on the
# server. From then on its detail answers SUBMISSION_GONE_STATUS with the usual error body
# (`{"statusCode": 404, "message": "Form submission not found", "error": "Not Found"}`) and it is
# absent from every later list (no status marks it; it is simply gone). A list read just before
# the deletion may still show it, so a client can meet the 404 right after listing it.
SUBMISSION_DELETION: Final = True
SUBMISSION_GONE_STATUS: Final = 404

# Timestamps: ISO 8601 UTC with milliseconds, e.g. 2025-05-20T09:15:00.000Z.


def format_timestamp(moment: datetime) -> str:
    """Format an aware datetime the way the API does: UTC, milliseconds, trailing Z."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def parse_timestamp(text: str) -> datetime:
    """Parse an API timestamp (ISO 8601, `Z` or offset) into an aware UTC datetime."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
