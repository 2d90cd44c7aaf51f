"""All the sandbox's state and the logic of the emulated API, without HTTP.

`Sandbox` keeps plain dicts indexed the way requests arrive: keys by token, patients by
(practice, provider, providerId) and by id, submissions by id. Hot paths (auth, upsert, send,
get by id) are O(1); only list and search scan a practice, and their filtered result is cached
until the practice changes, so paging through a large window costs one scan.

Methods take and return plain values and raise `ApiError` (with the status the API would
answer), so tests can drive the sandbox directly and the app only translates HTTP.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from syncd.sandbox import seed as content
from syncd.sandbox.errors import ApiError, invalid, not_found
from syncd.sandbox.records import (
    ApiKey,
    Document,
    Form,
    Message,
    Patient,
    Submission,
    Template,
)
from syncd.sandbox.sms import render, segment_count
from syncd.sandbox.validation import (
    parse_choice_param,
    parse_paging,
    parse_search_term,
    parse_timestamp_param,
    parse_uuid_param,
    validate_body,
)
from syncd.voxares.contract import (
    ALL_SCOPES,
    MESSAGE_PATIENT_UNUSABLE_STATUS,
    MESSAGE_SEND_FIELDS,
    PATIENT_FIELDS,
    PATIENT_PATCH_FIELDS,
    SUBMISSION_STATUSES,
    UPSERT_KEEPS_ABSENT_FIELDS,
    VALIDATION_ERROR_STATUS,
    format_timestamp,
)

DEMO_API_KEY = content.DEMO_API_KEY

ListOrder = Literal["created", "updated_asc", "updated_desc"]
ANSWERED_STATUSES = frozenset({"Completed", "Rejected"})
OPEN_STATUSES = frozenset({"Pending", "Opened"})
_ONE_MS = timedelta(milliseconds=1)
_LIST_CACHE_SIZE = 64
# Wire field name -> Patient attribute, for the optional fields an upsert or PATCH may set.
_OPTIONAL_PATIENT_FIELDS = {
    "mobileNumber": "mobile_number",
    "email": "email",
    "dateOfBirth": "date_of_birth",
}


def _utc_now() -> datetime:
    return datetime.now(UTC)


def to_ms(moment: datetime) -> datetime:
    """`moment` in UTC, truncated to the API's millisecond precision."""
    utc = moment.astimezone(UTC)
    return utc.replace(microsecond=utc.microsecond // 1000 * 1000)


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


@dataclass(slots=True)
class ListOptions:
    """How lists are ordered for one request (the sort order is undocumented by the API)."""

    order: ListOrder = "created"
    shuffle: random.Random | None = None


@dataclass(slots=True, repr=False)
class Practice:
    """A practice and everything that belongs to it."""

    id: str
    name: str
    user_id: str  # the dashboard user who "requests" forms (`requestedBy`)
    key_names: list[str] = field(default_factory=list)
    patients: dict[str, Patient] = field(default_factory=dict)
    patient_ids: list[str] = field(default_factory=list)
    by_external: dict[tuple[str, str], Patient] = field(default_factory=dict)
    messages: dict[str, Message] = field(default_factory=dict)
    sends: Counter[str] = field(default_factory=Counter)
    templates: dict[str, Template] = field(default_factory=dict)
    forms: dict[str, Form] = field(default_factory=dict)
    documents: dict[str, Document] = field(default_factory=dict)
    submissions: dict[str, Submission] = field(default_factory=dict)
    open_submissions: list[str] = field(default_factory=list)
    open_index: dict[str, int] = field(default_factory=dict)
    patients_version: int = 0
    submissions_version: int = 0

    def track_open(self, submission: Submission) -> None:
        """Keep `open_submissions` (for O(1) random picks) in step with the status."""
        is_open = submission.status in OPEN_STATUSES
        listed = submission.id in self.open_index
        if is_open and not listed:
            self.open_index[submission.id] = len(self.open_submissions)
            self.open_submissions.append(submission.id)
        elif listed and not is_open:
            index = self.open_index.pop(submission.id)
            last = self.open_submissions.pop()
            if last != submission.id:
                self.open_submissions[index] = last
                self.open_index[last] = index


@dataclass(frozen=True, slots=True)
class SubmissionQuery:
    """The filters of `GET /form-submissions`."""

    status: str | None = None
    updated_from: datetime | None = None
    updated_to: datetime | None = None
    patient_id: str | None = None
    form_id: str | None = None
    search: str | None = None

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> SubmissionQuery:
        """Read and validate the filters (400 listing every bad parameter)."""
        problems: list[str] = []
        parsed = cls(
            status=parse_choice_param(query, "status", SUBMISSION_STATUSES, problems),
            updated_from=parse_timestamp_param(query, "updatedFrom", problems),
            updated_to=parse_timestamp_param(query, "updatedTo", problems),
            patient_id=parse_uuid_param(query, "patientId", problems),
            form_id=parse_uuid_param(query, "formId", problems),
            search=parse_search_term(query),
        )
        if problems:
            raise invalid(problems)
        return parsed


class Sandbox:
    """The emulated Voxares service: practices, keys, patients, messages, content, submissions.

    `seed` makes ids and generated data reproducible; `clock` (aware datetimes) drives every
    timestamp and the progress of messages, so tests can move time by hand. A server clock
    offset (a fault) is applied on top through `clock_offset`.
    """

    def __init__(
        self,
        seed: int = 0,
        clock: Callable[[], datetime] | None = None,
        *,
        message_timing: MessageTiming | None = None,
    ) -> None:
        self._clock = clock or _utc_now
        self.message_timing = message_timing or MessageTiming()
        self.seed = seed
        self.reset(seed)

    # ----------------------------------------------------------------- lifecycle

    def reset(self, seed: int | None = None) -> None:
        """Forget everything and start again from the default seed data."""
        if seed is not None:
            self.seed = seed
        self.rng = random.Random(self.seed)
        self.clock_offset = timedelta(0)
        self.practices: dict[str, Practice] = {}
        self.keys: dict[str, ApiKey] = {}
        self.submissions: dict[str, Submission] = {}
        self.requests: Counter[str] = Counter()
        self.activity_enabled = False
        self.activity_rate = 2.0  # events per second when enabled
        self.changes = 0  # bumped by every change; persistence compares it
        self._signatures: list[str] = []
        self._list_cache: dict[tuple[Any, ...], tuple[tuple[int, int], list[Any]]] = {}
        self.patient_serial = 0
        self.demo_practice_id = self.add_practice(content.DEMO_PRACTICE_NAME)
        self._add_key(
            self.demo_practice_id,
            content.DEMO_KEY_ID,
            content.DEMO_KEY_SECRET,
            content.DEMO_KEY_NAME,
            ALL_SCOPES,
        )

    def now(self) -> datetime:
        """The server's time: the clock plus any offset, at millisecond precision."""
        return to_ms(self._clock() + self.clock_offset)

    def new_id(self) -> str:
        """A random (seeded) version-4 UUID."""
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _touch(self) -> None:
        self.changes += 1

    # ----------------------------------------------------------------- practices and keys

    def add_practice(self, name: str, *, seed_content: bool = True) -> str:
        """Create a practice (with the default templates, forms and documents); its id."""
        practice = Practice(id=self.new_id(), name=name, user_id=self.new_id())
        self.practices[practice.id] = practice
        if seed_content:
            now = self.now()
            for template_name, text in content.TEMPLATES:
                template = Template(self.new_id(), template_name, text, now, now)
                practice.templates[template.id] = template
            for display_name, questions in content.FORMS:
                form = Form(self.new_id(), display_name, questions)
                practice.forms[form.id] = form
            for document_name in content.DOCUMENTS:
                document = Document(self.new_id(), document_name)
                practice.documents[document.id] = document
        self._touch()
        return practice.id

    def issue_key(self, practice_id: str, name: str, scopes: Iterable[str] = ALL_SCOPES) -> str:
        """Create an API key for a practice; returns the full `vox-<id>-<secret>` key."""
        key_id = f"{self.rng.getrandbits(40):010x}"
        secret = f"{self.rng.getrandbits(128):032x}"
        return self._add_key(practice_id, key_id, secret, name, scopes)

    def _add_key(
        self, practice_id: str, key_id: str, secret: str, name: str, scopes: Iterable[str]
    ) -> str:
        practice = self._practice(practice_id)
        scope_set = frozenset(scopes)
        unknown = scope_set - set(ALL_SCOPES)
        if unknown:
            raise invalid([f"unknown scope {scope}" for scope in sorted(unknown)])
        if not name.strip():
            raise invalid(["key name should not be empty"])
        key = ApiKey(key_id, secret, practice_id, name, scope_set)
        self.keys[key.token] = key
        practice.key_names.append(name)
        self._touch()
        return key.token

    def authenticate(self, token: str) -> ApiKey | None:
        """The key for a bearer token, or None when no such key exists."""
        return self.keys.get(token)

    def _practice(self, practice_id: str) -> Practice:
        practice = self.practices.get(practice_id)
        if practice is None:
            raise not_found("Practice")
        return practice

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
            return _ordered(found, options.order)

        rows = self._cached(cache_key, stamp, compute)
        return _page([p.to_api() for p in _window(rows, page, size, options)], len(rows))

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
        return _list_small(
            items, query, options, lambda t: f"{t.name}\x1f{t.content}", lambda t: t.to_api()
        )

    def list_forms(
        self, key: ApiKey, query: Mapping[str, str], options: ListOptions | None = None
    ) -> dict[str, Any]:
        """`GET /forms`, searchable by display name."""
        items = self.practices[key.practice_id].forms.values()
        return _list_small(items, query, options, lambda f: f.display_name, lambda f: f.to_api())

    def list_documents(
        self, key: ApiKey, query: Mapping[str, str], options: ListOptions | None = None
    ) -> dict[str, Any]:
        """`GET /documents`, searchable by name."""
        items = self.practices[key.practice_id].documents.values()
        return _list_small(items, query, options, lambda d: d.name, lambda d: d.to_api())

    # ----------------------------------------------------------------- form submissions

    def create_submission(
        self, practice_id: str, patient_id: str, form_id: str, *, at: datetime | None = None
    ) -> str:
        """A new Pending submission of `form_id` for `patient_id`; its id.

        `at` fixes createdAt/updatedAt (so many submissions can share one timestamp).
        """
        practice = self._practice(practice_id)
        if patient_id not in practice.patients:
            raise not_found("Patient")
        if form_id not in practice.forms:
            raise not_found("Form")
        moment = to_ms(at) if at else self.now()
        submission = Submission(
            id=self.new_id(),
            practice_id=practice.id,
            patient_id=patient_id,
            form_id=form_id,
            requested_by=practice.user_id,
            status="Pending",
            created_at=moment,
            updated_at=moment,
        )
        submission.versions.append((moment, "Pending"))
        practice.submissions[submission.id] = submission
        self.submissions[submission.id] = submission
        practice.track_open(submission)
        practice.submissions_version += 1
        self._touch()
        return submission.id

    def set_submission_status(
        self,
        submission_id: str,
        status: str,
        data: dict[str, Any] | None = None,
        *,
        at: datetime | None = None,
    ) -> None:
        """Move a submission to `status`, bumping updatedAt (strictly, unless `at` is given).

        Completed without `data` gets generated answers with a large signature; `data` given
        explicitly is stored as is. Every change is recorded as a version.
        """
        submission = self.submissions.get(submission_id)
        if submission is None:
            raise not_found("Form submission")
        if status not in SUBMISSION_STATUSES:
            raise invalid([f"status must be one of {', '.join(SUBMISSION_STATUSES)}"])
        moment = to_ms(at) if at else max(self.now(), submission.updated_at + _ONE_MS)
        submission.status = status
        submission.updated_at = moment
        submission.received_at = moment if status in ANSWERED_STATUSES else None
        if data is not None:
            submission.data, submission.data_variant = data, None
        elif status == "Completed":
            submission.data, submission.data_variant = None, self.rng.randrange(1 << 16)
        elif status not in ANSWERED_STATUSES:
            submission.data, submission.data_variant = None, None
        submission.versions.append((moment, status))
        practice = self.practices[submission.practice_id]
        practice.track_open(submission)
        practice.submissions_version += 1
        self._touch()

    def list_submissions(
        self, key: ApiKey, query: Mapping[str, str], options: ListOptions | None = None
    ) -> dict[str, Any]:
        """`GET /form-submissions`: filtered, paged by offset, items without `data`."""
        page, size = parse_paging(query)
        rows = self.matching_submissions(key, SubmissionQuery.parse(query), options)
        practice = self.practices[key.practice_id]
        items = [self.submission_item(practice, s) for s in _window(rows, page, size, options)]
        return _page(items, len(rows))

    def matching_submissions(
        self, key: ApiKey, q: SubmissionQuery, options: ListOptions | None = None
    ) -> list[Submission]:
        """Every submission of the key's practice that matches `q`, in list order (cached)."""
        practice = self.practices[key.practice_id]
        options = options or ListOptions()
        cache_key = ("submissions", practice.id, q, options.order)
        stamp = (practice.submissions_version, practice.patients_version if q.search else 0)

        def compute() -> list[Any]:
            return _ordered(
                [s for s in practice.submissions.values() if self._matches(practice, s, q)],
                options.order,
            )

        return self._cached(cache_key, stamp, compute)

    @staticmethod
    def _matches(practice: Practice, s: Submission, q: SubmissionQuery) -> bool:
        if q.status is not None and s.status != q.status:
            return False
        if q.updated_from is not None and s.updated_at < q.updated_from:
            return False
        if q.updated_to is not None and s.updated_at > q.updated_to:
            return False
        if q.patient_id is not None and s.patient_id != q.patient_id:
            return False
        if q.form_id is not None and s.form_id != q.form_id:
            return False
        if q.search is not None:
            text = practice.patients[s.patient_id].search_text
            form = practice.forms[s.form_id].display_name.casefold()
            if q.search not in text and q.search not in form:
                return False
        return True

    def get_submission(self, key: ApiKey, submission_id: str) -> dict[str, Any]:
        """`GET /form-submissions/:id`: the list item plus `data` (404 when not the practice's)."""
        submission = self.submissions.get(submission_id)
        if submission is None or submission.practice_id != key.practice_id:
            raise not_found("Form submission")
        practice = self.practices[key.practice_id]
        detail = self.submission_item(practice, submission)
        detail["data"] = self.submission_data(submission)
        return detail

    @staticmethod
    def submission_item(practice: Practice, s: Submission) -> dict[str, Any]:
        """The contract's list item of a submission (no `data`)."""
        patient = practice.patients[s.patient_id]
        form = practice.forms[s.form_id]
        return {
            "id": s.id,
            "submissionStatus": s.status,
            "createdAt": format_timestamp(s.created_at),
            "updatedAt": format_timestamp(s.updated_at),
            "receivedAt": None if s.received_at is None else format_timestamp(s.received_at),
            "requestedBy": s.requested_by,
            "patient": {
                "id": patient.id,
                "firstName": patient.first_name,
                "lastName": patient.last_name,
                "mobileNumber": patient.mobile_number,
            },
            "form": {"id": form.id, "displayName": form.display_name},
        }

    def submission_data(self, s: Submission) -> dict[str, Any] | None:
        """The answers of a submission: as given, generated, or None when not answered."""
        if s.data is not None:
            return s.data
        if s.data_variant is None:
            return None
        form = self.practices[s.practice_id].forms[s.form_id]
        signature = self._signature(s.data_variant)
        return content.generated_answers(form.questions, s.data_variant, signature)

    def _signature(self, variant: int) -> str:
        if not self._signatures:
            rng = random.Random(self.seed * 7919 + 1)
            self._signatures = [
                content.signature_data_url(rng) for _ in range(content.SIGNATURE_VARIANTS)
            ]
        return self._signatures[variant % len(self._signatures)]

    def advance_submission(self, submission_id: str, rng: random.Random | None = None) -> str:
        """Move an open submission one step along its life; the new status.

        Pending → Opened (or Rejected, 10%); Opened → Completed (or Rejected, 15%).
        """
        rng = rng or self.rng
        submission = self.submissions[submission_id]
        if submission.status == "Pending":
            status = "Rejected" if rng.random() < 0.10 else "Opened"
        elif submission.status == "Opened":
            status = "Rejected" if rng.random() < 0.15 else "Completed"
        else:
            raise invalid([f"submission {submission_id} is already {submission.status}"])
        self.set_submission_status(submission_id, status)
        return status

    def disturb_submissions(
        self, key: ApiKey, q: SubmissionQuery, count: int, rng: random.Random
    ) -> int:
        """Update or insert up to `count` submissions, preferring ones `q` matches.

        This is what happens on a busy server between two page requests of a client: an
        updated submission may leave the window (shifting the rest), an inserted one joins it.
        """
        practice = self.practices[key.practice_id]
        rows = [s for s in self.matching_submissions(key, q) if s.status in OPEN_STATUSES]
        changed = 0
        for _ in range(count):
            if rows and rng.random() < 0.7:
                submission = rows.pop(rng.randrange(len(rows)))
                self.advance_submission(submission.id, rng)
            elif practice.patient_ids and practice.forms:
                patient_id = rng.choice(practice.patient_ids)
                form_id = rng.choice(list(practice.forms))
                self.create_submission(practice.id, patient_id, form_id)
            else:
                break
            changed += 1
        return changed

    # ----------------------------------------------------------------- simulation and seeding

    def tick(self, events: int = 1) -> int:
        """Run `events` steps of the activity simulator; how many submissions changed.

        Each step, in a random practice that has patients: either a new Pending submission
        for a random patient, or one open submission moves on. Messages need no step: their
        status follows the clock.
        """
        practices = [p for p in self.practices.values() if p.patient_ids and p.forms]
        changed = 0
        for _ in range(events if practices else 0):
            practice = self.rng.choice(practices)
            if practice.open_submissions and self.rng.random() < 0.6:
                self.advance_submission(self.rng.choice(practice.open_submissions))
            else:
                patient_id = self.rng.choice(practice.patient_ids)
                form_id = self.rng.choice(list(practice.forms))
                self.create_submission(practice.id, patient_id, form_id)
            changed += 1
        return changed

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

    def seed_submissions(
        self,
        practice_id: str,
        count: int,
        *,
        status: str = "Pending",
        at: datetime | None = None,
        form_id: str | None = None,
        patient_ids: list[str] | None = None,
    ) -> list[str]:
        """Create `count` submissions for random patients, moved to `status`; their ids.

        With `at`, all of them are created and updated at that one instant.
        """
        practice = self._practice(practice_id)
        if status not in SUBMISSION_STATUSES:
            raise invalid([f"status must be one of {', '.join(SUBMISSION_STATUSES)}"])
        pool = patient_ids or practice.patient_ids
        if not pool and count:
            raise invalid(["the practice has no patients to send forms to"])
        forms = [form_id] if form_id else list(practice.forms)
        ids = []
        for _ in range(count):
            submission_id = self.create_submission(
                practice.id, self.rng.choice(pool), self.rng.choice(forms), at=at
            )
            if status != "Pending":
                self.set_submission_status(submission_id, status, at=at)
            ids.append(submission_id)
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
        `requests` counts "METHOD /path/template status" over all practices.
        """
        practices = [self._practice(practice_id)] if practice_id else list(self.practices.values())
        now = self.now()
        sends: Counter[str] = Counter()
        message_statuses: Counter[str] = Counter()
        submission_statuses: Counter[str] = Counter()
        per_practice = {}
        for practice in practices:
            sends.update(practice.sends)
            message_statuses.update(m.status_at(now)[0] for m in practice.messages.values())
            submission_statuses.update(s.status for s in practice.submissions.values())
            per_practice[practice.id] = {
                "name": practice.name,
                "patients": len(practice.patients),
                "messages": len(practice.messages),
                "submissions": len(practice.submissions),
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
            "requests": dict(self.requests),
        }
        if include_fingerprints:
            result["sendsPerFingerprint"] = dict(sends)
        return result

    def submission_versions(self, practice_id: str | None = None) -> list[dict[str, str]]:
        """Every version every submission went through: id, updatedAt, status."""
        practices = [self._practice(practice_id)] if practice_id else list(self.practices.values())
        return [
            {"id": s.id, "updatedAt": format_timestamp(moment), "status": status}
            for practice in practices
            for s in practice.submissions.values()
            for moment, status in s.versions
        ]

    def count_request(self, label: str) -> None:
        """Count one answered request, labelled "METHOD /template status"."""
        self.requests[label] += 1

    # ----------------------------------------------------------------- list cache

    def _cached(
        self,
        cache_key: tuple[Any, ...],
        stamp: tuple[int, int],
        compute: Callable[[], list[Any]],
    ) -> list[Any]:
        hit = self._list_cache.get(cache_key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        rows = compute()
        self._list_cache.pop(cache_key, None)
        self._list_cache[cache_key] = (stamp, rows)
        if len(self._list_cache) > _LIST_CACHE_SIZE:
            self._list_cache.pop(next(iter(self._list_cache)))
        return rows


def _ordered(rows: list[Any], order: ListOrder) -> list[Any]:
    """Rows (in creation order) in the requested list order."""
    if order == "updated_asc":
        return sorted(rows, key=lambda r: (r.updated_at, r.id))
    if order == "updated_desc":
        return sorted(rows, key=lambda r: (r.updated_at, r.id), reverse=True)
    return rows


def _window(rows: list[Any], page: int, size: int, options: ListOptions | None) -> list[Any]:
    """One page of `rows`; shuffled first when the shuffle fault is on."""
    if options is not None and options.shuffle is not None:
        rows = list(rows)
        options.shuffle.shuffle(rows)
    start = page * size
    return rows[start : start + size]


def _page(items: list[dict[str, Any]], count: int) -> dict[str, Any]:
    return {"data": items, "count": count}


def _list_small(
    items: Iterable[Any],
    query: Mapping[str, str],
    options: ListOptions | None,
    text: Callable[[Any], str],
    render_item: Callable[[Any], dict[str, Any]],
) -> dict[str, Any]:
    """List a practice's (few) content items: search, page, render."""
    page, size = parse_paging(query)
    search = parse_search_term(query)
    rows = [item for item in items if search is None or search in text(item).casefold()]
    return _page([render_item(r) for r in _window(rows, page, size, options)], len(rows))


__all__ = [
    "DEMO_API_KEY",
    "ListOptions",
    "MessageTiming",
    "Practice",
    "Sandbox",
    "SubmissionQuery",
    "send_fingerprint",
]
