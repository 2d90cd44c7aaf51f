"""`Practice`: one practice and everything that belongs to it, indexed for the sandbox's reads.

Patients are indexed by id and by (provider, providerId); open submissions are kept in a list
for O(1) random picks by the activity simulator; writes that are not visible yet (the late
visibility freedom) wait in a heap ordered by when they become visible.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from syncd.sandbox.records import Document, Form, Message, Patient, Submission, Template

OPEN_STATUSES = frozenset({"Pending", "Opened"})
ANSWERED_STATUSES = frozenset({"Completed", "Rejected"})

# (visible at, serial, submission id, version index): a write that readers do not see yet.
PendingWrite = tuple[datetime, int, str, int]


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
    pending: list[PendingWrite] = field(default_factory=list)  # a heap
    pending_serial: int = 0
    last_write: datetime | None = None  # the stored updatedAt of the latest submission write
    patients_version: int = 0
    submissions_version: int = 0

    def track_open(self, submission: Submission) -> None:
        """Keep `open_submissions` (for O(1) random picks) in step with the status."""
        is_open = submission.status in OPEN_STATUSES and submission.deleted_at is None
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
