"""SQLite snapshots of the sandbox: what is saved comes back after a restart."""

import os
import stat
from pathlib import Path

from syncd.sandbox.clock import ManualClock
from syncd.sandbox.persist import load, save
from syncd.sandbox.state import DEMO_API_KEY, Sandbox


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
