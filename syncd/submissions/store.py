"""The poller's state database work: its window and watermark, and the versions it emits.

Synchronous SQLAlchemy (the poller runs it in a worker thread). Each method is one short
transaction, and each emitted event is committed together with the `submission_versions`
row that records it, so after any crash an event exists exactly when its version record
does, and a version already recorded is never emitted again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, cast

from sqlalchemy import Engine, Table, insert, select, tuple_
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from syncd.exceptions import StateError
from syncd.outbox.events import NewEvent, emit_many
from syncd.state.db import session_factory
from syncd.state.models import PatientMirror, PollerState, SubmissionVersion
from syncd.state.runs import AuditRecord, audit_many
from syncd.submissions.versions import (
    EVENT_TYPE,
    PatientLink,
    Version,
    event_payload_json,
    ordering_key,
)
from syncd.submissions.window import Window
from syncd.voxares.models import SubmissionDetail

AUDIT_ACTION: Final = "submission.received"
_VERSIONS: Final = cast(Table, SubmissionVersion.__table__)


def _aware(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything stored here is UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class StreamState:
    """A stream's watermark and, when a run was cut short, the window it was working on."""

    watermark: datetime | None
    window: Window | None


@dataclass(frozen=True, slots=True)
class Recorded:
    """What `record` did with a batch of details."""

    emitted: int
    duplicates: int
    event_seqs: tuple[int, ...]


class PollerStore:
    """Reads and writes one stream's poller state and its emitted submission versions."""

    def __init__(self, engine: Engine, stream: str, *, provider: str | None = None) -> None:
        self._sessions = session_factory(engine)
        self.stream = stream
        # When several mirror rows share a Voxares patient id, this provider's row wins.
        self._provider = provider

    def load(self) -> StreamState:
        """The stream's watermark and saved window (both None for a new stream)."""
        with self._guard(), self._sessions() as session:
            row = session.get(PollerState, self.stream)
            if row is None:
                return StreamState(None, None)
            start, end = _aware(row.window_start), _aware(row.window_end)
            window = Window(start, end) if start is not None and end is not None else None
            return StreamState(_aware(row.watermark), window)

    def save_window(self, window: Window) -> None:
        """Remember the window about to be fetched, so a crash resumes exactly it."""
        with self._guard(), self._sessions.begin() as session:
            row = self._row(session)
            row.window_start, row.window_end = window.start, window.end
            row.updated_at = datetime.now(UTC)

    def finish_window(self, window: Window) -> None:
        """Move the watermark to the window's end and forget the window, in one commit."""
        with self._guard(), self._sessions.begin() as session:
            row = self._row(session)
            row.watermark = window.end
            row.window_start = row.window_end = None
            row.updated_at = datetime.now(UTC)

    def record(self, details: Sequence[SubmissionDetail], run_id: int | None) -> Recorded:
        """Emit an outbox event for each version not yet recorded, with its record; one commit.

        A version is `(id, updatedAt text, content hash)`; versions already in
        `submission_versions` (or repeated within the batch) are counted as duplicates.
        Each emitted version also gets an id-only audit entry. Events, version records and
        audit entries are each written with one executemany (Core, not the ORM's unit of
        work: a batch is hundreds of rows).
        """
        with self._guard(), self._sessions.begin() as session:
            # A repeat within the batch keeps the first one's place and the last one's body.
            keyed = {version.key: version for version in map(Version.of, details)}
            known = self._known(session, keyed)
            fresh = [version for key, version in keyed.items() if key not in known]
            links = self._links(session, {v.detail.patient.id for v in fresh if v.detail.patient})
            now = datetime.now(UTC)
            seqs = emit_many(session, [_event(v, links) for v in fresh], at=now)
            if fresh:
                session.execute(
                    insert(_VERSIONS),
                    [
                        {
                            "submission_id": version.key[0],
                            "updated_at": version.key[1],
                            "content_hash": version.key[2],
                            "event_seq": seq,
                            "recorded_at": now,
                        }
                        for version, seq in zip(fresh, seqs, strict=True)
                    ],
                )
            audit_many(
                session,
                self.stream,
                run_id,
                [
                    AuditRecord(
                        action=AUDIT_ACTION,
                        object_type="form_submission",
                        object_id=version.key[0],
                        detail=f"updatedAt={version.key[1]} seq={seq}",
                    )
                    for version, seq in zip(fresh, seqs, strict=True)
                ],
                at=now,
            )
            return Recorded(
                emitted=len(fresh),
                duplicates=len(details) - len(fresh),
                event_seqs=tuple(seqs),
            )

    def _row(self, session: Session) -> PollerState:
        row = session.get(PollerState, self.stream)
        if row is None:
            row = PollerState(stream=self.stream, updated_at=datetime.now(UTC))
            session.add(row)
        return row

    @staticmethod
    def _known(session: Session, keys: Iterable[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
        wanted = list(keys)
        if not wanted:
            return set()
        query = select(
            SubmissionVersion.submission_id,
            SubmissionVersion.updated_at,
            SubmissionVersion.content_hash,
        ).where(
            tuple_(
                SubmissionVersion.submission_id,
                SubmissionVersion.updated_at,
                SubmissionVersion.content_hash,
            ).in_(wanted)
        )
        return {(row[0], row[1], row[2]) for row in session.execute(query)}

    def _links(self, session: Session, patient_ids: set[str]) -> dict[str, PatientLink]:
        if not patient_ids:
            return {}
        query = (
            select(
                PatientMirror.voxares_patient_id,
                PatientMirror.provider,
                PatientMirror.provider_id,
            )
            .where(PatientMirror.voxares_patient_id.in_(sorted(patient_ids)))
            .order_by(PatientMirror.id)
        )
        links: dict[str, PatientLink] = {}
        for voxares_id, provider, provider_id in session.execute(query):
            assert voxares_id is not None  # filtered by the IN clause
            if voxares_id not in links or provider == self._provider:
                links[voxares_id] = PatientLink(provider=provider, provider_id=provider_id)
        return links

    def _guard(self) -> AbstractContextManager[None]:
        return _translated(self.stream)


def _event(version: Version, links: Mapping[str, PatientLink]) -> NewEvent:
    detail = version.detail
    link = links.get(detail.patient.id) if detail.patient else None
    return NewEvent(
        event_type=EVENT_TYPE,
        payload=event_payload_json(version, link),
        ordering_key=ordering_key(detail, link),
    )


@contextmanager
def _translated(stream: str) -> Iterator[None]:
    """Turn SQLAlchemy errors into StateError naming the stream (never row contents)."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise StateError(
            f"poller state database failed: stream={stream} error={type(exc).__name__}"
        ) from exc
