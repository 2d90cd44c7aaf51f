"""Optional persistence of a served sandbox to one SQLite file, so it survives a restart.

Strategy: a full snapshot, written every few seconds while something changed and once more on
shutdown (see `create_app`). A snapshot replaces the previous one inside one transaction, so
the file always holds a whole state. A hard kill loses at most the last interval.

The rows are captured on the event loop (a consistent view) and written in a worker thread
(`run_snapshots`), so serving does not stall on disk I/O. The file is created mode 0600: it
holds (synthetic) patient data.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from syncd.sandbox.practice import ANSWERED_STATUSES, Practice
from syncd.sandbox.records import (
    ApiKey,
    Document,
    Form,
    Message,
    Patient,
    Submission,
    SubmissionVersion,
    Template,
)
from syncd.sandbox.state import MessageTiming, Sandbox
from syncd.voxares.contract import format_timestamp, parse_timestamp

# 2: a submission row holds every version with its stored updatedAt (microseconds kept) and
# when it becomes visible; 1 (still read) held the newest version's content only.
FORMAT_VERSION = 2
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS records ("
    " seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, practice_id TEXT, body TEXT NOT NULL)",
)


@dataclass(slots=True)
class Snapshot:
    """A consistent copy of the sandbox's state, ready to be written."""

    meta: dict[str, Any]
    rows: list[tuple[str, str | None, dict[str, Any]]]


def _ts(moment: Any) -> str:
    return format_timestamp(moment)


def capture(sandbox: Sandbox) -> Snapshot:
    """Copy the state into plain JSON-ready rows (call on the event loop)."""
    version, internal, gauss = sandbox.rng.getstate()
    timing = sandbox.message_timing
    meta = {
        "format": FORMAT_VERSION,
        "seed": sandbox.seed,
        "rng": [version, list(internal), gauss],
        "demoPracticeId": sandbox.demo_practice_id,
        "requests": dict(sandbox.requests),
        "activity": [sandbox.activity_enabled, sandbox.activity_rate],
        "patientSerial": sandbox.patient_serial,
        "messageTiming": [
            timing.sent_after_seconds,
            timing.final_after_seconds,
            timing.failure_rate,
        ],
    }
    rows: list[tuple[str, str | None, dict[str, Any]]] = []
    for practice in sandbox.practices.values():
        rows.append(
            (
                "practice",
                practice.id,
                {
                    "id": practice.id,
                    "name": practice.name,
                    "userId": practice.user_id,
                    "keyNames": list(practice.key_names),
                    "sends": dict(practice.sends),
                },
            )
        )
    for key in sandbox.keys.values():
        rows.append(
            (
                "key",
                key.practice_id,
                {
                    "keyId": key.key_id,
                    "secret": key.secret,
                    "name": key.name,
                    "scopes": sorted(key.scopes),
                },
            )
        )
    for practice in sandbox.practices.values():
        rows.extend(_practice_rows(practice))
    return Snapshot(meta, rows)


def _practice_rows(practice: Practice) -> list[tuple[str, str | None, dict[str, Any]]]:
    pid = practice.id
    rows: list[tuple[str, str | None, dict[str, Any]]] = []
    for t in practice.templates.values():
        rows.append(
            (
                "template",
                pid,
                {
                    "id": t.id,
                    "name": t.name,
                    "content": t.content,
                    "createdAt": _ts(t.created_at),
                    "updatedAt": _ts(t.updated_at),
                },
            )
        )
    for f in practice.forms.values():
        rows.append(("form", pid, {"id": f.id, "name": f.display_name, "q": list(f.questions)}))
    for d in practice.documents.values():
        rows.append(("document", pid, {"id": d.id, "name": d.name}))
    for p in practice.patients.values():
        rows.append(
            (
                "patient",
                pid,
                {
                    "id": p.id,
                    "provider": p.provider,
                    "providerId": p.provider_id,
                    "firstName": p.first_name,
                    "lastName": p.last_name,
                    "mobileNumber": p.mobile_number,
                    "email": p.email,
                    "dateOfBirth": p.date_of_birth,
                    "createdAt": _ts(p.created_at),
                    "updatedAt": _ts(p.updated_at),
                },
            )
        )
    for m in practice.messages.values():
        rows.append(
            (
                "message",
                pid,
                {
                    "id": m.id,
                    "patientId": m.patient_id,
                    "content": m.content,
                    "smsCount": m.sms_count,
                    "createdAt": _ts(m.created_at),
                    "sentAfter": m.sent_after.total_seconds(),
                    "finalAfter": m.final_after.total_seconds(),
                    "fails": m.fails,
                    "fingerprint": m.fingerprint,
                },
            )
        )
    for s in practice.submissions.values():
        rows.append(("submission", pid, _submission_row(s)))
    return rows


def _exact(moment: datetime | None) -> str | None:
    """A timestamp with its microseconds (a stored updatedAt may have them)."""
    return None if moment is None else moment.astimezone(UTC).isoformat()


def _parse_exact(text: str | None) -> datetime | None:
    return None if text is None else parse_timestamp(text)


def _submission_row(s: Submission) -> dict[str, Any]:
    return {
        "id": s.id,
        "patientId": s.patient_id,
        "formId": s.form_id,
        "requestedBy": s.requested_by,
        "createdAt": _exact(s.created_at),
        "visible": s.visible,
        "deletedAt": _exact(s.deleted_at),
        "versions": [
            {
                "updatedAt": _exact(v.updated_at),
                "visibleAt": _exact(v.visible_at),
                "status": v.status,
                "receivedAt": _exact(v.received_at),
                "data": v.data,
                "dataVariant": v.data_variant,
            }
            for v in s.versions
        ],
    }


def write_snapshot(path: str | Path, snapshot: Snapshot) -> None:
    """Replace the file's state with `snapshot` in one transaction (blocking; thread-safe)."""
    target = Path(path)
    if not target.exists():
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o600))
    conn = sqlite3.connect(target, timeout=30)
    try:
        for statement in _SCHEMA:
            conn.execute(statement)
        with conn:
            conn.execute("DELETE FROM records")
            conn.execute("DELETE FROM meta")
            conn.executemany(
                "INSERT INTO records (kind, practice_id, body) VALUES (?, ?, ?)",
                ((kind, pid, json.dumps(body)) for kind, pid, body in snapshot.rows),
            )
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('state', ?)", (json.dumps(snapshot.meta),)
            )
    finally:
        conn.close()


def save(sandbox: Sandbox, path: str | Path) -> None:
    """Capture and write a snapshot now."""
    write_snapshot(path, capture(sandbox))


def load(sandbox: Sandbox, path: str | Path) -> bool:
    """Replace the sandbox's state with the file's; False (state untouched) when there is none."""
    target = Path(path)
    if not target.exists():
        return False
    conn = sqlite3.connect(target, timeout=30)
    try:
        for statement in _SCHEMA:
            conn.execute(statement)
        found = conn.execute("SELECT value FROM meta WHERE key = 'state'").fetchone()
        if found is None:
            return False
        meta = json.loads(found[0])
        rows = conn.execute("SELECT kind, practice_id, body FROM records ORDER BY seq").fetchall()
    finally:
        conn.close()
    _restore(sandbox, meta, [(kind, pid, json.loads(body)) for kind, pid, body in rows])
    return True


def _restore(
    sandbox: Sandbox, meta: dict[str, Any], rows: list[tuple[str, str | None, dict[str, Any]]]
) -> None:
    sandbox.reset(meta["seed"])
    version, internal, gauss = meta["rng"]
    sandbox.rng.setstate((version, tuple(internal), gauss))
    sandbox.practices.clear()
    sandbox.keys.clear()
    sandbox.submissions.clear()
    sandbox.demo_practice_id = meta["demoPracticeId"]
    sandbox.requests.update(meta["requests"])
    sandbox.activity_enabled, sandbox.activity_rate = meta["activity"]
    sandbox.patient_serial = meta["patientSerial"]
    sandbox.message_timing = MessageTiming(*meta["messageTiming"])
    restorers = _RESTORERS if meta["format"] >= 2 else _RESTORERS_V1
    for kind, pid, body in rows:
        restorers[kind](sandbox, pid or "", body)
    sandbox.changes = 0


def _restore_practice(sandbox: Sandbox, _: str, b: dict[str, Any]) -> None:
    practice = Practice(id=b["id"], name=b["name"], user_id=b["userId"])
    practice.key_names.extend(b["keyNames"])
    practice.sends.update(b["sends"])
    sandbox.practices[practice.id] = practice


def _restore_key(sandbox: Sandbox, pid: str, b: dict[str, Any]) -> None:
    key = ApiKey(b["keyId"], b["secret"], pid, b["name"], frozenset(b["scopes"]))
    sandbox.keys[key.token] = key


def _restore_template(sandbox: Sandbox, pid: str, b: dict[str, Any]) -> None:
    template = Template(
        b["id"],
        b["name"],
        b["content"],
        parse_timestamp(b["createdAt"]),
        parse_timestamp(b["updatedAt"]),
    )
    sandbox.practices[pid].templates[template.id] = template


def _restore_form(sandbox: Sandbox, pid: str, b: dict[str, Any]) -> None:
    sandbox.practices[pid].forms[b["id"]] = Form(b["id"], b["name"], tuple(b["q"]))


def _restore_document(sandbox: Sandbox, pid: str, b: dict[str, Any]) -> None:
    sandbox.practices[pid].documents[b["id"]] = Document(b["id"], b["name"])


def _restore_patient(sandbox: Sandbox, pid: str, b: dict[str, Any]) -> None:
    practice = sandbox.practices[pid]
    patient = Patient(
        id=b["id"],
        provider=b["provider"],
        provider_id=b["providerId"],
        first_name=b["firstName"],
        last_name=b["lastName"],
        mobile_number=b["mobileNumber"],
        email=b["email"],
        date_of_birth=b["dateOfBirth"],
        created_at=parse_timestamp(b["createdAt"]),
        updated_at=parse_timestamp(b["updatedAt"]),
    )
    practice.patients[patient.id] = patient
    practice.patient_ids.append(patient.id)
    practice.by_external[(patient.provider, patient.provider_id)] = patient


def _restore_message(sandbox: Sandbox, pid: str, b: dict[str, Any]) -> None:
    message = Message(
        id=b["id"],
        practice_id=pid,
        patient_id=b["patientId"],
        content=b["content"],
        sms_count=b["smsCount"],
        created_at=parse_timestamp(b["createdAt"]),
        sent_after=timedelta(seconds=b["sentAfter"]),
        final_after=timedelta(seconds=b["finalAfter"]),
        fails=b["fails"],
        fingerprint=b["fingerprint"],
    )
    sandbox.practices[pid].messages[message.id] = message


def _restore_submission(sandbox: Sandbox, pid: str, b: dict[str, Any]) -> None:
    versions = []
    for v in b["versions"]:
        versions.append(
            SubmissionVersion(
                parse_timestamp(v["updatedAt"]),
                parse_timestamp(v["visibleAt"]),
                v["status"],
                _parse_exact(v["receivedAt"]),
                v["data"],
                v["dataVariant"],
            )
        )
    submission = Submission(
        id=b["id"],
        practice_id=pid,
        patient_id=b["patientId"],
        form_id=b["formId"],
        requested_by=b["requestedBy"],
        created_at=parse_timestamp(b["createdAt"]),
        versions=versions,
        visible=b["visible"],
        deleted_at=_parse_exact(b["deletedAt"]),
    )
    _add_submission(sandbox, sandbox.practices[pid], submission)


def _restore_submission_v1(sandbox: Sandbox, pid: str, b: dict[str, Any]) -> None:
    """A format-1 row: every version visible, answers kept for the newest one only."""
    versions = []
    for at, status in b["versions"]:
        stamp = parse_timestamp(at)
        received = stamp if status in ANSWERED_STATUSES else None
        versions.append(SubmissionVersion(stamp, stamp, status, received))
    versions[-1].data, versions[-1].data_variant = b["data"], b["dataVariant"]
    submission = Submission(
        id=b["id"],
        practice_id=pid,
        patient_id=b["patientId"],
        form_id=b["formId"],
        requested_by=b["requestedBy"],
        created_at=parse_timestamp(b["createdAt"]),
        versions=versions,
        visible=len(versions) - 1,
    )
    _add_submission(sandbox, sandbox.practices[pid], submission)


def _add_submission(sandbox: Sandbox, practice: Practice, submission: Submission) -> None:
    practice.submissions[submission.id] = submission
    sandbox.submissions[submission.id] = submission
    practice.track_open(submission)
    if submission.deleted_at is not None:
        return
    for index in range(submission.visible + 1, len(submission.versions)):
        # Writes not visible yet wait again for their time.
        practice.pending_serial += 1
        visible_at = submission.versions[index].visible_at
        entry = (visible_at, practice.pending_serial, submission.id, index)
        heapq.heappush(practice.pending, entry)


_RESTORERS = {
    "practice": _restore_practice,
    "key": _restore_key,
    "template": _restore_template,
    "form": _restore_form,
    "document": _restore_document,
    "patient": _restore_patient,
    "message": _restore_message,
    "submission": _restore_submission,
}
_RESTORERS_V1 = {**_RESTORERS, "submission": _restore_submission_v1}


async def run_snapshots(sandbox: Sandbox, path: str | Path, interval: float = 2.0) -> None:
    """Run forever (until cancelled): snapshot every `interval` seconds when state changed."""
    saved = sandbox.changes
    while True:
        await asyncio.sleep(interval)
        if sandbox.changes == saved:
            continue
        mark = sandbox.changes
        snapshot = capture(sandbox)
        await asyncio.to_thread(write_snapshot, path, snapshot)
        saved = mark
