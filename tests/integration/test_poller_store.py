"""PollerStore.record on SQLite and PostgreSQL: each emitted event with its version record and
audit entry, in one transaction, seqs paired with the right rows, duplicates skipped."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from syncd.exceptions import StateError
from syncd.hashing import canonical_json
from syncd.state.models import AuditEntry, OutboxEvent, PatientMirror, SubmissionVersion
from syncd.submissions.store import AUDIT_ACTION, Gone, PollerStore
from syncd.submissions.versions import (
    EVENT_TYPE,
    REMOVED_EVENT_TYPE,
    PatientLink,
    content_hash,
    event_payload,
)
from syncd.submissions.window import Listed
from syncd.voxares.models import SubmissionDetail
from tests.conftest import migrated_engine

STREAM = "form_submissions"


def detail(n: int, *, patient: str | None = None, **overrides: Any) -> SubmissionDetail:
    body: dict[str, Any] = {
        "id": f"sub-{n}",
        "submissionStatus": "Completed",
        "updatedAt": f"2025-05-20T09:{n // 60 % 60:02d}:{n % 60:02d}.120Z",
        "patient": {"id": patient or f"pat-{n}"},
        "form": {"id": "form-1", "displayName": "Intake"},
        "data": {"q": f"answer {n} š", "sig": "data:image/png;base64," + "A" * (n % 7)},
    }
    body.update(overrides)
    return SubmissionDetail.model_validate(body)


def count(engine: Engine, model: type[Any]) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def mirror(engine: Engine, voxares_id: str, provider_id: str) -> None:
    now = datetime.now(UTC)
    with Session(engine) as session, session.begin():
        session.add(
            PatientMirror(
                provider="ehr",
                provider_id=provider_id,
                voxares_patient_id=voxares_id,
                payload_hash="0" * 64,
                payload="{}",
                first_pushed_at=now,
                last_pushed_at=now,
                last_seen_at=now,
            )
        )


def test_record_pairs_each_event_with_its_version_and_audit_entry(state_engine: Engine) -> None:
    """Every emitted detail has its exact payload, version row and audit entry under one seq."""
    mirror(state_engine, "pat-2", "P-2")
    details = [detail(n) for n in range(5)]
    recorded = PollerStore(state_engine, STREAM).record(details, run_id=7)
    assert (recorded.emitted, recorded.duplicates) == (5, 0)
    assert list(recorded.event_seqs) == sorted(recorded.event_seqs)
    with Session(state_engine) as session:
        events = {e.seq: e for e in session.scalars(select(OutboxEvent))}
        versions = {v.submission_id: v for v in session.scalars(select(SubmissionVersion))}
        audits = {a.object_id: a for a in session.scalars(select(AuditEntry))}
    assert sorted(events) == list(recorded.event_seqs)
    for n, (submission, seq) in enumerate(zip(details, recorded.event_seqs, strict=True)):
        link = PatientLink("ehr", "P-2") if n == 2 else None
        event = events[seq]
        assert event.event_type == EVENT_TYPE
        assert event.payload == canonical_json(event_payload(submission, link)).decode()
        assert event.ordering_key == ("P-2" if link else f"pat-{n}")
        version = versions[submission.id]
        assert (version.updated_at, version.content_hash, version.event_seq) == (
            json.loads(event.payload)["submission"]["updatedAt"],
            content_hash(submission),
            seq,
        )
        entry = audits[submission.id]
        assert (entry.actor, entry.run_id, entry.action, entry.object_type) == (
            STREAM,
            7,
            AUDIT_ACTION,
            "form_submission",
        )
        assert entry.detail == f"updatedAt={version.updated_at} seq={seq}"


def test_record_counts_known_versions_and_repeats_in_a_batch_as_duplicates(
    state_engine: Engine,
) -> None:
    """A repeat in the batch or a recorded version is skipped; changed content is new."""
    store = PollerStore(state_engine, STREAM)
    first = store.record([detail(1), detail(2), detail(1)], run_id=None)
    assert (first.emitted, first.duplicates) == (2, 1)
    again = store.record([detail(1), detail(2), detail(3)], run_id=None)
    assert (again.emitted, again.duplicates) == (1, 2)
    # Same id and updatedAt, other answers: the API forgot to stamp it, still a new version.
    changed = store.record([detail(1, data={"q": "changed"})], run_id=None)
    assert (changed.emitted, changed.duplicates) == (1, 0)
    assert store.record([], run_id=None).emitted == 0
    assert count(state_engine, OutboxEvent) == count(state_engine, SubmissionVersion) == 4
    assert count(state_engine, AuditEntry) == 4


def test_record_of_a_large_batch_keeps_seqs_in_detail_order(state_engine: Engine) -> None:
    """Past one insertmanyvalues page, seqs still rise in detail order, each on its own row."""
    details = [detail(n, patient="pat-same") for n in range(1100)]
    recorded = PollerStore(state_engine, STREAM).record(details, run_id=None)
    assert recorded.emitted == 1100
    with Session(state_engine) as session:
        rows = session.execute(select(OutboxEvent.seq, OutboxEvent.payload).order_by("seq"))
        in_seq_order = [(seq, json.loads(payload)["submission"]["id"]) for seq, payload in rows]
        version_seqs = {
            sub: seq
            for sub, seq in session.execute(
                select(SubmissionVersion.submission_id, SubmissionVersion.event_seq)
            )
        }
    assert in_seq_order == list(zip(recorded.event_seqs, [d.id for d in details], strict=True))
    assert version_seqs == {sub: seq for seq, sub in in_seq_order}


def test_record_failing_midway_writes_nothing(state_engine: Engine) -> None:
    """When the last insert (audit) fails, the batch's events and versions roll back too."""
    with state_engine.begin() as conn:
        if state_engine.dialect.name == "sqlite":
            conn.execute(
                text(
                    "CREATE TRIGGER no_audit BEFORE INSERT ON audit_log "
                    "BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql "
                    "AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER no_audit BEFORE INSERT ON audit_log "
                    "FOR EACH ROW EXECUTE FUNCTION refuse()"
                )
            )
    sqlite = state_engine.dialect.name == "sqlite"
    if sqlite:
        with state_engine.connect() as connection:
            default_spill = connection.exec_driver_sql("PRAGMA cache_spill").scalar_one()
    with pytest.raises(StateError, match="stream=form_submissions") as failed:
        PollerStore(state_engine, STREAM).record([detail(1), detail(2)], run_id=None)
    # The insert's own failure is reported, not a later one from restoring the settings.
    refused = "IntegrityError" if sqlite else "ProgrammingError"  # RAISE, as each driver maps it
    assert str(failed.value).endswith(f"error={refused}")
    assert count(state_engine, OutboxEvent) == count(state_engine, SubmissionVersion) == 0
    if sqlite:
        with state_engine.connect() as connection:
            spill = connection.exec_driver_sql("PRAGMA cache_spill").scalar_one()
        assert spill == default_spill


def test_a_detail_older_than_a_recorded_version_is_never_emitted(state_engine: Engine) -> None:
    """A lagging read after a newer version was recorded: superseded, not emitted."""
    store = PollerStore(state_engine, STREAM)
    newer = detail(5, updatedAt="2025-05-20T09:00:05.500Z", submissionStatus="Completed")
    older = detail(5, updatedAt="2025-05-20T09:00:05.100Z", submissionStatus="Opened")
    assert store.record([newer], run_id=None).emitted == 1
    lagging = store.record([older], run_id=None)
    assert (lagging.emitted, lagging.superseded) == (0, ("sub-5",))
    # Both in one batch: the newer one only.
    both = store.record(
        [
            detail(6, updatedAt="2025-05-20T09:00:06.100Z"),
            detail(6, updatedAt="2025-05-20T09:00:06.200Z"),
        ],
        run_id=None,
    )
    assert both.emitted == 1
    assert both.emitted_versions[0][1].microsecond == 200_000
    assert count(state_engine, OutboxEvent) == 2


def test_histories_cover_recorded_and_older_versions_by_status(state_engine: Engine) -> None:
    """Listed (id, updatedAt) is covered when recorded with its status, or older than recorded;
    the same rendered millisecond with another status is not (a finer-stored second write)."""
    store = PollerStore(state_engine, STREAM)
    store.record([detail(7, submissionStatus="Opened")], run_id=None)
    at = detail(7).updated_at
    history = store.histories(["sub-7", "sub-unknown"])
    assert set(history) == {"sub-7"}
    assert history["sub-7"].covers(Listed("sub-7", at, status="Opened"))
    assert not history["sub-7"].covers(Listed("sub-7", at, status="Completed"))
    assert history["sub-7"].covers(Listed("sub-7", at - timedelta(seconds=1), status="Pending"))
    assert not history["sub-7"].covers(Listed("sub-7", at + timedelta(milliseconds=1)))


def test_a_removal_is_emitted_once_and_a_later_read_still_counts(state_engine: Engine) -> None:
    """404 on every read: one form_submission.removed (ids only); the same removal again is a
    duplicate; the submission read after all (a replica behind) is emitted as a version."""
    mirror(state_engine, "pat-8", "P-8")
    store = PollerStore(state_engine, STREAM)
    at = detail(8).updated_at
    listed = Listed("sub-8", at, status="Completed", patient_id="pat-8", form_id="form-1")
    first = store.record_removed([Gone(listed, 404)], run_id=3)
    again = store.record_removed([Gone(listed, 404)], run_id=4)
    assert (first.emitted, again.emitted, again.duplicates) == (1, 0, 1)
    with Session(state_engine) as session:
        event = session.scalars(select(OutboxEvent)).one()
    assert event.event_type == REMOVED_EVENT_TYPE
    assert event.ordering_key == "P-8"
    assert json.loads(event.payload) == {
        "submission": {"id": "sub-8", "updatedAt": "2025-05-20T09:00:08.120Z", "detailStatus": 404},
        "form": {"id": "form-1"},
        "patient": {"voxaresId": "pat-8", "providerId": "P-8", "provider": "ehr"},
    }
    assert not store.histories(["sub-8"])  # a removal does not count as read
    assert store.record([detail(8, patient="pat-8")], run_id=None).emitted == 1


def _bytes_written() -> int:
    """What this process handed to write(2) so far (Linux), sockets and files alike."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["wchar"])


def test_a_batch_larger_than_the_page_cache_is_written_once_and_checkpointed_once(
    sqlite_url: str,
) -> None:
    """SQLite: a batch's pages are written to the WAL at its commit, not spilled before.

    40 details of ~100 KB are ~4 MB of pages, twice SQLite's default 2 MB page cache. With
    spilling, the write volume was ~3.2 x the payload (the spilled pages were written
    again); without, ~2 x: the WAL frames and their checkpoint into the database file.
    The connection spills as before afterwards (its setting restored).
    """
    with migrated_engine(sqlite_url) as state_engine:  # the page cache and WAL: SQLite
        _write_a_large_batch_once(state_engine)


def _write_a_large_batch_once(state_engine: Engine) -> None:
    details = [
        detail(n, data={"sig": "data:image/png;base64," + f"{n:04d}" * 25_000}) for n in range(40)
    ]
    payload_bytes = sum(len(canonical_json(d.data)) for d in details)
    with state_engine.connect() as connection:
        default_spill = connection.exec_driver_sql("PRAGMA cache_spill").scalar_one()
    before = _bytes_written()
    PollerStore(state_engine, STREAM).record(details, run_id=None)
    written = _bytes_written() - before
    assert count(state_engine, OutboxEvent) == 40
    assert payload_bytes < written < 2.5 * payload_bytes
    with state_engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA cache_spill").scalar_one() == default_spill


def _hash_as_earlier_releases_stored_it(submission: SubmissionDetail) -> str:
    """sha256 of the standard encoder's canonical JSON, as every release before orjson."""
    return hashlib.sha256(
        json.dumps(
            {
                "status": submission.submission_status,
                "data": submission.data,
                "formId": submission.form.id if submission.form else None,
                "patientId": submission.patient.id if submission.patient else None,
            },
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        ).encode("utf-8", "backslashreplace")
    ).hexdigest()


@pytest.mark.parametrize(
    "answers",
    [
        # What the fast encoder writes itself: text (a data URL, non-ASCII), ints, booleans.
        {"sig": "data:image/png;base64," + "iVBORw0KGgo" * 6000, "name": "Željka", "n": 3},
        # What it hands to the standard encoder, one kind at a time: floats (orjson would
        # write 0.00001 and 1e16), an integer beyond 64 bits, a lone surrogate.
        {"temp": 37.5, "tiny": 1e-05, "huge": 1e16, "ok": [True, None]},
        {"big": 2**70},
        {"odd": "\udc80"},
    ],
)
def test_versions_recorded_by_earlier_releases_are_still_known_after_the_upgrade(
    state_engine: Engine, answers: dict[str, Any]
) -> None:
    """A version row written with the old hash makes the same detail a duplicate: no re-emit."""
    submission = detail(1, data=answers)
    old_hash = _hash_as_earlier_releases_stored_it(submission)
    assert content_hash(submission) == old_hash
    with Session(state_engine) as session, session.begin():
        session.add(
            SubmissionVersion(
                submission_id=submission.id,
                updated_at="2025-05-20T09:00:01.120Z",
                content_hash=old_hash,
                status="Completed",
                event_seq=None,
                recorded_at=datetime.now(UTC),
            )
        )
    recorded = PollerStore(state_engine, STREAM).record([submission], run_id=None)
    assert (recorded.emitted, recorded.duplicates) == (0, 1)
    assert count(state_engine, OutboxEvent) == 0
