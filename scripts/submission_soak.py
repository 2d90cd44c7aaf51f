"""Submission soak: the real daemon, SIGKILLed again and again, against a served sandbox that
takes every freedom the contract allows a server with form submissions.

Per seed: a served sandbox storing `updatedAt` in microseconds, with writes clustered on one
millisecond (ties), shuffled lists, updates between page requests, a server clock 90 s off,
a lagging detail replica, submissions deleted between list and detail, and writes made
visible late (a share of them by up to 10 minutes, far beyond settle + overlap). A thread
creates and advances submissions all along; `syncd run` (polling every second, a sweep
every few seconds) is killed with SIGKILL at random moments and started again. Then the
activity stops, every pending write is made visible (`publish-pending`), the daemon runs
until a poll and a sweep have passed that moment, and stops with SIGTERM.

Checked against the sandbox's ground truth (`final-versions`) and the state database:

- lost: a live submission whose final version (id, updatedAt, status) is not in the outbox;
- duplicates: a version (id, updatedAt, answers) emitted more than once;
- out of order: a submission whose versions were emitted with a decreasing updatedAt;
- found by the sweep: versions the sweep emitted (`poller.sweep_found`), i.e. late ones.

    .venv/bin/python scripts/submission_soak.py --seeds 10 --seconds 60 --kills 12

Prints ids and counts only. Exit code 1 when a version was lost, duplicated or reordered.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from syncd.sandbox.admin_client import SandboxAdmin  # noqa: E402 (after the path set-up)
from syncd.sandbox.faults import FaultConfig  # noqa: E402
from syncd.sandbox.server import ServedSandbox  # noqa: E402
from syncd.voxares.contract import parse_timestamp  # noqa: E402
from tests import config_files  # noqa: E402
from tests.acceptance.conftest import clean_env, syncd_command  # noqa: E402


def freedoms(seed: int, *, max_late_seconds: float) -> FaultConfig:
    """Every freedom of the contract at once (the soak's server)."""
    return FaultConfig.model_validate(
        {
            "seed": seed,
            "updated_at_precision": "us",
            "tie_rate": 0.3,
            "shuffle_lists": True,
            "mutate_during_paging": 0.2,
            "clock_offset_seconds": 90.0,
            "detail_lag_rate": 0.15,
            "detail_gone_rate": 0.01,
            "late_visibility": {
                "rate": 0.2,
                "distribution": "exponential",
                "min_seconds": 3.0,
                "mean_seconds": 15.0,
                "max_seconds": max_late_seconds,
            },
        }
    )


def write_config(directory: Path, base_url: str) -> Path:
    """`syncd run` with only the poller, fast intervals and a sweep every few seconds."""
    installation = config_files.installation(
        base_url=base_url,
        directory=directory,
        client={**config_files.FAST_CLIENT, "read_timeout": 5.0},
    )
    return config_files.write(
        directory / "config.toml",
        {
            **installation,
            "database": {**installation["database"], "auto_migrate": True},
            "patients": {"enabled": False},
            "submissions": {
                "interval_seconds": 1.0,
                "overlap_seconds": 3.0,
                "settle_seconds": 1.0,
                "page_size": 10,
                "max_window_items": 40,
                "detail_concurrency": 4,
                "sweep_interval_seconds": 4.0,
                "sweep_lookback_seconds": 3600.0,
                "deep_sweep_interval_seconds": 0,
            },
            "messages": {"enabled": False},
        },
    )


class Activity:
    """Creates and advances submissions of one practice (a thread), ignoring deleted ones."""

    def __init__(self, admin: SandboxAdmin, practice_id: str, patients: list[str], seed: int):
        self.admin = admin
        self.practice_id = practice_id
        self.patients = patients
        self.rng = random.Random(seed)
        self.open: dict[str, str] = {}
        self.changes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def step(self) -> None:
        """One change: a new submission, or an open one moves on."""
        if self.open and self.rng.random() < 0.6:
            sid = self.rng.choice(sorted(self.open))
            status = self.open.pop(sid)
            following = (
                "Opened"
                if status == "Pending"
                else self.rng.choice(["Completed", "Completed", "Rejected"])
            )
            data = (
                {"q1": f"answer {self.rng.randrange(1000)}"} if following == "Completed" else None
            )
            try:
                self.admin.transition(sid, following, data=data)
            except httpx.HTTPStatusError as exc:  # deleted by the sandbox meanwhile
                if exc.response.status_code != 404:
                    raise
                return
            if following == "Opened":
                self.open[sid] = following
        else:
            patient = self.rng.choice(self.patients)
            (sid,) = self.admin.seed_submissions(
                1, practice_id=self.practice_id, patient_ids=[patient]
            )
            self.open[sid] = "Pending"
        self.changes += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.rng.uniform(0.005, 0.05)):
            self.step()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@dataclass
class Outcome:
    """One seed's figures."""

    seed: int
    kills: int = 0
    changes: int = 0
    final_versions: int = 0
    deleted: int = 0
    events: int = 0
    removed_events: int = 0
    lost: list[str] = field(default_factory=list)
    duplicates: int = 0
    out_of_order: int = 0
    sweep_found: int = 0
    deferred: int = 0
    seconds: float = 0.0


class Daemon:
    """`syncd run` in `directory`, logging JSON lines to daemon.log."""

    def __init__(self, directory: Path, key: str) -> None:
        self.directory = directory
        self.env = clean_env(SYNCD_VOXARES__API_KEY=key)
        self.log = (directory / "daemon.log").open("a", encoding="utf-8")
        self._run_starts_at = 0  # where the current run's lines begin in daemon.log

    @contextlib.contextmanager
    def running(self) -> Iterator[subprocess.Popen[bytes]]:
        """A started daemon, killed on the way out if still running."""
        self.log.flush()
        self._run_starts_at = (self.directory / "daemon.log").stat().st_size
        process = subprocess.Popen(  # noqa: S603 (our own CLI, arguments we built)
            syncd_command("run", "--config", str(self.directory / "config.toml")),
            cwd=self.directory,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    def wait_started(self, process: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
        """Wait until the current run logged `daemon.started` (migrated, jobs scheduled), so
        that what follows is timed from the daemon's work, not from a slow machine's
        start-up; RuntimeError if it died or never got there."""
        deadline = time.monotonic() + timeout
        path = self.directory / "daemon.log"
        while process.poll() is None and time.monotonic() < deadline:
            with path.open("rb") as log:
                log.seek(self._run_starts_at)
                if b'"daemon.started"' in log.read():
                    return
            time.sleep(0.05)
        raise RuntimeError(f"the daemon did not start (exit code {process.poll()})")

    def events(self, name: str) -> int:
        """How many log lines carry event `name`."""
        self.log.flush()
        count = 0
        for line in (self.directory / "daemon.log").read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                count += json.loads(line).get("event") == name
        return count


def state_rows(db_path: Path) -> tuple[list[tuple[str, str, str, str]], int, datetime | None]:
    """Emitted updated versions (id, updatedAt, status, answers) in seq order, the number of
    removal events, and when the last sweep completed (server time)."""
    with contextlib.closing(sqlite3.connect(db_path, timeout=30)) as db:
        rows = db.execute("SELECT event_type, payload FROM outbox_events ORDER BY seq").fetchall()
        swept = db.execute("SELECT max(done_at) FROM poller_sweeps").fetchone()[0]
    versions, removed = [], 0
    for event_type, payload in rows:
        body = json.loads(payload)
        if event_type == "form_submission.removed":
            removed += 1
            continue
        s = body["submission"]
        answers = json.dumps(body["answers"], sort_keys=True)
        versions.append((s["id"], s["updatedAt"], s["status"], answers))
    return versions, removed, parse_timestamp(swept) if swept else None


def soak_seed(seed: int, args: argparse.Namespace, workdir: Path) -> Outcome:
    """One seed, start to check."""
    outcome = Outcome(seed)
    rng = random.Random(seed)
    started = time.monotonic()
    faults = freedoms(seed, max_late_seconds=args.max_late)
    with ServedSandbox(seed=seed, faults=faults) as served:
        practice = served.admin.create_practice(f"soak-{uuid.uuid4().hex[:8]}")
        practice_id, key = practice["id"], practice["keys"][0]["key"]
        patients = served.admin.seed_patients(20, practice_id=practice_id)
        write_config(workdir, served.base_url)
        daemon = Daemon(workdir, key)
        activity = Activity(served.admin, practice_id, patients, seed)
        activity.start()
        try:
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline:
                with daemon.running() as process:
                    daemon.wait_started(process)  # the kill lands in its work, not start-up
                    time.sleep(rng.uniform(0.5, max(0.6, 2 * args.seconds / max(1, args.kills))))
                    if process.poll() is None:
                        process.send_signal(signal.SIGKILL)
                        process.wait()
                        outcome.kills += 1
        finally:
            activity.stop()
        outcome.changes = activity.changes
        # The server's own writes between page requests stop too, so that a last poll can
        # pass the last write; every other freedom stays.
        served.admin.set_faults(faults.model_copy(update={"mutate_during_paging": 0.0}))
        served.admin.publish_pending(practice_id)
        published_at = parse_timestamp(served.admin.final_versions(practice_id)["now"])
        with daemon.running() as process:
            daemon.wait_started(process)
            converge_deadline = time.monotonic() + 120
            while time.monotonic() < converge_deadline:
                time.sleep(1.0)
                _, _, swept = state_rows(workdir / "state.db")
                if swept is not None and swept > published_at:
                    break
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        truth = served.admin.final_versions(practice_id)["data"]
    versions, outcome.removed_events, _ = state_rows(workdir / "state.db")
    emitted = {(sid, at, status) for sid, at, status, _ in versions}
    live = [row for row in truth if not row["deleted"]]
    outcome.final_versions = len(live)
    outcome.deleted = len(truth) - len(live)
    outcome.events = len(versions)
    outcome.lost = [
        row["id"] for row in live if (row["id"], row["updatedAt"], row["status"]) not in emitted
    ]
    outcome.duplicates = sum(n - 1 for n in Counter(versions).values() if n > 1)
    by_id: dict[str, list[str]] = {}
    for sid, at, _, _ in versions:
        by_id.setdefault(sid, []).append(at)
    outcome.out_of_order = sum(ats != sorted(ats) for ats in by_id.values())
    outcome.sweep_found = daemon.events("poller.sweep_found")
    outcome.deferred = daemon.events("poller.detail_deferred")
    daemon.log.close()
    outcome.seconds = round(time.monotonic() - started, 1)
    return outcome


def run(args: argparse.Namespace) -> list[Outcome]:
    """Every seed, each in its own temporary folder."""
    outcomes = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        with tempfile.TemporaryDirectory(prefix=f"submission-soak-{seed}-") as tmp:
            outcome = soak_seed(seed, args, Path(tmp))
        outcomes.append(outcome)
        print(
            f"seed {seed}: {outcome.kills} kills, {outcome.changes} changes, "
            f"{outcome.final_versions} final versions ({outcome.deleted} deleted), "
            f"{outcome.events} events, lost {len(outcome.lost)}, duplicates "
            f"{outcome.duplicates}, out of order {outcome.out_of_order}, found by the sweep "
            f"{outcome.sweep_found}, deferred {outcome.deferred}, removed events "
            f"{outcome.removed_events}, {outcome.seconds} s",
            flush=True,
        )
    return outcomes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=60.0, help="activity per seed")
    parser.add_argument("--kills", type=int, default=12, help="about this many per seed")
    parser.add_argument("--max-late", type=float, default=600.0, help="latest visibility, s")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run every seed, print the figures; 1 when a version was lost, doubled or reordered."""
    outcomes = run(parse_args(argv))
    bad = [o for o in outcomes if o.lost or o.duplicates or o.out_of_order]
    print(
        f"total: {sum(o.final_versions for o in outcomes)} final versions, "
        f"{sum(o.kills for o in outcomes)} kills, lost {sum(len(o.lost) for o in outcomes)}, "
        f"duplicates {sum(o.duplicates for o in outcomes)}, out of order "
        f"{sum(o.out_of_order for o in outcomes)}, found by the sweep "
        f"{sum(o.sweep_found for o in outcomes)}"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
