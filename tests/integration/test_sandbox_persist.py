"""SQLite snapshots of the sandbox: what is saved comes back after a restart."""

import os
import stat
from pathlib import Path

import pytest

from syncd.sandbox.clock import ManualClock
from syncd.sandbox.errors import ApiError
from syncd.sandbox.freedoms import LateVisibility, ServerFreedoms
from syncd.sandbox.persist import capture, load, save, write_snapshot
from syncd.sandbox.records import ApiKey
from syncd.sandbox.state import DEMO_API_KEY, Sandbox
from syncd.voxares.contract import format_timestamp


def test_snapshot_round_trips_the_whole_state(tmp_path: Path) -> None:
    """Patients, keys, messages, submissions (with versions) and counters survive save/load."""
    path = tmp_path / "sandbox.db"
    clock = ManualClock()
    original = Sandbox(seed=4, clock=clock)
    practice = original.add_practice("Clinic B")
    token = original.issue_key(practice, "ehr-b", ["patients"])
    key = original.authenticate(DEMO_API_KEY)
    assert key is not None
    original.seed_patients(original.demo_practice_id, 5)
    original.send_message(
        key,
        {
            "providerId": "E-1",
            "firstName": "Ana",
            "lastName": "Horvat",
            "mobileNumber": "+385991234567",
            "content": "Hi",
        },
    )
    completed = original.seed_submissions(original.demo_practice_id, 3, status="Completed")[0]
    original.tick(10)
    original.count_request("GET /forms 200")
    save(original, path)

    restored = Sandbox(seed=99, clock=clock)
    assert load(restored, path)
    assert restored.stats() == original.stats()
    assert restored.submission_versions() == original.submission_versions()
    assert restored.authenticate(token) is not None
    restored_key = restored.authenticate(DEMO_API_KEY)
    assert restored_key is not None
    assert restored.get_submission(restored_key, completed) == original.get_submission(
        key, completed
    )
    assert restored.list_patients(restored_key, {"pageSize": "100"}) == original.list_patients(
        key, {"pageSize": "100"}
    )
    # The RNG continues where it stopped, so new ids do not collide with old ones.
    assert restored.new_id() == original.new_id()


def test_snapshot_file_is_private_and_missing_file_loads_nothing(tmp_path: Path) -> None:
    """The file is created 0600; loading a missing file leaves the sandbox as it was."""
    path = tmp_path / "sandbox.db"
    sandbox = Sandbox()
    assert not load(sandbox, path)
    save(sandbox, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_a_second_snapshot_replaces_the_first(tmp_path: Path) -> None:
    """Saving again replaces the previous state instead of adding to it."""
    path = tmp_path / "sandbox.db"
    sandbox = Sandbox()
    sandbox.seed_patients(sandbox.demo_practice_id, 3)
    save(sandbox, path)
    sandbox.reset()
    sandbox.seed_patients(sandbox.demo_practice_id, 1)
    save(sandbox, path)
    restored = Sandbox()
    load(restored, path)
    assert restored.stats()["patients"] == 1


def _freedom_world(clock: ManualClock) -> tuple[Sandbox, ApiKey]:
    """A sandbox with µs stamps, late writes still pending and one deleted submission."""
    sandbox = Sandbox(seed=4, clock=clock)
    sandbox.seed_patients(sandbox.demo_practice_id, 5)
    sandbox.seed_submissions(sandbox.demo_practice_id, 6, status="Completed")
    key = sandbox.authenticate(DEMO_API_KEY)
    assert key is not None
    gone = sandbox.list_submissions(key, {})["data"][0]["id"]
    sandbox.configure_freedoms(ServerFreedoms(detail_gone_rate=1.0))
    with pytest.raises(ApiError):
        sandbox.get_submission(key, gone)
    late = LateVisibility(rate=1.0, distribution="fixed", mean_seconds=120)
    sandbox.configure_freedoms(
        ServerFreedoms(updated_at_precision="us", late_visibility=late, tie_rate=0.5), seed=8
    )
    clock.advance(1)
    sandbox.tick(20)
    return sandbox, key


def test_snapshot_keeps_microseconds_pending_writes_and_deletions(tmp_path: Path) -> None:
    """Stored µs stamps, writes not yet visible (visible at the same time after a restart)
    and deleted submissions survive save/load."""
    path = tmp_path / "sandbox.db"
    clock = ManualClock()
    original, key = _freedom_world(clock)
    assert original.final_versions()["pendingWrites"] > 0
    save(original, path)
    restored = Sandbox(seed=99, clock=clock)
    assert load(restored, path)
    restored_key = restored.authenticate(DEMO_API_KEY)
    assert restored_key is not None
    stored = [
        (v.updated_at, v.visible_at) for s in original.submissions.values() for v in s.versions
    ]
    assert any(at.microsecond % 1000 for at, _ in stored)
    assert [
        (v.updated_at, v.visible_at) for s in restored.submissions.values() for v in s.versions
    ] == stored
    query = {"pageSize": "100", "updatedTo": "2025-05-20T09:15:01.000Z"}
    for step in (0, 119, 2):  # the late writes are visible 120 s after they were made
        clock.advance(step)
        assert restored.final_versions() == original.final_versions()
        assert restored.list_submissions(restored_key, query) == original.list_submissions(
            key, query
        )
    assert restored.final_versions()["pendingWrites"] == 0
    assert restored.stats()["submissionsDeleted"] == 1


def test_a_format_1_snapshot_still_loads(tmp_path: Path) -> None:
    """A snapshot written before version histories (format 1) loads with every version
    visible and the newest one's answers."""
    path = tmp_path / "sandbox.db"
    original = Sandbox(seed=4, clock=ManualClock())
    original.seed_patients(original.demo_practice_id, 3)
    original.seed_submissions(original.demo_practice_id, 4, status="Completed")
    original.tick(10)
    snapshot = capture(original)
    snapshot.meta["format"] = 1
    for index, (kind, pid, body) in enumerate(snapshot.rows):
        if kind == "submission":
            s = original.submissions[body["id"]]
            newest = s.versions[-1]
            old = {
                "id": s.id,
                "patientId": s.patient_id,
                "formId": s.form_id,
                "requestedBy": s.requested_by,
                "status": newest.status,
                "createdAt": format_timestamp(s.created_at),
                "updatedAt": format_timestamp(newest.updated_at),
                "receivedAt": None if newest.received_at is None else "ignored",
                "data": newest.data,
                "dataVariant": newest.data_variant,
                "versions": [[format_timestamp(v.updated_at), v.status] for v in s.versions],
            }
            snapshot.rows[index] = (kind, pid, old)
    write_snapshot(path, snapshot)
    restored = Sandbox(seed=99, clock=ManualClock())
    assert load(restored, path)
    key = original.authenticate(DEMO_API_KEY)
    restored_key = restored.authenticate(DEMO_API_KEY)
    assert key is not None
    assert restored_key is not None
    assert restored.submission_versions() == original.submission_versions()

    def truth(sandbox: Sandbox) -> list[dict[str, object]]:
        # Format 1 did not record when a version became visible: it was at once.
        return [
            {k: v for k, v in row.items() if k != "visibleAt"}
            for row in sandbox.final_versions()["data"]
        ]

    assert truth(restored) == truth(original)
    query = {"pageSize": "100"}
    assert restored.list_submissions(restored_key, query) == original.list_submissions(key, query)
