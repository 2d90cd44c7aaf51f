"""Form submissions: their life, the list and the detail, and the server freedoms around them.

Every change of a submission is a write that appends a `SubmissionVersion`. What a reader sees
depends on the freedoms (`syncd.sandbox.freedoms.ServerFreedoms`, all off by default): a write
is stamped (ms or µs storage, maybe tied to the previous write's millisecond) and becomes
visible at once or, late, when its drawn delay has passed. A list shows each submission's
newest visible version and filters on its stored `updatedAt`; a detail shows the same version,
or an older one from a lagging replica, or finds the submission deleted (404).

Ground truth for tests and soaks: `submission_versions()` lists every version ever written;
`final_versions()` gives each submission's final version as a reader sees it once every pending
write is visible (and when that will be); `publish_pending()` makes every pending write visible
now.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from syncd.hashing import canonical_json, sha256_hex
from syncd.sandbox import seed as content
from syncd.sandbox.core import SandboxCore
from syncd.sandbox.errors import ApiError, invalid, not_found
from syncd.sandbox.freedoms import ServerFreedoms, stored_stamp, to_ms, write_millisecond
from syncd.sandbox.listing import ListOptions, ordered, page_body, window
from syncd.sandbox.practice import ANSWERED_STATUSES, OPEN_STATUSES, Practice
from syncd.sandbox.records import ApiKey, Submission, SubmissionVersion
from syncd.sandbox.validation import (
    parse_choice_param,
    parse_paging,
    parse_search_term,
    parse_timestamp_param,
    parse_uuid_param,
)
from syncd.voxares.contract import (
    SUBMISSION_GONE_STATUS,
    SUBMISSION_STATUSES,
    format_timestamp,
)


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
        """Read and validate the filters (400 listing every bad parameter).

        Timestamps are taken at millisecond precision, as a JavaScript `Date` parses them.
        """
        problems: list[str] = []
        updated_from = parse_timestamp_param(query, "updatedFrom", problems)
        updated_to = parse_timestamp_param(query, "updatedTo", problems)
        parsed = cls(
            status=parse_choice_param(query, "status", SUBMISSION_STATUSES, problems),
            updated_from=None if updated_from is None else to_ms(updated_from),
            updated_to=None if updated_to is None else to_ms(updated_to),
            patient_id=parse_uuid_param(query, "patientId", problems),
            form_id=parse_uuid_param(query, "formId", problems),
            search=parse_search_term(query),
        )
        if problems:
            raise invalid(problems)
        return parsed


def _shown_at(submission: Submission) -> datetime:
    shown = submission.shown
    assert shown is not None  # only visible submissions are listed
    return shown.updated_at


class FormSubmissions(SandboxCore):
    """The form-submission part of the emulated API (see the module docstring)."""

    def reset(self, seed: int | None = None) -> None:
        """Forget everything, server freedoms included (back to off)."""
        super().reset(seed)
        self.submissions: dict[str, Submission] = {}
        self._signatures: list[str] = []
        self._generated_hashes: dict[tuple[str, int], str] = {}
        self.configure_freedoms(ServerFreedoms())

    def configure_freedoms(self, freedoms: ServerFreedoms, seed: int = 0) -> None:
        """Use these freedoms from now on; their draws restart from `seed`.

        A `FaultConfig` is a `ServerFreedoms`: the admin API passes it with its own seed.
        Writes already made keep their stamps and visibility.
        """
        self.freedoms = freedoms
        self.freedom_rng = random.Random(seed)

    # ----------------------------------------------------------------- writes

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
        submission_id = self.new_id()
        stamp, visible_at, now = self._stamp(practice, None, at)
        submission = Submission(
            id=submission_id,
            practice_id=practice.id,
            patient_id=patient_id,
            form_id=form_id,
            requested_by=practice.user_id,
            created_at=stamp,
        )
        practice.submissions[submission.id] = submission
        self.submissions[submission.id] = submission
        self._append(practice, submission, SubmissionVersion(stamp, visible_at, "Pending"), now)
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
        if submission is None or submission.deleted_at is not None:
            raise not_found("Form submission")
        if status not in SUBMISSION_STATUSES:
            raise invalid([f"status must be one of {', '.join(SUBMISSION_STATUSES)}"])
        previous = submission.latest
        variant: int | None
        if data is not None:
            answers, variant = data, None
        elif status == "Completed":
            answers, variant = None, self.rng.randrange(1 << 16)
        elif status not in ANSWERED_STATUSES:
            answers, variant = None, None
        else:
            answers, variant = previous.data, previous.data_variant
        practice = self.practices[submission.practice_id]
        stamp, visible_at, now = self._stamp(practice, previous, at)
        received_at = stamp if status in ANSWERED_STATUSES else None
        version = SubmissionVersion(stamp, visible_at, status, received_at, answers, variant)
        self._append(practice, submission, version, now)

    def _stamp(
        self, practice: Practice, previous: SubmissionVersion | None, at: datetime | None
    ) -> tuple[datetime, datetime, datetime]:
        """(stored updatedAt, visible from, now) of a new write after `previous`."""
        freedoms, rng = self.freedoms, self.freedom_rng
        now = self.now()
        if at is not None:
            millisecond = to_ms(at)
        else:
            tie = freedoms.tie_rate > 0 and rng.random() < freedoms.tie_rate
            before = None if previous is None else previous.updated_at
            millisecond = write_millisecond(now, before, practice.last_write, tie=tie)
        stamp = stored_stamp(millisecond, freedoms.updated_at_precision, rng)
        delay = freedoms.late_visibility.draw(rng)
        visible_at = now + delay if delay else now
        if previous is not None:
            # A write waits for the one before it on the same row (a lock), so the versions
            # of one submission become visible in the order they were written.
            visible_at = max(visible_at, previous.visible_at)
        return stamp, visible_at, now

    def _append(
        self,
        practice: Practice,
        submission: Submission,
        version: SubmissionVersion,
        now: datetime,
    ) -> None:
        """Record a write: visible at once, or pending until its `visible_at`."""
        submission.versions.append(version)
        practice.last_write = version.updated_at
        index = len(submission.versions) - 1
        if version.visible_at <= now:
            submission.reveal(index)
        else:
            practice.pending_serial += 1
            entry = (version.visible_at, practice.pending_serial, submission.id, index)
            heapq.heappush(practice.pending, entry)
        practice.track_open(submission)
        practice.submissions_version += 1
        self._touch()

    def delete_submission(self, submission_id: str) -> None:
        """Delete a submission: gone from lists, its detail 404 (`contract.SUBMISSION_DELETION`)."""
        submission = self.submissions.get(submission_id)
        if submission is None or submission.deleted_at is not None:
            raise not_found("Form submission")
        submission.delete(self.now())
        practice = self.practices[submission.practice_id]
        practice.track_open(submission)
        practice.submissions_version += 1
        self._touch()

    def _publish_due(self, practice: Practice) -> None:
        """Make visible every pending write of the practice whose commit time has come."""
        pending = practice.pending
        if not pending:
            return
        now = self.now()
        if pending[0][0] > now:
            return
        while pending and pending[0][0] <= now:
            _, _, submission_id, index = heapq.heappop(pending)
            submission = practice.submissions[submission_id]
            if submission.deleted_at is None:  # a deleted one's late writes never show
                submission.reveal(index)
        practice.submissions_version += 1
        self._touch()

    def publish_pending(self, practice_id: str | None = None) -> int:
        """Make every pending write visible now (their visible_at becomes now); how many."""
        now = self.now()
        published = 0
        for practice in self._practices(practice_id):
            for visible_at, _, submission_id, index in practice.pending:
                submission = practice.submissions[submission_id]
                if submission.deleted_at is None:
                    submission.versions[index].visible_at = min(visible_at, now)
                    submission.reveal(index)
                    published += 1
            if practice.pending:
                practice.pending.clear()
                practice.submissions_version += 1
                self._touch()
        return published

    # ----------------------------------------------------------------- reads

    def list_submissions(
        self, key: ApiKey, query: Mapping[str, str], options: ListOptions | None = None
    ) -> dict[str, Any]:
        """`GET /form-submissions`: filtered, paged by offset, items without `data`."""
        page, size = parse_paging(query)
        rows = self.matching_submissions(key, SubmissionQuery.parse(query), options)
        practice = self.practices[key.practice_id]
        items = [
            self.submission_item(practice, s, s.shown) for s in window(rows, page, size, options)
        ]
        return page_body(items, len(rows))

    def matching_submissions(
        self, key: ApiKey, q: SubmissionQuery, options: ListOptions | None = None
    ) -> list[Submission]:
        """Every visible submission of the key's practice that matches `q`, in list order."""
        practice = self.practices[key.practice_id]
        self._publish_due(practice)
        options = options or ListOptions()
        cache_key = ("submissions", practice.id, q, options.order)
        stamp = (practice.submissions_version, practice.patients_version if q.search else 0)

        def compute() -> list[Any]:
            return ordered(
                [s for s in practice.submissions.values() if self._matches(practice, s, q)],
                options.order,
                _shown_at,
            )

        return self._cached(cache_key, stamp, compute)

    @staticmethod
    def _matches(practice: Practice, s: Submission, q: SubmissionQuery) -> bool:
        shown = s.shown
        if shown is None:
            return False
        if q.status is not None and shown.status != q.status:
            return False
        # The stored value is compared, microseconds included (a server freedom).
        if q.updated_from is not None and shown.updated_at < q.updated_from:
            return False
        if q.updated_to is not None and shown.updated_at > q.updated_to:
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
        """`GET /form-submissions/:id`: the list item plus `data` (404 when not the practice's).

        With the freedoms on, the submission may be deleted just before the read (404), or a
        lagging replica may answer with an older version than the list shows.
        """
        practice = self.practices[key.practice_id]
        self._publish_due(practice)
        submission = self.submissions.get(submission_id)
        if submission is None or submission.practice_id != key.practice_id:
            raise not_found("Form submission")
        if submission.shown is None:
            raise not_found("Form submission")
        freedoms, rng = self.freedoms, self.freedom_rng
        if freedoms.detail_gone_rate > 0 and rng.random() < freedoms.detail_gone_rate:
            self.delete_submission(submission_id)
            raise ApiError(SUBMISSION_GONE_STATUS, "Form submission not found")
        index = submission.visible
        if freedoms.detail_lag_rate > 0 and rng.random() < freedoms.detail_lag_rate:
            index = max(0, index - freedoms.detail_lag_versions)
        version = submission.versions[index]
        detail = self.submission_item(practice, submission, version)
        detail["data"] = self.submission_data(submission, version)
        return detail

    @staticmethod
    def submission_item(
        practice: Practice, s: Submission, version: SubmissionVersion | None = None
    ) -> dict[str, Any]:
        """The contract's list item of a submission's `version` (default: the newest)."""
        shown = version or s.latest
        patient = practice.patients[s.patient_id]
        form = practice.forms[s.form_id]
        received = shown.received_at
        return {
            "id": s.id,
            "submissionStatus": shown.status,
            "createdAt": format_timestamp(s.created_at),
            "updatedAt": format_timestamp(shown.updated_at),
            "receivedAt": None if received is None else format_timestamp(received),
            "requestedBy": s.requested_by,
            "patient": {
                "id": patient.id,
                "firstName": patient.first_name,
                "lastName": patient.last_name,
                "mobileNumber": patient.mobile_number,
            },
            "form": {"id": form.id, "displayName": form.display_name},
        }

    def submission_data(
        self, s: Submission, version: SubmissionVersion | None = None
    ) -> dict[str, Any] | None:
        """The answers of a version (default: the newest): given, generated, or None."""
        shown = version or s.latest
        if shown.data is not None:
            return shown.data
        if shown.data_variant is None:
            return None
        form = self.practices[s.practice_id].forms[s.form_id]
        signature = self._signature(shown.data_variant)
        return content.generated_answers(form.questions, shown.data_variant, signature)

    def _signature(self, variant: int) -> str:
        if not self._signatures:
            rng = random.Random(self.seed * 7919 + 1)
            self._signatures = [
                content.signature_data_url(rng) for _ in range(content.SIGNATURE_VARIANTS)
            ]
        return self._signatures[variant % len(self._signatures)]

    # ----------------------------------------------------------------- simulation and seeding

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

    # ----------------------------------------------------------------- observation

    def submission_versions(self, practice_id: str | None = None) -> list[dict[str, str]]:
        """Every version every submission went through (visible yet or not): id, updatedAt
        (as rendered), status."""
        return [
            {"id": s.id, "updatedAt": format_timestamp(v.updated_at), "status": v.status}
            for practice in self._practices(practice_id)
            for s in practice.submissions.values()
            for v in s.versions
        ]

    def final_versions(
        self, practice_id: str | None = None, *, include_data: bool = False
    ) -> dict[str, Any]:
        """Ground truth: each submission's final version as a reader sees it once every
        pending write has become visible.

        Returns `{"now", "pendingWrites", "allVisibleAt", "count", "data"}`: the server time;
        how many writes readers do not see yet; the server time from which they all do (None
        when none is pending; `publish_pending()` makes it now); and one row per submission
        (every practice, or `practice_id`'s):

        - `id`, `practiceId`, `patientId`, `formId`, `createdAt`;
        - `updatedAt` (rendered, ms), `status`, `receivedAt`, `visibleAt`: of the newest
          version; for a deleted submission, of the version visible when it was deleted;
        - `dataSha256`: sha256 of the canonical JSON (`syncd.hashing.canonical_json`) of the
          detail's `data` (`null` while unanswered); `data` itself with `include_data`;
        - `deleted`: the submission was deleted (its detail is 404; `deletedAt` says when).

        The content-hash fields of a version are `status`, `data`, `formId` and `patientId`.
        """
        now = self.now()
        rows: list[dict[str, Any]] = []
        pending = 0
        all_visible: datetime | None = None
        for practice in self._practices(practice_id):
            self._publish_due(practice)
            for visible_at, _, submission_id, _ in practice.pending:
                if practice.submissions[submission_id].deleted_at is None:
                    pending += 1
                    all_visible = (
                        visible_at if all_visible is None else max(all_visible, visible_at)
                    )
            for s in practice.submissions.values():
                if s.deleted_at is None:
                    rows.append(self._truth_row(s, s.latest, include_data))
                elif s.visible >= 0:
                    rows.append(self._truth_row(s, s.versions[s.visible], include_data))
        return {
            "now": format_timestamp(now),
            "pendingWrites": pending,
            "allVisibleAt": None if all_visible is None else format_timestamp(all_visible),
            "count": len(rows),
            "data": rows,
        }

    def _truth_row(
        self, s: Submission, version: SubmissionVersion, include_data: bool
    ) -> dict[str, Any]:
        received = version.received_at
        row: dict[str, Any] = {
            "id": s.id,
            "practiceId": s.practice_id,
            "patientId": s.patient_id,
            "formId": s.form_id,
            "createdAt": format_timestamp(s.created_at),
            "updatedAt": format_timestamp(version.updated_at),
            "status": version.status,
            "receivedAt": None if received is None else format_timestamp(received),
            "visibleAt": format_timestamp(version.visible_at),
            "dataSha256": self._data_hash(s, version),
            "deleted": s.deleted_at is not None,
            "deletedAt": None if s.deleted_at is None else format_timestamp(s.deleted_at),
        }
        if include_data:
            row["data"] = self.submission_data(s, version)
        return row

    def _data_hash(self, s: Submission, version: SubmissionVersion) -> str:
        if version.data is not None or version.data_variant is None:
            return sha256_hex(canonical_json(version.data))
        # Generated answers are a function of (form, variant): hash each pair once.
        generated = (s.form_id, version.data_variant)
        found = self._generated_hashes.get(generated)
        if found is None:
            answers = self.submission_data(s, version)
            found = self._generated_hashes[generated] = sha256_hex(canonical_json(answers))
        return found
