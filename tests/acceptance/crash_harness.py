"""The crash-consistency harness: the real daemon, killed with SIGKILL, restarted, checked.

One `CrashRig` is one installation in a folder: a CSV patient export, a SQLite state file,
a config for `syncd run` with short intervals (every job cycles in 0.5-1 s), a served
sandbox practice with live activity (`Activity`: submissions created and advanced while the
daemon runs), and a local Standard Webhooks receiver (`WebhookReceiver`) as the outbox sink.
The rig starts the daemon as a subprocess (optionally with `SYNCD_CRASH_AT`), waits for it
to die by SIGKILL or kills it itself, restarts it, waits until it has converged, stops it
with SIGTERM and lists every broken invariant (`safety_violations`, `final_violations`).

Used by `tests/acceptance/test_crash_sweep.py` (every named crash step once) and by
`scripts/crash_soak.py` (100+ kills at random moments). Patient data here is synthetic;
nothing the rig reports carries it (ids and counts only).
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Self

import httpx
from standardwebhooks import Webhook, WebhookVerificationError

from syncd.messages.requests import submit_request
from syncd.sandbox.admin_client import SandboxAdmin
from syncd.sandbox.server import ServedSandbox
from syncd.sandbox.state import send_fingerprint
from syncd.state.db import make_engine, upgrade
from syncd.voxares.contract import FINAL_MESSAGE_STATUSES, parse_timestamp
from tests import config_files
from tests.acceptance.conftest import PROVIDER, clean_env, syncd_command

KILLED: Final = -signal.SIGKILL
SINK: Final = "receiver"
SECRET: Final = "whsec_" + base64.b64encode(b"crash-harness-signing-secret-32b").decode()

# The crash points of the jobs `syncd run` runs here (push, poller, delivery, messages), in
# the order work reaches them, with what a kill there must not break. The HL7 receive and
# apply points are killed in test_hl7_crash.py and housekeeping's in
# test_housekeeping_crash.py; the HL7 file feed's is crashed in-process in
# tests/integration/test_hl7_feed.py. tests/unit/test_crash_points.py fails when a crash
# point under syncd/ is named by no test.
CRASH_STEPS: Final = {
    "push.after_http": "Voxares holds the patient, the mirror does not: the rerun upserts "
    "it again (same id), no duplicate patient",
    "push.after_batch_commit": "a batch is mirrored, the rest is not: the rerun pushes only "
    "what is left",
    "poller.window_saved": "the window is saved, nothing fetched: the restart resumes the "
    "same window, whatever the clock says",
    "poller.after_page": "a page listed, nothing recorded: the window is listed again",
    "poller.after_detail": "details read, not recorded: read again, emitted once",
    "poller.after_outbox_insert": "some versions emitted, the watermark unmoved: the repeat "
    "skips them (version records), emits the rest",
    "poller.before_watermark": "every version emitted, the watermark unmoved: the repeat "
    "emits nothing",
    "poller.after_watermark": "the watermark moved: nothing repeated, nothing skipped",
    "delivery.after_claim": "deliveries leased to a dead worker: released (or expire), "
    "then delivered",
    "delivery.after_http_before_mark": "the receiver has the events, the outbox does not "
    "know: redelivered with the same webhook-id",
    "delivery.after_mark": "delivered and recorded: never sent again",
    "messages.before_mark_sending": "nothing sent, still pending: sent once by the restart",
    "messages.after_mark_sending": "committed sending, not sent: unknown, never resent",
    "messages.after_send": "sent, result not recorded: unknown, never resent",
    "messages.after_record": "sent and recorded: never sent again",
}

FIRST_NAMES: Final = ("Ana", "Ivo", "Lea", "Marko", "Petra", "Luka", "Iva", "Tin", "Ema")
LAST_NAMES: Final = ("Horvat", "Kovač", "Babić", "Marić", "Jurić", "Novak", "Vuković")
# One defect each, so the row is quarantined under a known field.
DEFECTS: Final = (("mobileNumber", "+3859"), ("lastName", ""), ("dateOfBirth", "1990-13-45"))
CSV_COLUMNS: Final = ("id", "first", "last", "mobile", "email", "dob")
FIELD_OF_COLUMN: Final = {
    "first": "firstName",
    "last": "lastName",
    "mobile": "mobileNumber",
    "email": "email",
    "dob": "dateOfBirth",
}
COLUMN_OF_FIELD: Final = {v: k for k, v in FIELD_OF_COLUMN.items()}


# --- the webhook receiver -------------------------------------------------------------------


class _QuietServer(ThreadingHTTPServer):
    """An HTTP server that ignores connections its client dropped (a killed daemon)."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet on a reset or broken connection; report anything else."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class WebhookReceiver:
    """A Standard Webhooks endpoint on a loopback port, in a thread of this process.

    Verifies each request's signature with the shared secret (a bad one is answered 401 and
    counted in `rejected`), records its `webhook-id` (`received` counts repeats: dedupe is
    the receiver's job) and answers 204. A request cut short by a killed sender is only
    counted (`truncated`).
    """

    def __init__(self, secret: str = SECRET) -> None:
        self.secret = secret
        self.received: Counter[str] = Counter()
        self.rejected = 0
        self.truncated = 0
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Where the sink posts."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hooks"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self
        verifier = Webhook(self.secret)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                if len(body) < length:
                    # The sender died mid-request (killed -9): nothing to answer.
                    with receiver._lock:
                        receiver.truncated += 1
                    self.close_connection = True
                    return
                try:
                    verifier.verify(body, dict(self.headers.items()), json_parse=False)
                except WebhookVerificationError:
                    with receiver._lock:
                        receiver.rejected += 1
                    self._answer(401)
                    return
                with receiver._lock:
                    receiver.received[self.headers["webhook-id"]] += 1
                self._answer(204)

            def _answer(self, status: int) -> None:
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler

    def snapshot(self) -> Counter[str]:
        """A copy of the webhook-ids received so far, with their counts."""
        with self._lock:
            return Counter(self.received)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


# --- the patient source ---------------------------------------------------------------------


@dataclass
class SourceRows:
    """The CSV export: rows by providerId, each valid or with one known defect."""

    rows: dict[str, dict[str, str]] = field(default_factory=dict)
    defects: dict[str, str] = field(default_factory=dict)  # providerId -> field at fault
    serial: int = 0

    def add(self, rng: random.Random, *, valid: bool = True) -> str:
        """Append one synthetic row; its providerId."""
        self.serial += 1
        n = self.serial
        provider_id = f"P{n:05d}"
        row = {
            "id": provider_id,
            "first": rng.choice(FIRST_NAMES),
            "last": rng.choice(LAST_NAMES),
            "mobile": f"+38591{n:07d}",
            "email": f"crash.{n}@example.org",
            "dob": f"{1940 + rng.randrange(70)}-{1 + rng.randrange(12):02d}-"
            f"{1 + rng.randrange(28):02d}",
        }
        if not valid:
            field_name, bad = DEFECTS[n % len(DEFECTS)]
            row[COLUMN_OF_FIELD[field_name]] = bad
            self.defects[provider_id] = field_name
        self.rows[provider_id] = row
        return provider_id

    def edit(self, rng: random.Random, keep: set[str]) -> str | None:
        """Change the names of one valid row not in `keep`; its providerId."""
        choices = sorted(set(self.valid()) - keep)
        if not choices:
            return None
        provider_id = rng.choice(choices)
        row = self.rows[provider_id]
        row["first"] = rng.choice([n for n in FIRST_NAMES if n != row["first"]])
        row["last"] = rng.choice(LAST_NAMES)
        return provider_id

    def valid(self) -> dict[str, dict[str, str]]:
        """The rows without a defect, by providerId."""
        return {k: v for k, v in self.rows.items() if k not in self.defects}

    @staticmethod
    def payload(row: dict[str, str]) -> dict[str, str]:
        """A valid row in contract field names (rows are generated already normalised)."""
        return {"providerId": row["id"]} | {FIELD_OF_COLUMN[c]: row[c] for c in FIELD_OF_COLUMN}

    def write(self, path: Path) -> None:
        """Write the export atomically (the daemon may be reading the old one)."""
        lines = [",".join(CSV_COLUMNS)]
        lines += [",".join(row[c] for c in CSV_COLUMNS) for row in self.rows.values()]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp.replace(path)


# --- live activity --------------------------------------------------------------------------


class Activity:
    """Creates and advances form submissions of one practice while the daemon runs.

    A thread, every `period` seconds: a new Pending submission for one of `patient_ids`, or
    an open one moves on (Pending → Opened → Completed with answers, or Rejected).
    """

    def __init__(
        self,
        admin_url: str,
        practice_id: str,
        patient_ids: list[str],
        *,
        seed: int,
        period: float = 0.15,
    ) -> None:
        self.admin = SandboxAdmin(admin_url)
        self.practice_id = practice_id
        self.patient_ids = patient_ids
        self.rng = random.Random(seed)
        self.period = period
        self.open: dict[str, str] = {}  # submission id -> status
        self.changes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def seed(self, count: int) -> None:
        """`count` submissions now, some of them moved on once or twice already."""
        for _ in range(count):
            self.create()
        for submission_id in list(self.open)[::2]:
            self.advance(submission_id)
        for submission_id in list(self.open)[::3]:
            self.advance(submission_id)

    def create(self) -> None:
        """One new Pending submission."""
        patient = self.rng.choice(self.patient_ids)
        (submission_id,) = self.admin.seed_submissions(
            1, practice_id=self.practice_id, patient_ids=[patient]
        )
        self.open[submission_id] = "Pending"
        self.changes += 1

    def advance(self, submission_id: str) -> None:
        """Move one open submission on."""
        status = self.open.pop(submission_id)
        if status == "Pending":
            self.admin.transition(submission_id, "Opened")
            self.open[submission_id] = "Opened"
        elif self.rng.random() < 0.75:
            answer = {"q1": f"answer {self.rng.randrange(1000)}"}
            self.admin.transition(submission_id, "Completed", data=answer)
        else:
            self.admin.transition(submission_id, "Rejected")
        self.changes += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            if self.open and self.rng.random() < 0.6:
                self.advance(self.rng.choice(sorted(self.open)))
            else:
                self.create()

    def start(self) -> None:
        """Start the thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for its last change."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def close(self) -> None:
        """Stop, and close the admin client."""
        self.stop()
        self.admin.close()


# --- the installation -----------------------------------------------------------------------


def _config_text(directory: Path, base_url: str, receiver_url: str) -> str:
    installation = config_files.installation(
        base_url=base_url,
        directory=directory,
        client={
            **config_files.FAST_CLIENT,
            # No fault is injected: a read timeout here would only be a busy machine, and
            # would turn an SMS `unknown` that the invariants expect `sent`.
            "read_timeout": 30.0,
        },
    )
    patients = config_files.csv_patients(
        {
            "interval_seconds": 1.0,
            "jitter_seconds": 0,
            "freshness_seconds": 60.0,
            "default_region": "HR",
            "batch_size": 10,
        },
        name="ehr-export",
        path=directory / "patients.csv",
        columns=config_files.SHORT_COLUMNS,
    )
    return config_files.render(
        {
            **installation,
            **patients,
            "submissions": {
                "interval_seconds": 1.0,
                "overlap_seconds": 2.0,
                "settle_seconds": 0,
                "page_size": 10,
                "max_window_items": 2000,
                "detail_concurrency": 4,
            },
            "outbox": {"deliver_interval_seconds": 0.5, "batch_size": 10},
            f"outbox.sinks.{SINK}": {
                "type": "webhook",
                "url": receiver_url,
                "secret": SECRET,
                "connect_timeout": 2.0,
                "read_timeout": 5.0,
            },
            "messages": {"enabled": True, "interval_seconds": 0.5, "status_interval_seconds": 1.0},
        }
    )


@dataclass(frozen=True)
class SmsRequest:
    """An SMS request the rig made: its patient and its sandbox fingerprint."""

    key: str
    provider_id: str
    fingerprint: str


@dataclass
class StateSnapshot:
    """What the state file holds at one moment (one read transaction)."""

    integrity: list[tuple[Any, ...]]
    mirror: dict[str, tuple[str | None, dict[str, Any], str]]  # id -> (voxares id, payload, state)
    quarantine: dict[str, str | None]  # row key -> field
    versions: list[tuple[str, str]]  # (submission id, updatedAt) per form_submission event
    event_ids: set[str]
    deliveries: Counter[str]  # state -> count, for the receiver sink
    watermark: datetime | None
    sms: dict[str, tuple[str, str | None]]  # key -> (state, delivery status)
    last_push: tuple[str, dict[str, int], datetime] | None  # outcome, counts, started
    job_locks: int


class CrashRig:
    """One installation (see the module docstring) against a practice of a served sandbox."""

    def __init__(
        self,
        directory: Path,
        sandbox: ServedSandbox,
        practice_id: str,
        key: str,
        receiver: WebhookReceiver,
        *,
        seed: int = 1,
    ) -> None:
        self.dir = directory
        self.sandbox = sandbox
        self.practice_id = practice_id
        self.key = key
        self.receiver = receiver
        self.rng = random.Random(seed)
        self.seed = seed
        self.source = SourceRows()
        self.sms: dict[str, SmsRequest] = {}
        self.targets: dict[str, str] = {}  # providerId -> Voxares id, seeded in the sandbox
        self.activity: Activity | None = None
        self.edited_at = datetime.now(UTC)
        self.ever_sending: set[str] = set()  # requests a kill left `sending`
        self._log: IO[str] | None = None

    # -- paths and set-up

    @property
    def config(self) -> Path:
        """The config file."""
        return self.dir / "config.toml"

    @property
    def state_db(self) -> Path:
        """The SQLite state file."""
        return self.dir / "state.db"

    @property
    def export(self) -> Path:
        """The CSV export."""
        return self.dir / "patients.csv"

    def prepare(
        self, *, patients: int = 60, invalid_every: int = 10, submissions: int = 40, sms: int = 5
    ) -> None:
        """Write export and config, migrate the state file, seed the sandbox practice (SMS
        and submission targets: the first rows of the export, as the EHR has them), seed
        submissions, and record `sms` pending SMS requests."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for n in range(1, patients + 1):
            self.source.add(self.rng, valid=n % invalid_every != 0)
        self.source.write(self.export)
        self.config.write_text(
            _config_text(self.dir, self.sandbox.base_url, self.receiver.url), encoding="utf-8"
        )
        upgrade(f"sqlite:///{self.state_db}")
        target_ids = list(self.source.valid())[:10]
        bodies = [
            {**SourceRows.payload(self.source.rows[t]), "provider": PROVIDER} for t in target_ids
        ]
        voxares_ids = self.sandbox.admin.seed_patients(
            len(bodies), practice_id=self.practice_id, patients=bodies
        )
        self.targets = dict(zip(target_ids, voxares_ids, strict=True))
        self.activity = Activity(
            self.sandbox.admin_url, self.practice_id, voxares_ids, seed=self.seed
        )
        self.activity.seed(submissions)
        self.add_sms(sms)

    def add_sms(self, count: int, *, via_cli: bool = False) -> list[str]:
        """`count` new SMS requests (inline text, one fingerprint each); their keys."""
        engine = make_engine(f"sqlite:///{self.state_db}")
        keys = []
        try:
            for _ in range(count):
                key = f"sms-{len(self.sms) + 1:04d}"
                provider_id = self.rng.choice(sorted(self.targets))
                content = f"Reminder {key}: your appointment is tomorrow."
                if via_cli:
                    self._syncd(
                        "messages", "send", "--provider-id", provider_id, "--content", content,
                        "--key", key,
                    )  # fmt: skip
                else:
                    submit_request(
                        engine,
                        key=key,
                        provider=PROVIDER,
                        provider_id=provider_id,
                        content=content,
                        origin="crash-harness",
                    )
                fingerprint = send_fingerprint(
                    self.practice_id, PROVIDER, provider_id, f"content:{content}"
                )
                self.sms[key] = SmsRequest(key, provider_id, fingerprint)
                keys.append(key)
        finally:
            engine.dispose()
        return keys

    def edit_source(self, *, edits: int = 2, new_valid: int = 1, new_invalid: int = 1) -> None:
        """Change some rows' names (never an SMS target's), add good and bad rows."""
        for _ in range(edits):
            self.source.edit(self.rng, keep=set(self.targets))
        for _ in range(new_valid):
            self.source.add(self.rng)
        for _ in range(new_invalid):
            self.source.add(self.rng, valid=False)
        self.source.write(self.export)
        self.edited_at = datetime.now(UTC)

    def _syncd(self, *args: str) -> None:
        result = subprocess.run(
            syncd_command(*args, "--config", str(self.config)),
            cwd=self.dir,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"syncd {args[0]} {args[1]} exited {result.returncode}")

    # -- the daemon

    def env(self, **extra: str) -> dict[str, str]:
        """The daemon's environment: no stray SYNCD_*, the key, plus `extra`."""
        return clean_env(SYNCD_VOXARES__API_KEY=self.key, **extra)

    def start(self, crash_at: str | None = None) -> subprocess.Popen[bytes]:
        """Start `syncd run` (with `SYNCD_CRASH_AT=crash_at` when given); logs to daemon.log."""
        if self._log is None:
            self._log = (self.dir / "daemon.log").open("a", encoding="utf-8")
        extra = {} if crash_at is None else {"SYNCD_CRASH_AT": crash_at}
        return subprocess.Popen(
            syncd_command("run", "--config", str(self.config)),
            cwd=self.dir,
            env=self.env(**extra),
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )

    def log_size(self) -> int:
        """The daemon log's size now (where the next start's lines begin)."""
        path = self.dir / "daemon.log"
        return path.stat().st_size if path.exists() else 0

    def wait_started(self, daemon: subprocess.Popen[bytes], offset: int, timeout: float) -> bool:
        """Wait until the daemon logged `daemon.started` past `offset` (its jobs are
        scheduled); False if it died or `timeout` ran out first."""
        deadline = time.monotonic() + timeout
        path = self.dir / "daemon.log"
        while time.monotonic() < deadline and daemon.poll() is None:
            with path.open("rb") as log:
                log.seek(offset)
                if b'"daemon.started"' in log.read():
                    return True
            time.sleep(0.05)
        return False

    def wait_exit(self, daemon: subprocess.Popen[bytes], timeout: float) -> int | None:
        """The daemon's exit code, or None if it still runs after `timeout` (then killed)."""
        try:
            return daemon.wait(timeout)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
            return None

    def kill(self, daemon: subprocess.Popen[bytes]) -> int:
        """SIGKILL the daemon now; its exit code."""
        daemon.send_signal(signal.SIGKILL)
        return daemon.wait(10)

    def stop(self, daemon: subprocess.Popen[bytes], timeout: float = 60.0) -> int | None:
        """SIGTERM, and wait for the graceful stop; the exit code (None: had to be killed)."""
        daemon.send_signal(signal.SIGTERM)
        return self.wait_exit(daemon, timeout)

    def after_kill(self) -> None:
        """Note the requests a kill left `sending`: they must end `unknown`."""
        snapshot = self.read_state()
        self.ever_sending |= {k for k, (state, _) in snapshot.sms.items() if state == "sending"}

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the daemon's log (JSON lines: ids and counts only)."""
        path = self.dir / "daemon.log"
        return path.read_text(encoding="utf-8")[-chars:] if path.exists() else ""

    # -- observation

    def read_state(self) -> StateSnapshot:
        """The state file, read in one transaction (consistent while the daemon writes)."""
        with contextlib.closing(sqlite3.connect(self.state_db, timeout=30)) as db:
            db.execute("BEGIN")
            integrity = db.execute("PRAGMA integrity_check").fetchall()
            mirror = {
                pid: (vid, json.loads(payload), state)
                for pid, vid, payload, state in db.execute(
                    "SELECT provider_id, voxares_patient_id, payload, state FROM patient_mirror"
                )
            }
            quarantine = dict(db.execute("SELECT row_key, field FROM quarantine").fetchall())
            events = db.execute("SELECT event_id, event_type, payload FROM outbox_events")
            versions, event_ids = [], set()
            for event_id, event_type, payload in events:
                event_ids.add(event_id)
                if event_type == "form_submission.updated":
                    submission = json.loads(payload)["submission"]
                    versions.append((submission["id"], submission["updatedAt"]))
            deliveries = Counter(
                dict(
                    db.execute(
                        "SELECT state, count(*) FROM outbox_deliveries WHERE sink = ?"
                        " GROUP BY state",
                        (SINK,),
                    ).fetchall()
                )
            )
            (watermark,) = db.execute("SELECT max(watermark) FROM poller_state").fetchone()
            sms = {
                key: (state, status)
                for key, state, status in db.execute(
                    "SELECT key, state, delivery_status FROM message_requests"
                )
            }
            push = db.execute(
                "SELECT outcome, counts, started_at FROM job_runs WHERE job = 'push_patients'"
                " AND outcome != 'running' ORDER BY id DESC LIMIT 1"
            ).fetchone()
            (locks,) = db.execute("SELECT count(*) FROM job_locks").fetchone()
            db.execute("COMMIT")
        return StateSnapshot(
            integrity=integrity,
            mirror=mirror,
            quarantine=quarantine,
            versions=versions,
            event_ids=event_ids,
            deliveries=deliveries,
            watermark=_utc(watermark),
            sms=sms,
            last_push=None
            if push is None
            else (push[0], json.loads(push[1] or "{}"), _utc(push[2]) or datetime.min),
            job_locks=locks,
        )

    def sandbox_versions(self) -> dict[str, str]:
        """Each submission's latest version (updatedAt) per the sandbox's own history."""
        latest: dict[str, str] = {}
        for version in self.sandbox.admin.submission_versions(self.practice_id):
            sid, at = version["id"], version["updatedAt"]
            if parse_timestamp(at) >= parse_timestamp(latest.get(sid, at)):
                latest[sid] = at
        return latest

    def sends(self) -> dict[str, int]:
        """How many sends the sandbox accepted, per SMS fingerprint (this practice)."""
        stats = self.sandbox.admin.stats(self.practice_id)
        return dict(stats.get("sendsPerFingerprint", {}))

    def pending_work(self) -> list[str]:
        """What the daemon has still to do (empty once converged)."""
        state = self.read_state()
        todo = []
        push = state.last_push
        if push is None or push[0] != "ok" or push[2] < self.edited_at:
            todo.append("push: no complete run since the last edit")
        elif any(push[1].get(k, 0) for k in ("created", "updated", "failed")):
            todo.append("push: the last run still made calls")
        latest = self.sandbox_versions()
        newest = max((parse_timestamp(at) for at in latest.values()), default=None)
        if newest is not None and (state.watermark is None or state.watermark < newest):
            todo.append("poll: the watermark is behind the newest version")
        delivered = state.deliveries.get("delivered", 0)
        if delivered != len(state.event_ids) or sum(state.deliveries.values()) != delivered:
            todo.append(f"deliver: {len(state.event_ids) - delivered} events not delivered")
        unsettled = [
            k
            for k, (s, status) in state.sms.items()
            if s in {"pending", "sending"} or (s == "sent" and status not in FINAL_MESSAGE_STATUSES)
        ]
        if unsettled:
            todo.append(f"sms: {len(unsettled)} requests not settled")
        return todo

    def wait_converged(self, timeout: float) -> list[str]:
        """Poll `pending_work` until empty; what was left when `timeout` ran out."""
        deadline = time.monotonic() + timeout
        todo = self.pending_work()
        while todo and time.monotonic() < deadline:
            time.sleep(0.25)
            todo = self.pending_work()
        return todo

    # -- invariants

    def safety_violations(self, state: StateSnapshot | None = None) -> list[str]:
        """What must hold at every moment, converged or not (check with the daemon dead)."""
        received = self.receiver.snapshot()  # before the state: later events may follow
        state = state or self.read_state()
        problems = []
        if state.integrity != [("ok",)]:
            problems.append("integrity_check is not ok")
        twice = [pair for pair, n in Counter(state.versions).items() if n > 1]
        if twice:
            problems.append(f"{len(twice)} submission versions emitted twice")
        unknown_ids = set(received) - state.event_ids
        if unknown_ids:
            problems.append(f"{len(unknown_ids)} webhook-ids received that the outbox lacks")
        if self.receiver.rejected:
            problems.append(f"{self.receiver.rejected} webhooks with a bad signature")
        sends = self.sends()
        doubled = [fp for fp, n in sends.items() if n > 1]
        if doubled:
            problems.append(f"{len(doubled)} SMS sent twice")
        for key, request in self.sms.items():
            sms_state = state.sms.get(key, ("missing", None))[0]
            accepted = sends.get(request.fingerprint, 0)
            if sms_state in {"sent"} and accepted != 1:
                problems.append(f"SMS {key} is sent but was accepted {accepted} times")
            if sms_state in {"pending", "failed", "missing"} and accepted:
                problems.append(f"SMS {key} is {sms_state} but was accepted {accepted} times")
            if key in self.ever_sending and sms_state not in {"sending", "unknown"}:
                problems.append(f"SMS {key} was left sending by a kill but is {sms_state}")
        valid = self.source.valid()
        strays = set(state.mirror) - set(valid)
        if strays:
            problems.append(f"{len(strays)} mirror rows that are not valid source rows")
        return problems

    def final_violations(self) -> list[str]:
        """What must hold once converged and stopped: the safety invariants, plus nothing
        lost (mirror and sandbox equal the source, every latest version emitted once, every
        event received, no SMS left pending)."""
        state = self.read_state()
        problems = self.safety_violations(state)
        valid = self.source.valid()
        expected = {pid: SourceRows.payload(row) for pid, row in valid.items()}
        mirrored = {
            pid: {k: payload.get(k) for k in expected[pid]}
            for pid, (_, payload, s) in state.mirror.items()
            if pid in expected and s == "active"
        }
        wrong = [pid for pid in expected if mirrored.get(pid) != expected[pid]]
        if wrong:
            problems.append(f"{len(wrong)} valid rows not mirrored as they are in the source")
        problems += self._sandbox_violations(state, expected)
        quarantined = {k: f for k, f in state.quarantine.items() if k in self.source.defects}
        if quarantined != self.source.defects:
            problems.append("the quarantine differs from the rows with a defect")
        latest = self.sandbox_versions()
        emitted = set(state.versions)
        missing = [sid for sid, at in latest.items() if (sid, at) not in emitted]
        if missing:
            problems.append(f"{len(missing)} latest submission versions never emitted")
        if {sid for sid, _ in state.versions} != set(latest):
            problems.append("outbox submissions differ from the sandbox's")
        received = self.receiver.snapshot()
        if set(received) != state.event_ids:
            lost = len(state.event_ids - set(received))
            problems.append(f"{lost} outbox events never reached the receiver")
        open_sms = [k for k, (s, _) in state.sms.items() if s in {"pending", "sending"}]
        if open_sms:
            problems.append(f"{len(open_sms)} SMS requests still pending or sending")
        if state.job_locks:
            problems.append(f"{state.job_locks} job locks left after a graceful stop")
        return problems

    def _sandbox_violations(
        self, state: StateSnapshot, expected: dict[str, dict[str, str]]
    ) -> list[str]:
        """The sandbox holds exactly the valid rows, under the mirror's Voxares ids."""
        problems = []
        patients = self.sandbox.admin.stats(self.practice_id, fingerprints=False)["patients"]
        if patients != len(expected):
            problems.append(f"the sandbox holds {patients} patients, the source {len(expected)}")
        headers = {"Authorization": f"Bearer {self.key}"}
        wrong = 0
        with httpx.Client(base_url=self.sandbox.base_url, headers=headers, timeout=30) as api:
            for pid, payload in expected.items():
                response = api.get(f"/patients/{PROVIDER}/{pid}")
                if response.status_code != 200:
                    wrong += 1
                    continue
                held = response.json()
                fields = {k: held.get(k) for k in payload if k != "providerId"}
                fields["dateOfBirth"] = str(fields["dateOfBirth"])[:10]
                mirror_id = state.mirror.get(pid, (None, {}, ""))[0]
                if held["id"] != mirror_id or any(payload[k] != v for k, v in fields.items()):
                    wrong += 1
        if wrong:
            problems.append(f"{wrong} valid rows not held by the sandbox as in the source")
        return problems

    def summary(self) -> dict[str, Any]:
        """Counts for a report: events, receptions, SMS by state (no patient data)."""
        state = self.read_state()
        received = self.receiver.snapshot()
        sends = self.sends()
        return {
            "patients": len(self.source.valid()),
            "quarantined": len(state.quarantine),
            "submission_versions": len(state.versions),
            "events": len(state.event_ids),
            "webhooks_received": sum(received.values()),
            "webhooks_distinct": len(received),
            "webhooks_redelivered": sum(n - 1 for n in received.values()),
            "events_lost": len(state.event_ids - set(received)),
            "versions_duplicated": sum(n - 1 for n in Counter(state.versions).values()),
            "sms_by_state": dict(Counter(s for s, _ in state.sms.values())),
            "sms_sent_twice": sum(1 for n in sends.values() if n > 1),
            "sms_unknown_accepted": sum(
                1
                for key, (s, _) in state.sms.items()
                if s == "unknown" and sends.get(self.sms[key].fingerprint, 0)
            ),
            "integrity": state.integrity[0][0] if state.integrity else "?",
        }

    def close(self) -> None:
        """Stop the activity, close the log."""
        if self.activity is not None:
            self.activity.close()
        if self._log is not None:
            self._log.close()
            self._log = None


def _utc(value: str | None) -> datetime | None:
    """A timestamp as SQLite returns it (naive UTC text) as an aware datetime."""
    if value is None:
        return None
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@contextlib.contextmanager
def running(rig: CrashRig, crash_at: str | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A started daemon, killed on the way out if still running (never left behind)."""
    daemon = rig.start(crash_at)
    try:
        yield daemon
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
