"""Pydantic models of what goes to and comes back from the Voxares API.

Attributes are snake_case, the wire is camelCase (aliases); either name populates a model.
Models accept unknown fields (`extra="allow"`) so that a new field in an API answer does not
break the daemon. Patient data never shows in a repr, `str()` or validation error: reprs list
only the fields named in `_repr_fields` (ids, statuses, timestamps) and validation errors hide
their input.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel

from syncd.voxares.contract import format_timestamp


def _as_utc(moment: datetime) -> datetime:
    """The API speaks UTC; a timestamp without an offset is read as UTC."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


class VoxaresModel(BaseModel):
    """Base of every API model: camelCase aliases, tolerant of extra fields, redacted reprs."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="allow",
        hide_input_in_errors=True,
    )

    # Fields safe to show in a repr; everything else (names, phones, answers) is left out.
    _repr_fields: ClassVar[tuple[str, ...]] = ()

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name in self._repr_fields:
            yield name, getattr(self, name, None)

    def to_body(self) -> dict[str, Any]:
        """The JSON request body: camelCase keys, None values left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Patient(VoxaresModel):
    """A patient as Voxares returns it (no provider/providerId: the mirror keeps that map)."""

    _repr_fields = ("id", "created_at", "updated_at")

    id: str
    first_name: str | None = None
    last_name: str | None = None
    mobile_number: str | None = None
    email: str | None = None
    date_of_birth: UtcDatetime | None = None
    created_at: UtcDatetime | None = None
    updated_at: UtcDatetime | None = None


class PatientUpsert(VoxaresModel):
    """The body of `POST /patients`: creates the patient or updates the one with this id."""

    _repr_fields = ("provider", "provider_id")

    provider_id: str
    first_name: str
    last_name: str
    provider: str | None = None
    mobile_number: str | None = None
    email: str | None = None
    date_of_birth: str | None = None  # ISO date, e.g. 1990-01-15

    def to_body(self) -> dict[str, Any]:
        """The JSON body: fields never set are left out, fields set to None are sent as null.

        The API keeps a stored value when an upsert omits its field and clears it on an
        explicit null (`contract.UPSERT_KEEPS_ABSENT_FIELDS`): a value removed in the EHR
        must travel as null to be removed in Voxares.
        """
        body = self.model_dump(mode="json", by_alias=True, exclude_unset=True)
        if body.get("provider") is None:
            body.pop("provider", None)  # null would not mean "the key's name"
        return body


class UpsertResult(VoxaresModel):
    """What an upsert did: the patient as stored, and whether it was created (201) or updated."""

    _repr_fields = ("patient", "created")

    patient: Patient
    created: bool


class SendMessage(VoxaresModel):
    """The body of `POST /messages/send`: inline `content` or a `practice_template_id`."""

    _repr_fields = ("provider", "provider_id", "practice_template_id")

    provider_id: str
    content: str | None = None
    practice_template_id: str | None = None
    provider: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    mobile_number: str | None = None
    email: str | None = None
    date_of_birth: str | None = None

    @model_validator(mode="after")
    def _exactly_one_of_content_and_template(self) -> SendMessage:
        if (self.content is None) == (self.practice_template_id is None):
            raise ValueError("exactly one of content and practice_template_id must be given")
        return self


class Message(VoxaresModel):
    """An SMS as Voxares reports it; `status` moves Pending → Sent → Delivered, or Failed."""

    _repr_fields = ("message_id", "patient_id", "status", "sms_count", "sent_on")

    message_id: str
    patient_id: str | None = None
    status: str
    sms_count: int | None = None
    content: str | None = None
    sent_on: UtcDatetime | None = None
    created_at: UtcDatetime | None = None
    updated_at: UtcDatetime | None = None


class PracticeTemplate(VoxaresModel):
    """A saved SMS template (text with variables such as `{{firstName}}`)."""

    _repr_fields = ("id", "name", "updated_at")

    id: str
    name: str | None = None
    content: str | None = None
    created_at: UtcDatetime | None = None
    updated_at: UtcDatetime | None = None


class Form(VoxaresModel):
    """A form made in the Voxares dashboard."""

    _repr_fields = ("id", "display_name")

    id: str
    display_name: str | None = None


class Document(VoxaresModel):
    """A document made in the Voxares dashboard."""

    _repr_fields = ("id", "name")

    id: str
    name: str | None = None


class SubmissionPatient(VoxaresModel):
    """The patient a form submission belongs to, as embedded in the submission."""

    _repr_fields = ("id",)

    id: str
    first_name: str | None = None
    last_name: str | None = None
    mobile_number: str | None = None


class FormRef(VoxaresModel):
    """The form a submission answers, as embedded in the submission."""

    _repr_fields = ("id", "display_name")

    id: str
    display_name: str | None = None


class SubmissionSummary(VoxaresModel):
    """A form submission as listed: no answers, so that polling stays cheap."""

    _repr_fields = ("id", "submission_status", "updated_at")

    id: str
    submission_status: str
    created_at: UtcDatetime | None = None
    updated_at: UtcDatetime
    received_at: UtcDatetime | None = None
    requested_by: str | None = None
    patient: SubmissionPatient | None = None
    form: FormRef | None = None


class SubmissionDetail(SubmissionSummary):
    """A form submission with the patient's answers (`data`, possibly large data URLs)."""

    data: dict[str, Any] | None = None


class SubmissionFilters(VoxaresModel):
    """Filters of `GET /form-submissions`; `updated_from`/`updated_to` are inclusive."""

    _repr_fields = ("status", "updated_from", "updated_to", "patient_id", "form_id")

    status: str | None = None
    updated_from: UtcDatetime | None = None
    updated_to: UtcDatetime | None = None
    patient_id: str | None = None
    form_id: str | None = None
    search_term: str | None = None

    def to_params(self) -> dict[str, str]:
        """Query parameters in the API's names and timestamp format."""
        params: dict[str, str] = {}
        for name, value in self:
            if value is None:
                continue
            key = to_camel(name)
            params[key] = format_timestamp(value) if isinstance(value, datetime) else str(value)
        return params


T = TypeVar("T", bound=BaseModel)


class Page(VoxaresModel, Generic[T]):
    """One page of a list: its items, the total `count` of matches, and the server's clock.

    `server_date` comes from the response's `Date` header, not the body: pollers need the
    server's notion of now, because the server's clock is not ours.
    """

    _repr_fields = ("count", "server_date")

    data: list[T]
    count: int
    server_date: UtcDatetime | None = None


class ApiErrorBody(VoxaresModel):
    """An error answer, `{"statusCode", "message", "error"}`; `message` may be a list."""

    _repr_fields = ("status_code", "error")

    status_code: int | None = None
    message: str | list[str] | None = None
    error: str | None = None

    @property
    def text(self) -> str | None:
        """The message as one string (list items joined with `; `)."""
        if isinstance(self.message, list):
            return "; ".join(str(item) for item in self.message) or None
        return self.message or self.error
