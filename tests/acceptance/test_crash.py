"""kill -9 at every named crash step of the push and the poller, then a plain restart: the
end state is the one an uninterrupted run leaves. Also the daemon killed mid-push.

Each case runs the real `syncd` command in a subprocess with `SYNCD_CRASH_AT=<step>:<n>`
(the process SIGKILLs itself the n-th time it reaches the step: no cleanup, no flush), then
runs it again without the variable, against a served sandbox and a SQLite state file.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from syncd.demo_data import write_sample_export
from tests.acceptance.conftest import PROVIDER, Practice, Workspace, syncd_command

pytestmark = pytest.mark.slow

PATIENTS = 300
SUBMISSIONS = 100
KILLED = -signal.SIGKILL


@dataclass(frozen=True)
class EndState:
    """What a finished push leaves: mirror rows and quarantine, by EHR id."""

    mirror: dict[str, tuple[str, str]]  # provider_id -> (payload_hash, state)
    voxares_ids: dict[str, str]  # provider_id -> Voxares patient id
    quarantine: set[tuple[str, str]]  # (row_key, field)


def read_end_state(db_path: Path) -> EndState:
    """The mirror and the quarantine of a state file."""
    with sqlite3.connect(db_path) as db:
        mirror_rows = db.execute(
            "SELECT provider_id, payload_hash, state, voxares_patient_id FROM patient_mirror"
        ).fetchall()
        quarantine = set(db.execute("SELECT row_key, field FROM quarantine").fetchall())
    return EndState(
        mirror={p: (h, s) for p, h, s, _ in mirror_rows},
        voxares_ids={p: v for p, _, _, v in mirror_rows},
        quarantine=quarantine,
    )


def assert_integrity(db_path: Path) -> None:
    """SQLite's own consistency check passes."""
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def assert_sandbox_holds_exactly(practice: Practice, state: EndState) -> None:
    """The sandbox holds one patient per mirrored row, and the mirror's ids are its ids."""
    assert practice.stats()["patients"] == len(state.mirror)
    with httpx.Client(
        base_url=practice.sandbox.base_url,
        headers={"Authorization": f"Bearer {practice.key}"},
        timeout=30,
    ) as api:
        for provider_id, voxares_id in state.voxares_ids.items():
            response = api.get(f"/patients/{PROVIDER}/{provider_id}")
            assert response.status_code == 200, provider_id
            assert response.json()["id"] == voxares_id


def push_workspace(tmp_path: Path, practice: Practice) -> Workspace:
    """A workspace with the sample export and a migrated state file."""
    ws = Workspace(tmp_path, practice)
    ws.write_config()
    write_sample_export(ws.export, PATIENTS)
    upgraded = ws.run("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    return ws


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, served: object) -> EndState:
    """The end state of one uninterrupted `syncd sync patients` of the same export."""
    from syncd.sandbox.server import ServedSandbox

    assert isinstance(served, ServedSandbox)
    created = served.admin.create_practice("reference")
    practice = Practice(served, created["id"], created["keys"][0]["key"])
    ws = push_workspace(tmp_path_factory.mktemp("reference"), practice)
    result = ws.run("sync", "patients")
    assert result.returncode == 0, result.stderr[-2000:]
    state = read_end_state(ws.state_db)
    assert len(state.mirror) > 0
    assert len(state.quarantine) > 0
    assert practice.stats()["patients"] == len(state.mirror)
    return state


def assert_equals_reference(ws: Workspace, reference: EndState) -> None:
    """Mirror, quarantine and sandbox equal those of the uninterrupted run; the file is sound."""
    state = read_end_state(ws.state_db)
    assert state.mirror == reference.mirror
    assert state.quarantine == reference.quarantine
    assert_sandbox_holds_exactly(ws.practice, state)
    assert_integrity(ws.state_db)
    with sqlite3.connect(ws.state_db) as db:
        assert db.execute("SELECT count(*) FROM job_locks").fetchone() == (0,)


@pytest.mark.parametrize(
    "crash_at",
    ["push.after_http:1", "push.after_http:150", "push.after_batch_commit:3"],
)
def test_push_killed_at_a_step_then_restarted_ends_like_an_uninterrupted_run(
    tmp_path: Path, practice: Practice, reference: EndState, crash_at: str
) -> None:
    """`sync patients` SIGKILLed at a push step, then rerun: same mirror, sandbox, quarantine."""
    ws = push_workspace(tmp_path, practice)
    crashed = ws.run("sync", "patients", env=ws.env(SYNCD_CRASH_AT=crash_at))
    assert crashed.returncode == KILLED, crashed.stderr[-2000:]
    # Some of the work was done before the kill, not all of it.
    assert 0 < practice.stats()["patients"] < len(reference.mirror)
    rerun = ws.run("sync", "patients")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert_equals_reference(ws, reference)


# --- the submission poller ------------------------------------------------------------------


def seed_submissions(practice: Practice) -> None:
    """Patients, SUBMISSIONS submissions, and a second (and third) version of some of them."""
    admin = practice.sandbox.admin
    patient_ids = admin.seed_patients(20, practice_id=practice.id)
    ids = admin.seed_submissions(SUBMISSIONS, practice_id=practice.id, patient_ids=patient_ids)
    for index, submission_id in enumerate(ids):
        if index % 3 == 0:
            admin.transition(submission_id, "Opened")
        if index % 5 == 0:
            admin.transition(submission_id, "Completed", data={"q1": f"answer {index}"})


def outbox_versions(db_path: Path) -> list[tuple[str, str]]:
    """(submission id, updatedAt) of every form_submission.updated event, in outbox order."""
    with sqlite3.connect(db_path) as db:
        payloads = db.execute(
            "SELECT payload FROM outbox_events WHERE event_type = 'form_submission.updated'"
            " ORDER BY seq"
        ).fetchall()
    pairs = []
    for (payload,) in payloads:
        submission = json.loads(payload)["submission"]
        pairs.append((submission["id"], submission["updatedAt"]))
    return pairs


def assert_latest_versions_in_outbox_once(ws: Workspace) -> None:
    """Every submission's latest version is in the outbox exactly once; no pair twice."""
    latest: dict[str, str] = {}
    for version in ws.practice.sandbox.admin.submission_versions(ws.practice.id):
        latest[version["id"]] = max(latest.get(version["id"], ""), version["updatedAt"])
    assert len(latest) == SUBMISSIONS
    pairs = outbox_versions(ws.state_db)
    twice = [pair for pair, n in Counter(pairs).items() if n > 1]
    assert not twice, f"{len(twice)} (id, updatedAt) pairs emitted twice"
    emitted = set(pairs)
    missing = [sid for sid, at in latest.items() if (sid, at) not in emitted]
    assert not missing, f"{len(missing)} latest versions never emitted"
    assert {sid for sid, _ in pairs} == set(latest)


@pytest.mark.parametrize(
    "crash_at",
    [
        "poller.window_saved:1",
        "poller.after_page:3",
        "poller.after_detail:50",
        "poller.after_outbox_insert:2",
        "poller.before_watermark:1",
        "poller.after_watermark:1",
    ],
)
def test_poller_killed_at_a_step_then_restarted_loses_and_duplicates_nothing(
    tmp_path: Path, practice: Practice, crash_at: str
) -> None:
    """`sync submissions` SIGKILLed at a poller step, then rerun: each latest version once."""
    seed_submissions(practice)
    ws = Workspace(tmp_path, practice)
    ws.write_config(submissions=True)
    assert ws.run("db", "upgrade").returncode == 0
    crashed = ws.run("sync", "submissions", env=ws.env(SYNCD_CRASH_AT=crash_at))
    assert crashed.returncode == KILLED, crashed.stderr[-2000:]
    rerun = ws.run("sync", "submissions")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert_latest_versions_in_outbox_once(ws)
    # A further run finds nothing new: the watermark moved past everything.
    again = ws.run("sync", "submissions")
    assert again.returncode == 0, again.stderr[-2000:]
    assert_latest_versions_in_outbox_once(ws)
    assert_integrity(ws.state_db)


# --- the daemon -----------------------------------------------------------------------------


def wait_for(condition: object, timeout: float, what: str) -> None:
    """Poll `condition()` until true, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def push_runs(db_path: Path) -> list[str]:
    """Outcomes of every push_patients run, oldest first."""
    with sqlite3.connect(db_path, timeout=30) as db:
        return [
            r[0]
            for r in db.execute(
                "SELECT outcome FROM job_runs WHERE job = 'push_patients' ORDER BY id"
            )
        ]


def test_daemon_killed_mid_push_then_restarted_ends_like_an_uninterrupted_run(
    tmp_path: Path, practice: Practice, reference: EndState
) -> None:
    """`syncd run` SIGKILLed at a random moment mid-push, then restarted: same end state."""
    ws = push_workspace(tmp_path, practice)
    # A slower client so that the push is still going when the kill lands.
    env = ws.env(SYNCD_VOXARES__REQUESTS_PER_SECOND="150", SYNCD_PATIENTS__JITTER_SECONDS="0")
    seed = random.randrange(1_000_000)
    delay = random.Random(seed).uniform(0.0, 1.0)
    command = syncd_command("run", "--config", str(ws.config))
    daemon = subprocess.Popen(
        command, cwd=ws.dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: practice.stats()["patients"] > 0, 120, "the push to start")
        time.sleep(delay)
        daemon.send_signal(signal.SIGKILL)
        assert daemon.wait(60) == KILLED
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    pushed = practice.stats()["patients"]
    assert 0 < pushed < len(reference.mirror), f"kill not mid-push (seed {seed})"
    assert push_runs(ws.state_db) == ["running"]

    restarted = subprocess.Popen(
        command, cwd=ws.dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: "ok" in push_runs(ws.state_db), 180, "the restarted push to finish")
        restarted.send_signal(signal.SIGTERM)
        _, stderr = restarted.communicate(timeout=60)
    finally:
        if restarted.poll() is None:
            restarted.kill()
            restarted.communicate()
    assert restarted.returncode == 0, stderr[-2000:]
    # The killed run is recorded as interrupted by the restart, the new one as ok.
    assert push_runs(ws.state_db) == ["interrupted", "ok"]
    assert_equals_reference(ws, reference)
