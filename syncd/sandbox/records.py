"""The records the sandbox keeps in memory, and how each one looks on the wire.

Plain slotted dataclasses, so that 100,000 patients stay cheap. Timestamps are aware UTC
datetimes truncated to milliseconds (the API's precision), so that what a client reads back
compares equal to what the sandbox filters on; only a submission's stored `updatedAt` may carry
microseconds (a server freedom, see `syncd.sandbox.freedoms`). Reprs show ids only: these hold
patient data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from syncd.voxares.contract import format_timestamp


def _fmt(moment: datetime | None) -> str | None:
    return None if moment is None else format_timestamp(moment)


@dataclass(slots=True, repr=False)
class ApiKey:
    """An API key: bound to one practice, with a human name (the default `provider`)."""

    key_id: str
    secret: str
    practice_id: str
    name: str
    scopes: frozenset[str]

    @property
    def token(self) -> str:
        """The full key a client sends as `Bearer vox-<id>-<secret>`."""
        return f"vox-{self.key_id}-{self.secret}"

    def __repr__(self) -> str:
        return f"ApiKey(key_id={self.key_id!r}, practice_id={self.practice_id!r})"


@dataclass(slots=True, repr=False)
class Patient:
    """A patient of one practice, addressed externally by (provider, provider_id)."""

    id: str
    provider: str
    provider_id: str
    first_name: str
    last_name: str
    mobile_number: str | None
    email: str | None
    date_of_birth: str | None  # ISO date, YYYY-MM-DD
    created_at: datetime
    updated_at: datetime
    search_text: str = ""

    def __post_init__(self) -> None:
        self.refresh_search_text()

    def refresh_search_text(self) -> None:
        """Rebuild the lower-cased text `searchTerm` matches against."""
        parts = (
            self.first_name,
            self.last_name,
            f"{self.first_name} {self.last_name}",
            self.mobile_number or "",
            self.email or "",
            self.provider_id,
        )
        self.search_text = "\x1f".join(parts).casefold()

    def to_api(self) -> dict[str, Any]:
        """The contract's patient object (no provider/providerId, by design of the API)."""
        return {
            "id": self.id,
            "firstName": self.first_name,
            "lastName": self.last_name,
            "mobileNumber": self.mobile_number,
            "email": self.email,
            "dateOfBirth": None
            if self.date_of_birth is None
            else f"{self.date_of_birth}T00:00:00.000Z",
            "createdAt": format_timestamp(self.created_at),
            "updatedAt": format_timestamp(self.updated_at),
        }

    def __repr__(self) -> str:
        return f"Patient(id={self.id!r})"


@dataclass(slots=True, repr=False)
class Message:
    """An SMS. Its status is a function of time since creation (see `status_at`)."""

    id: str
    practice_id: str
    patient_id: str
    content: str
    sms_count: int
    created_at: datetime
    sent_after: timedelta
    final_after: timedelta
    fails: bool
    fingerprint: str

    def status_at(self, now: datetime) -> tuple[str, datetime | None, datetime]:
        """(status, sentOn, updatedAt) at `now`: Pending, then Sent, then Delivered or Failed."""
        elapsed = now - self.created_at
        if elapsed < self.sent_after:
            return "Pending", None, self.created_at
        sent_on = self.created_at + self.sent_after
        if elapsed < self.final_after:
            return "Sent", sent_on, sent_on
        return (
            ("Failed" if self.fails else "Delivered"),
            sent_on,
            self.created_at + self.final_after,
        )

    def to_api(self, now: datetime) -> dict[str, Any]:
        """The contract's message object as it stands at `now`."""
        status, sent_on, updated_at = self.status_at(now)
        return {
            "messageId": self.id,
            "patientId": self.patient_id,
            "status": status,
            "smsCount": self.sms_count,
            "content": self.content,
            "sentOn": _fmt(sent_on),
            "createdAt": format_timestamp(self.created_at),
            "updatedAt": format_timestamp(updated_at),
        }

    def __repr__(self) -> str:
        return f"Message(id={self.id!r})"


@dataclass(slots=True)
class Template:
    """A practice template: SMS text with variables such as `{{firstName}}`."""

    id: str
    name: str
    content: str
    created_at: datetime
    updated_at: datetime

    def to_api(self) -> dict[str, Any]:
        """The contract's template object."""
        return {
            "id": self.id,
            "name": self.name,
            "content": self.content,
            "createdAt": format_timestamp(self.created_at),
            "updatedAt": format_timestamp(self.updated_at),
        }


@dataclass(slots=True)
class Form:
    """A form made in the dashboard; `questions` drive the generated answers."""

    id: str
    display_name: str
    questions: tuple[str, ...] = ()

    def to_api(self) -> dict[str, Any]:
        """The contract's form object."""
        return {"id": self.id, "displayName": self.display_name}


@dataclass(slots=True)
class Document:
    """A document made in the dashboard."""

    id: str
    name: str

    def to_api(self) -> dict[str, Any]:
        """The contract's document object."""
        return {"id": self.id, "name": self.name}


@dataclass(slots=True)
class SubmissionVersion:
    """One write of a submission: what it says, its stored `updatedAt`, when readers see it.

    `updated_at` is stored as the server stores it (microseconds under the "us" precision
    freedom); `visible_at` is the server time from which the list and the detail show it.
    """

    updated_at: datetime
    visible_at: datetime
    status: str
    received_at: datetime | None = None
    data: dict[str, Any] | None = None
    data_variant: int | None = None


@dataclass(slots=True, repr=False)
class Submission:
    """A form sent to a patient, and every version (write) it went through, oldest first.

    The newest version is what the server's primary holds (what the next write builds on);
    `visible` indexes the newest version readers see, which is older while later writes are
    still invisible (-1: the submission itself is not visible yet). A deleted submission keeps
    its history for observation and is gone for readers.

    In a version, `data` holds answers given explicitly; `data_variant` stands for generated
    answers (with a large signature shared between submissions, so 100,000 of them stay small
    in memory).
    """

    id: str
    practice_id: str
    patient_id: str
    form_id: str
    requested_by: str
    created_at: datetime
    versions: list[SubmissionVersion] = field(default_factory=list)
    visible: int = -1
    deleted_at: datetime | None = None
    # The version readers see now (None while none is, or once deleted): derived from
    # `visible` and `deleted_at`, kept as a field because every list scan reads it.
    shown: SubmissionVersion | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._refresh()

    def reveal(self, index: int) -> None:
        """Version `index` has become visible (so have the ones before it)."""
        self.visible = max(self.visible, index)
        self._refresh()

    def delete(self, at: datetime) -> None:
        """The submission is deleted at `at`: gone for readers, its history kept."""
        self.deleted_at = at
        self._refresh()

    def _refresh(self) -> None:
        gone = self.visible < 0 or self.deleted_at is not None
        self.shown = None if gone else self.versions[self.visible]

    @property
    def latest(self) -> SubmissionVersion:
        """The newest version, visible or not."""
        return self.versions[-1]

    @property
    def status(self) -> str:
        """The status of the newest version."""
        return self.latest.status

    @property
    def updated_at(self) -> datetime:
        """The stored updatedAt of the newest version."""
        return self.latest.updated_at

    def __repr__(self) -> str:
        return f"Submission(id={self.id!r}, status={self.status!r})"
