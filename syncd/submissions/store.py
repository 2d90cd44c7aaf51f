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

from sqlalchemy import Engine, Table, insert, select, text, tuple_
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from syncd.exceptions import StateError
from syncd.outbox.events import NewEvent, emit_many
from syncd.state.db import session_factory
from syncd.state.models import PatientMirror, PollerState, PollerSweep, SubmissionVersion
from syncd.state.runs import AuditRecord, audit_many
from syncd.submissions.versions import (
    EVENT_TYPE,
    REMOVED_EVENT_TYPE,
    REMOVED_HASH_PREFIX,
    PatientLink,
    Version,
    event_payload_json,
    ordering_key,
    removed_payload_json,
)
from syncd.submissions.window import Listed, Window
from syncd.voxares.contract import format_timestamp, parse_timestamp
from syncd.voxares.models import SubmissionDetail

AUDIT_ACTION: Final = "submission.received"
REMOVED_AUDIT_ACTION: Final = "submission.removed"
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
    # Details older than a version already recorded for their submission (a lagging read):
    # emitting them would put an older state after a newer one downstream.
    superseded: tuple[str, ...] = ()
    # (submission id, updatedAt) of each version emitted, in the order of `event_seqs`.
    emitted_versions: tuple[tuple[str, datetime], ...] = ()


@dataclass(frozen=True, slots=True)
class Gone:
    """A listed submission whose detail answered 404, 403 or 410 on every read."""

    listed: Listed
    status: int


@dataclass(frozen=True, slots=True)
class History:
    """What is recorded of one submission: the statuses recorded per `updatedAt` text, and
    the newest `updatedAt`.

    Removal records (`form_submission.removed`) are left out: a submission that answered
    404 may have been a replica that had not caught up, and must be read again when listed.
    """

    statuses: Mapping[str, frozenset[str | None]]
    newest: datetime

    def covers(self, item: Listed) -> bool:
        """Whether the listed version needs no detail read: recorded, or older than recorded.

        Two writes can share a rendered millisecond on a server storing microseconds, so
        a recorded `updatedAt` covers the listed one only with the same status (or when
        the status was not recorded: rows older than the status column).
        """
        if item.updated_at < self.newest:
            return True
        statuses = self.statuses.get(format_timestamp(item.updated_at))
        return statuses is not None and (None in statuses or item.status in statuses)


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

    def sweeps_done(self, names: Sequence[str]) -> dict[str, datetime | None]:
        """When each named sweep last completed (server time), None for never."""
        with self._guard(), self._sessions() as session:
            return {
                name: _aware(row.done_at)
                if (row := session.get(PollerSweep, (self.stream, name)))
                else None
                for name in names
            }

    def finish_sweeps(self, names: Sequence[str], at: datetime) -> None:
        """Record the named sweeps as completed at server time `at`, in one commit."""
        with self._guard(), self._sessions.begin() as session:
            for name in names:
                row = session.get(PollerSweep, (self.stream, name))
                if row is None:
                    session.add(PollerSweep(stream=self.stream, sweep=name, done_at=at))
                else:
                    row.done_at = at

    def histories(self, submission_ids: Iterable[str]) -> dict[str, History]:
        """The recorded versions of these submissions (absent: nothing recorded yet)."""
        wanted = sorted(set(submission_ids))
        if not wanted:
            return {}
        with self._guard(), self._sessions() as session:
            return _histories(session, wanted)

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
        # Encoded and hashed before the transaction: the write lock is held for writing only.
        versions = [Version.of(detail) for detail in details]
        with self._guard(), self._sessions.begin() as session, _unspilled(session):
            # A repeat within the batch keeps the first one's place and the last one's body.
            keyed = {version.key: version for version in versions}
            known = self._known(session, keyed)
            candidates = [version for key, version in keyed.items() if key not in known]
            # Checked in the transaction that writes: never an older state after a newer one.
            newest = _newest_by_id(
                _histories(session, sorted({v.key[0] for v in candidates})), candidates
            )
            fresh = [v for v in candidates if v.detail.updated_at >= newest[v.key[0]]]
            superseded = tuple(
                v.key[0] for v in candidates if v.detail.updated_at < newest[v.key[0]]
            )
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
                            "status": version.detail.submission_status,
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
                duplicates=len(details) - len(fresh) - len(superseded),
                event_seqs=tuple(seqs),
                superseded=superseded,
                emitted_versions=tuple((v.key[0], v.detail.updated_at) for v in fresh),
            )

    def record_removed(self, gone: Sequence[Gone], run_id: int | None) -> Recorded:
        """Emit `form_submission.removed` for each listed version whose detail is gone; one commit.

        Recorded as a version `(id, listed updatedAt, "removed:<status>")`, so the same
        removal is emitted once, while a later read that finds the submission after all
        (a replica that had not caught up) emits it as an ordinary version.
        """
        with self._guard(), self._sessions.begin() as session:
            keyed = {
                (g.listed.submission_id, format_timestamp(g.listed.updated_at), _removed(g)): g
                for g in gone
            }
            known = self._known(session, keyed)
            histories = _histories(session, sorted({key[0] for key in keyed}))
            fresh = [
                (key, g)
                for key, g in keyed.items()
                if key not in known
                and (key[0] not in histories or g.listed.updated_at >= histories[key[0]].newest)
            ]
            links = self._links(
                session, {g.listed.patient_id for _, g in fresh if g.listed.patient_id}
            )
            now = datetime.now(UTC)
            events = [
                NewEvent(
                    event_type=REMOVED_EVENT_TYPE,
                    payload=removed_payload_json(
                        g.listed, g.status, links.get(g.listed.patient_id or "")
                    ),
                    ordering_key=_removed_ordering_key(g.listed, links),
                )
                for _, g in fresh
            ]
            seqs = emit_many(session, events, at=now)
            if fresh:
                session.execute(
                    insert(_VERSIONS),
                    [
                        {
                            "submission_id": key[0],
                            "updated_at": key[1],
                            "content_hash": key[2],
                            "status": None,
                            "event_seq": seq,
                            "recorded_at": now,
                        }
                        for (key, _), seq in zip(fresh, seqs, strict=True)
                    ],
                )
            audit_many(
                session,
                self.stream,
                run_id,
                [
                    AuditRecord(
                        action=REMOVED_AUDIT_ACTION,
                        object_type="form_submission",
                        object_id=key[0],
                        detail=f"updatedAt={key[1]} status={g.status} seq={seq}",
                    )
                    for (key, g), seq in zip(fresh, seqs, strict=True)
                ],
                at=now,
            )
            return Recorded(
                emitted=len(fresh), duplicates=len(gone) - len(fresh), event_seqs=tuple(seqs)
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


# Pages: far more than any batch writes (a batch of 100 details is ~1,900 pages of 4 KiB).
_NEVER_SPILL: Final = 1_000_000


@contextmanager
def _unspilled(session: Session) -> Iterator[None]:
    """On SQLite, keep this transaction's pages in memory until its commit writes them.

    A batch of 100 details is ~7.5 MB of pages, more than SQLite's default 2 MB page cache:
    the excess was written to the WAL mid-transaction and again at the commit, 235 KiB of
    writes per 74 KB detail instead of 153 (the commit's frames plus their checkpoint into
    the database file). Spilling is switched back on before the commit, so the connection,
    back in the pool, spills as before in every other transaction.
    """
    if session.get_bind().dialect.name != "sqlite":
        yield
        return
    # The number form: the boolean form is not applied inside an open transaction.
    spill = session.execute(text("PRAGMA cache_spill")).scalar_one()
    session.execute(text(f"PRAGMA cache_spill = {_NEVER_SPILL}"))
    try:
        yield
    finally:
        session.execute(text(f"PRAGMA cache_spill = {int(spill)}"))


def _removed(gone: Gone) -> str:
    return f"{REMOVED_HASH_PREFIX}{gone.status}"


def _removed_ordering_key(listed: Listed, links: Mapping[str, PatientLink]) -> str | None:
    link = links.get(listed.patient_id) if listed.patient_id else None
    return link.provider_id if link is not None else listed.patient_id


def _histories(session: Session, submission_ids: Sequence[str]) -> dict[str, History]:
    """Recorded versions (removal records left out) of these submissions, by id."""
    seen: dict[str, dict[str, set[str | None]]] = {}
    for chunk_start in range(0, len(submission_ids), 500):
        chunk = submission_ids[chunk_start : chunk_start + 500]
        query = select(
            SubmissionVersion.submission_id, SubmissionVersion.updated_at, SubmissionVersion.status
        ).where(
            SubmissionVersion.submission_id.in_(chunk),
            SubmissionVersion.content_hash.not_like(f"{REMOVED_HASH_PREFIX}%"),
        )
        for submission_id, updated_at, status in session.execute(query):
            seen.setdefault(submission_id, {}).setdefault(updated_at, set()).add(status)
    return {
        submission_id: History(
            {text: frozenset(statuses) for text, statuses in texts.items()},
            max(map(parse_timestamp, texts)),
        )
        for submission_id, texts in seen.items()
    }


def _newest_by_id(
    histories: Mapping[str, History], batch: Sequence[Version]
) -> dict[str, datetime]:
    """The newest `updatedAt` per submission among what is recorded and this batch."""
    newest = {submission_id: h.newest for submission_id, h in histories.items()}
    for version in batch:
        moment = version.detail.updated_at
        current = newest.get(version.key[0])
        if current is None or moment > current:
            newest[version.key[0]] = moment
    return newest


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
