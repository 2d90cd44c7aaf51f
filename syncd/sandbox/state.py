"""`Sandbox`: all the sandbox's state and the logic of the emulated API, without HTTP.

The parts live in their own modules and build on each other: `core.SandboxCore` (clock, ids,
practices and keys), `submissions.FormSubmissions` (form submissions and the server freedoms
around them), and this module's `Sandbox` (patients, messages, content, statistics).

`Sandbox` keeps plain dicts indexed the way requests arrive: keys by token, patients by
(practice, provider, providerId) and by id, submissions by id. Hot paths (auth, upsert, send,
get by id) are O(1); only list and search scan a practice, and their filtered result is cached
until the practice changes, so paging through a large window costs one scan.

Methods take and return plain values and raise `ApiError` (with the status the API would
answer), so tests can drive the sandbox directly and the app only translates HTTP.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from syncd.sandbox import seed as content
from syncd.sandbox.errors import ApiError, invalid, not_found
from syncd.sandbox.freedoms import to_ms
from syncd.sandbox.listing import ListOptions, ListOrder, list_small, ordered, page_body, window
from syncd.sandbox.practice import ANSWERED_STATUSES, OPEN_STATUSES, Practice
from syncd.sandbox.records import ApiKey, Message, Patient
from syncd.sandbox.sms import render, segment_count
from syncd.sandbox.submissions import FormSubmissions, SubmissionQuery
from syncd.sandbox.validation import parse_paging, parse_search_term, validate_body
from syncd.voxares.contract import (
    MESSAGE_PATIENT_UNUSABLE_STATUS,
    MESSAGE_SEND_FIELDS,
    PATIENT_FIELDS,
    PATIENT_PATCH_FIELDS,
    UPSERT_KEEPS_ABSENT_FIELDS,
    VALIDATION_ERROR_STATUS,
)

DEMO_API_KEY = content.DEMO_API_KEY

# Wire field name -> Patient attribute, for the optional fields an upsert or PATCH may set.
_OPTIONAL_PATIENT_FIELDS = {
    "mobileNumber": "mobile_number",
    "email": "email",
    "dateOfBirth": "date_of_birth",
}


def send_fingerprint(practice_id: str, provider: str, provider_id: str, what: str) -> str:
    """sha256 of (practice, provider, providerId, content or template id): one per distinct SMS."""
    raw = "\x1f".join((practice_id, provider, provider_id, what)).encode()
    return hashlib.sha256(raw).hexdigest()


@dataclass(slots=True)
class MessageTiming:
    """How an SMS progresses: Sent after `sent_after` s, final after `final_after` s."""

    sent_after_seconds: float = 1.0
    final_after_seconds: float = 3.0
    failure_rate: float = 0.05


class Sandbox(FormSubmissions):
    """The emulated Voxares service: practices, keys, patients, messages, content, submissions.

    `seed` makes ids and generated data reproducible; `clock` (aware datetimes) drives every
    timestamp and the progress of messages, so tests can move time by hand. A server clock
    offset (a fault) is applied on top through `clock_offset`; the form-submission freedoms
    (also faults) through `configure_freedoms`.
    """

    def __init__(
        self,
        seed: int = 0,
        clock: Callable[[], datetime] | None = None,
        *,
        message_timing: MessageTiming | None = None,
    ) -> None:
        self.message_timing = message_timing or MessageTiming()
        super().__init__(seed, clock)

    def reset(self, seed: int | None = None) -> None:
        """Forget everything and start again from the default seed data."""
        super().reset(seed)
        self.activity_enabled = False
        self.activity_rate = 2.0  # events per second when enabled
        self.patient_serial = 0

    # ----------------------------------------------------------------- patients

    # ----------------------------------------------------------------- patients

    def upsert_patient(self, key: ApiKey, body: Mapping[str, Any]) -> tuple[bool, Patient]:
        """`POST /patients`: create or update by (provider, providerId); (created, patient)."""
        clean = validate_body(
            body, allowed=PATIENT_FIELDS, required=("providerId", "firstName", "lastName")
        )
        practice = self.practices[key.practice_id]
        provider = clean.get("provider") or key.name
        provider_id = str(clean["providerId"])
        existing = practice.by_external.get((provider, provider_id))
        if existing is None:
            return True, self._create_patient(practice, provider, provider_id, clean)
        fields = dict(clean)
        if not UPSERT_KEEPS_ABSENT_FIELDS:
            for wire in _OPTIONAL_PATIENT_FIELDS:
                fields.setdefault(wire, None)
        self._update_patient(practice, existing, fields)
        return False, existing

    def _create_patient(
        self,
        practice: Practice,
        provider: str,
        provider_id: str,
        clean: Mapping[str, str | None],
        at: datetime | None = None,
    ) -> Patient:
        now = at or self.now()
        patient = Patient(
            id=self.new_id(),
            provider=provider,
            provider_id=provider_id,
            first_name=str(clean["firstName"]),
            last_name=str(clean["lastName"]),
            mobile_number=clean.get("mobileNumber"),
            email=clean.get("email"),
            date_of_birth=clean.get("dateOfBirth"),
            created_at=now,
            updated_at=now,
        )
        practice.patients[patient.id] = patient
        practice.patient_ids.append(patient.id)
        practice.by_external[(provider, provider_id)] = patient
        practice.patients_version += 1
        self._touch()
        return patient

    def _update_patient(
        self, practice: Practice, patient: Patient, fields: Mapping[str, str | None]
    ) -> None:
        changed = False
        for wire, attribute in (("firstName", "first_name"), ("lastName", "last_name")):
            if fields.get(wire) is not None and getattr(patient, attribute) != fields[wire]:
                setattr(patient, attribute, fields[wire])
                changed = True
        for wire, attribute in _OPTIONAL_PATIENT_FIELDS.items():
            if wire in fields and getattr(patient, attribute) != fields[wire]:
                setattr(patient, attribute, fields[wire])
                changed = True
        if changed:
            patient.updated_at = max(self.now(), patient.updated_at)
            patient.refresh_search_text()
            practice.patients_version += 1
            self._touch()

    def get_patient(self, key: ApiKey, provider: str, provider_id: str) -> Patient:
        """`GET /patients/:provider/:providerId` (404 when the practice has no such patient)."""
        patient = self.practices[key.practice_id].by_external.get((provider, provider_id))
        if patient is None:
            raise not_found("Patient")
        return patient

    def patch_patient(
        self, key: ApiKey, provider: str, provider_id: str, body: Mapping[str, Any]
    ) -> Patient:
        """`PATCH /patients/:provider/:providerId`: only the fields sent change."""
        clean = validate_body(body, allowed=PATIENT_PATCH_FIELDS)
        patient = self.get_patient(key, provider, provider_id)
        self._update_patient(self.practices[key.practice_id], patient, clean)
        return patient

    def list_patients(
        self, key: ApiKey, query: Mapping[str, str], options: ListOptions | None = None
    ) -> dict[str, Any]:
        """`GET /patients`: a page of the practice's patients matching `searchTerm`."""
        page, size = parse_paging(query)
        search = parse_search_term(query)
        practice = self.practices[key.practice_id]
        options = options or ListOptions()
        cache_key = ("patients", practice.id, search, options.order)
        stamp = (practice.patients_version, 0)

        def compute() -> list[Any]:
            found = [
                p for p in practice.patients.values() if search is None or search in p.search_text
            ]
            return ordered(found, options.order, lambda p: p.updated_at)

        rows = self._cached(cache_key, stamp, compute)
        return page_body([p.to_api() for p in window(rows, page, size, options)], len(rows))

    # ----------------------------------------------------------------- messages

    def send_message(self, key: ApiKey, body: Mapping[str, Any]) -> Message:
        """`POST /messages/send`: one SMS, inline or from a template; the patient may be created.

        The patient fields of the body are used only to create a missing patient; an existing
        patient is not updated by a send (the contract documents them for creation only).
        """
        clean = validate_body(body, allowed=MESSAGE_SEND_FIELDS, required=("providerId",))
        if ("content" in clean) == ("practiceTemplateId" in clean):
            raise invalid(
                ["exactly one of content and practiceTemplateId must be given"],
                VALIDATION_ERROR_STATUS,
            )
        practice = self.practices[key.practice_id]
        template = None
        if "practiceTemplateId" in clean:
            template = practice.templates.get(str(clean["practiceTemplateId"]))
            if template is None:
                raise not_found("Practice template")
        provider = clean.get("provider") or key.name
        provider_id = str(clean["providerId"])
        patient = practice.by_external.get((provider, provider_id))
        if patient is None:
            missing = [f for f in ("firstName", "lastName", "mobileNumber") if not clean.get(f)]
            if missing:
                raise ApiError(
                    MESSAGE_PATIENT_UNUSABLE_STATUS,
                    [f"patient does not exist: {f} is required to create it" for f in missing],
                )
            patient = self._create_patient(practice, provider, provider_id, clean)
        if not patient.mobile_number:
            raise ApiError(MESSAGE_PATIENT_UNUSABLE_STATUS, "patient has no mobile number")
        source = template.content if template else str(clean["content"])
        text = render(source, {"firstName": patient.first_name, "lastName": patient.last_name})
        what = f"template:{template.id}" if template else f"content:{clean['content']}"
        timing = self.message_timing
        message = Message(
            id=self.new_id(),
            practice_id=practice.id,
            patient_id=patient.id,
            content=text,
            sms_count=segment_count(text),
            created_at=self.now(),
            sent_after=timedelta(seconds=timing.sent_after_seconds),
            final_after=timedelta(seconds=timing.final_after_seconds),
            fails=self.rng.random() < timing.failure_rate,
            fingerprint=send_fingerprint(practice.id, provider, provider_id, what),
        )
        practice.messages[message.id] = message
        practice.sends[message.fingerprint] += 1
        self._touch()
        return message

    def get_message(self, key: ApiKey, message_id: str) -> Message:
        """`GET /messages/:messageId` (404 when the practice has no such message)."""
        message = self.practices[key.practice_id].messages.get(message_id)
        if message is None:
            raise not_found("Message")
        return message

    # ----------------------------------------------------------------- content

    def list_templates(
        self, key: ApiKey, query: Mapping[str, str], options: ListOptions | None = None
    ) -> dict[str, Any]:
        """`GET /practice-templates`, searchable by name and text."""
        items = self.practices[key.practice_id].templates.values()
        return list_small(
            items, query, options, lambda t: f"{t.name}\x1f{t.content}", lambda t: t.to_api()
        )

    def list_forms(
        self, key: ApiKey, query: Mapping[str, str], options: ListOptions | None = None
    ) -> dict[str, Any]:
        """`GET /forms`, searchable by display name."""
        items = self.practices[key.practice_id].forms.values()
        return list_small(items, query, options, lambda f: f.display_name, lambda f: f.to_api())

    def list_documents(
        self, key: ApiKey, query: Mapping[str, str], options: ListOptions | None = None
    ) -> dict[str, Any]:
        """`GET /documents`, searchable by name."""
        items = self.practices[key.practice_id].documents.values()
        return list_small(items, query, options, lambda d: d.name, lambda d: d.to_api())

    # ----------------------------------------------------------------- seeding

    def add_patient(
        self,
        practice_id: str,
        body: Mapping[str, Any],
        *,
        provider: str | None = None,
        at: datetime | None = None,
    ) -> str:
        """Create or update one patient directly (validated like the API); its id."""
        practice = self._practice(practice_id)
        clean = validate_body(
            body, allowed=PATIENT_FIELDS, required=("providerId", "firstName", "lastName")
        )
        provider_name = clean.get("provider") or provider or self._default_provider(practice)
        provider_id = str(clean["providerId"])
        existing = practice.by_external.get((provider_name, provider_id))
        if existing is not None:
            self._update_patient(practice, existing, clean)
            return existing.id
        return self._create_patient(
            practice, provider_name, provider_id, clean, to_ms(at) if at else None
        ).id

    def seed_patients(
        self,
        practice_id: str,
        count: int,
        *,
        provider: str | None = None,
        id_prefix: str = "seed-",
        at: datetime | None = None,
    ) -> list[str]:
        """Create `count` synthetic patients with fresh providerIds; their ids."""
        practice = self._practice(practice_id)
        provider_name = provider or self._default_provider(practice)
        ids: list[str] = []
        while len(ids) < count:
            self.patient_serial += 1
            provider_id = f"{id_prefix}{self.patient_serial}"
            if (provider_name, provider_id) in practice.by_external:
                continue
            body = content.synthetic_person(self.rng, self.patient_serial)
            body["providerId"] = provider_id
            moment = to_ms(at) if at else None
            ids.append(self._create_patient(practice, provider_name, provider_id, body, moment).id)
        return ids

    @staticmethod
    def _default_provider(practice: Practice) -> str:
        return practice.key_names[0] if practice.key_names else "sandbox"

    # ----------------------------------------------------------------- observation

    def stats(
        self, practice_id: str | None = None, *, include_fingerprints: bool = True
    ) -> dict[str, Any]:
        """Counts for tests and benchmarks: per practice, messages, sends, requests.

        `sendsPerFingerprint` maps sha256(practice, provider, providerId, content or template)
        to how many sends the sandbox accepted, so a test can prove nothing was sent twice.
        `requests` counts "METHOD /path/template status" over all practices. Submissions are
        counted by their newest status (visible yet or not); deleted ones apart.
        """
        now = self.now()
        sends: Counter[str] = Counter()
        message_statuses: Counter[str] = Counter()
        submission_statuses: Counter[str] = Counter()
        deleted = 0
        per_practice = {}
        for practice in self._practices(practice_id):
            sends.update(practice.sends)
            message_statuses.update(m.status_at(now)[0] for m in practice.messages.values())
            live = [s for s in practice.submissions.values() if s.deleted_at is None]
            submission_statuses.update(s.status for s in live)
            deleted += len(practice.submissions) - len(live)
            per_practice[practice.id] = {
                "name": practice.name,
                "patients": len(practice.patients),
                "messages": len(practice.messages),
                "submissions": len(live),
            }
        result: dict[str, Any] = {
            "practices": per_practice,
            "patients": sum(p["patients"] for p in per_practice.values()),
            "messages": sum(p["messages"] for p in per_practice.values()),
            "messagesByStatus": dict(message_statuses),
            "sendsAccepted": sum(sends.values()),
            "duplicateSends": sum(1 for n in sends.values() if n > 1),
            "submissions": sum(p["submissions"] for p in per_practice.values()),
            "submissionsByStatus": dict(submission_statuses),
            "submissionsDeleted": deleted,
            "requests": dict(self.requests),
        }
        if include_fingerprints:
            result["sendsPerFingerprint"] = dict(sends)
        return result


__all__ = [
    "ANSWERED_STATUSES",
    "DEMO_API_KEY",
    "OPEN_STATUSES",
    "ListOptions",
    "ListOrder",
    "MessageTiming",
    "Practice",
    "Sandbox",
    "SubmissionQuery",
    "send_fingerprint",
    "to_ms",
]
