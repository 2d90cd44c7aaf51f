"""Fault soak: the real jobs against a misbehaving Voxares, compared with a fault-free run.

Two runs with the same seed and the same inputs (N patients in a CSV, M answered form
submissions, K SMS requests), each against its own served sandbox (a real socket, so the
client's read timeout is what ends a hung request):

- fault-free: no faults;
- faulted: 10% 5xx, 5% 429, 2% hung requests (hang longer than the read timeout), 1%
  malformed or truncated 2xx bodies, shuffled lists, a server clock offset, and updates
  between the pages of a form-submissions listing.

Each run composes the daemon from a TOML file (`syncd.compose`, as `syncd run` does) and
runs push → poll → deliver (NDJSON file sink) → send through `JobRunner.run_once`, round
after round, until converged: every CSV row pushed, the poller's watermark past the last
change the server made, every outbox event delivered, and no SMS request left pending.

`compare(fault_free, faulted)` lists every way the faulted run's converged state differs
from what it must be (empty = the guarantees held); `extra_calls` says what the faults cost
in API requests. Run as a script for a longer soak that prints the figures:

    .venv/bin/python scripts/fault_soak.py --patients 500 --submissions 300 --sms 200

Patient data in this file is synthetic. Nothing it prints carries it: ids and counts only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from syncd import metrics
from syncd.compose import Runtime, build_jobs, runtime
from syncd.config import load_settings
from syncd.jobs import JobRunner, RunResult
from syncd.messages.requests import submit_request
from syncd.sandbox.faults import FaultConfig
from syncd.sandbox.seed import DEMO_API_KEY
from syncd.sandbox.server import ServedSandbox
from syncd.sandbox.state import send_fingerprint
from syncd.state.db import upgrade
from syncd.state.models import (
    MessageRequest,
    OutboxDelivery,
    OutboxEvent,
    PatientMirror,
    PollerState,
)
from syncd.voxares.contract import parse_timestamp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the config files the tests write

from tests import config_files  # noqa: E402 (after the path set-up)

SINK = "files"
# Where the seeded submissions' history lies: in the past, several sharing each timestamp
# (inclusive window bounds put many items on one boundary).
HISTORY_START = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
SUBMISSIONS_PER_INSTANT = 5
JOB_ORDER = ("push_patients", "poll_submissions", "deliver_outbox", "send_messages")


def soak_faults(seed: int, *, hang_seconds: float, retry_after_seconds: int) -> FaultConfig:
    """The fault mix of the soak (rates are per contract request)."""
    return FaultConfig(
        seed=seed,
        error_rates={500: 0.04, 502: 0.02, 503: 0.02, 504: 0.02, 429: 0.05},
        hang_rate=0.02,
        hang_seconds=hang_seconds,
        # Processed, then no answer in time: the hardest case for an SMS send.
        hang_phase="after",
        malformed_json_rate=0.005,
        truncated_body_rate=0.005,
        retry_after_seconds=retry_after_seconds,
        shuffle_lists=True,
        clock_offset_seconds=47.0,
        mutate_during_paging=0.3,
        mutate_count=2,
    )


@dataclass(frozen=True)
class SoakSpec:
    """The size and pace of one soak."""

    patients: int = 40
    submissions: int = 30
    sms: int = 20
    seed: int = 7
    read_timeout: float = 0.3  # the faulted run's: what ends a hung request
    hang_seconds: float = 1.0
    # The fault-free run has no hang to end: its timeout only has to outwait a slow machine,
    # or a busy CI box would inject read timeouts (unknown SMS) into the baseline.
    fault_free_read_timeout: float = 30.0
    retry_after_seconds: int = 0
    settle_seconds: float = 1.0
    page_size: int = 10
    deadline_seconds: float = 120.0


@dataclass
class RunOutcome:
    """The converged state of one run, as the sandbox and the state database show it."""

    faulted: bool
    rounds: int
    seconds: float
    converged: bool
    job_outcomes: Counter[str]
    patients: list[tuple[Any, ...]]  # what the sandbox holds, as sorted field tuples
    mirror: dict[str, tuple[str, str]]  # providerId -> (payload hash, payload)
    seeded_ids: list[str]
    latest_versions: dict[str, str]  # submission id -> latest updatedAt (sandbox history)
    outbox_versions: list[tuple[str, str]]  # (submission id, updatedAt) per outbox event
    outbox_event_ids: set[str]
    delivered_lines: Counter[str]  # event id -> lines in the NDJSON files
    delivered_versions: set[tuple[str, str]]
    sms_by_key: dict[str, str]  # request key -> state
    sms_fingerprints: dict[str, str]  # request key -> sandbox fingerprint
    sends_per_fingerprint: dict[str, int]
    requests: dict[str, int]  # "METHOD /template status" -> count
    transport_failures: int = 0  # attempts that got no answer (read timeouts), client side
    unfinished: list[str] = field(default_factory=list)

    @property
    def sms_states(self) -> Counter[str]:
        """How many SMS requests ended in each state."""
        return Counter(self.sms_by_key.values())

    def accepted(self, key: str) -> int:
        """How many times the sandbox accepted the SMS of request `key`."""
        return self.sends_per_fingerprint.get(self.sms_fingerprints[key], 0)


def patient_rows(count: int, seed: int) -> list[dict[str, str]]:
    """`count` synthetic, valid, distinct patients (deterministic in `seed`)."""
    rng = random.Random(seed)
    first = ["Ana", "Ivo", "Lea", "Marko", "Petra", "Luka", "Iva", "Tin", "Ema", "Niko"]
    last = ["Horvat", "Kovač", "Babić", "Marić", "Jurić", "Novak", "Knežević", "Vuković"]
    rows = []
    for i in range(count):
        rows.append(
            {
                "id": f"S{i:05d}",
                "first": rng.choice(first),
                "last": rng.choice(last),
                "mobile": f"+38591{i:07d}",
                "email": f"soak.{i}@example.org",
                "dob": f"{1940 + rng.randrange(80)}-{1 + rng.randrange(12):02d}-"
                f"{1 + rng.randrange(28):02d}",
            }
        )
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    """The EHR export the push job reads."""
    columns = ("id", "first", "last", "mobile", "email", "dob")
    lines = [",".join(columns)] + [",".join(row[c] for c in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_config(directory: Path, base_url: str, spec: SoakSpec, *, faulted: bool) -> Path:
    """The daemon's TOML for one run: low read timeout (faulted), fast retries, a file sink."""
    read_timeout = spec.read_timeout if faulted else spec.fault_free_read_timeout
    client = {
        "provider": "soak-ehr",
        "requests_per_second": 500.0,
        "max_concurrency": 8,
        "connect_timeout": 2.0,
        "read_timeout": read_timeout,
        "write_timeout": 2.0,
        "pool_timeout": 5.0,
        "retry_attempts": 6,
        "retry_initial_seconds": 0.02,
        "retry_max_backoff_seconds": 0.3,
    }
    return config_files.write(
        directory / "config.toml",
        {
            **config_files.installation(
                base_url=base_url, directory=directory, client=client, json_logs=False
            ),
            **config_files.csv_patients(
                {"interval_seconds": 60.0, "batch_size": 25},
                name="soak",
                path=directory / "patients.csv",
                columns=config_files.SHORT_COLUMNS,
            ),
            "submissions": {
                "interval_seconds": 5.0,
                "overlap_seconds": 2.0,
                "settle_seconds": spec.settle_seconds,
                "page_size": spec.page_size,
                "max_window_items": 200,
                "detail_concurrency": 8,
            },
            "outbox": {"batch_size": 50},
            f"outbox.sinks.{SINK}": {"type": "file", "directory": f"{directory}/events"},
            "messages": {"enabled": True},
        },
    )


def _prepare(workdir: Path, spec: SoakSpec) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    write_csv(workdir / "patients.csv", patient_rows(spec.patients, spec.seed))


async def run_once(spec: SoakSpec, *, faulted: bool, workdir: Path) -> RunOutcome:
    """One complete run (see the module docstring) in `workdir`."""
    _prepare(workdir, spec)
    with ServedSandbox(seed=spec.seed) as served:
        settings = load_settings(
            write_config(workdir, served.base_url, spec, faulted=faulted),
            env={"SYNCD_VOXARES__API_KEY": DEMO_API_KEY},
        )
        upgrade(settings.database.url)
        if faulted:
            served.admin.set_faults(
                soak_faults(
                    spec.seed,
                    hang_seconds=spec.hang_seconds,
                    retry_after_seconds=spec.retry_after_seconds,
                )
            )
        async with runtime(settings) as rt:
            return await _drive(spec, served, rt, faulted=faulted, workdir=workdir)


async def _drive(
    spec: SoakSpec, served: ServedSandbox, rt: Runtime, *, faulted: bool, workdir: Path
) -> RunOutcome:
    started = time.monotonic()
    deadline = started + spec.deadline_seconds
    no_answer_before = _attempts_without_answer()
    runner = JobRunner(rt.engine)
    jobs = build_jobs(rt)
    outcomes: Counter[str] = Counter()
    rounds = 0

    # 1. Patients: until a run pushed every row (malformed answers fail single rows).
    while True:
        rounds += 1
        result = await runner.run_once(jobs["push_patients"])
        outcomes[f"push_patients:{result.outcome}"] += 1
        if _push_done(result, rt.engine, spec) or time.monotonic() > deadline:
            break
    # 2. The server's side: answered submissions for our patients; our SMS requests.
    seeded = _seed_submissions(served, rt.engine, spec)
    keys = _submit_sms(rt, spec)
    # 3. Poll, deliver, send, round after round, until nothing is left to do.
    converged = False
    unfinished: list[str] = []
    while time.monotonic() < deadline:
        rounds += 1
        for name in JOB_ORDER[1:]:
            result = await runner.run_once(jobs[name])
            outcomes[f"{name}:{result.outcome}"] += 1
        unfinished = _unfinished(served, rt.engine)
        if not unfinished:
            converged = True
            break
        await asyncio.sleep(min(0.5, spec.settle_seconds / 2))
    stats = served.admin.stats()  # before anything else calls the API
    practice = served.admin.practices()["demoPracticeId"]
    served.admin.set_faults(None)
    return RunOutcome(
        faulted=faulted,
        rounds=rounds,
        seconds=time.monotonic() - started,
        converged=converged,
        job_outcomes=outcomes,
        patients=await _sandbox_patients(rt),
        mirror=_mirror(rt.engine),
        seeded_ids=seeded,
        latest_versions=_latest_versions(served),
        outbox_versions=_outbox_versions(rt.engine),
        outbox_event_ids=_outbox_event_ids(rt.engine),
        delivered_lines=_delivered_lines(workdir / "events"),
        delivered_versions=_delivered_versions(workdir / "events"),
        sms_by_key=_sms_by_key(rt.engine),
        sms_fingerprints={
            key: send_fingerprint(practice, rt.provider, provider_id, f"content:{content}")
            for key, (provider_id, content) in keys.items()
        },
        sends_per_fingerprint=dict(stats.get("sendsPerFingerprint", {})),
        requests=dict(stats["requests"]),
        transport_failures=_attempts_without_answer() - no_answer_before,
        unfinished=unfinished,
    )


def _attempts_without_answer() -> int:
    """The client's count of attempts that ended without an HTTP answer (status "0")."""
    total = 0.0
    for metric in metrics.API_CALLS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels.get("status") == "0":
                total += sample.value
    return int(total)


def _push_done(result: RunResult, engine: Engine, spec: SoakSpec) -> bool:
    if result.outcome != "ok" or result.counts.get("failed", 0):
        return False
    with engine.connect() as conn:
        mirrored = conn.execute(select(func.count()).select_from(PatientMirror)).scalar_one()
    return int(mirrored) == spec.patients


def _seed_submissions(served: ServedSandbox, engine: Engine, spec: SoakSpec) -> list[str]:
    """M answered (Completed or Rejected) submissions, for our patients in providerId order.

    Answered ones only: the paging disturbance moves open submissions, which would make the
    seeded history differ between the runs; it still inserts new ones in the faulted run.
    """
    with engine.connect() as conn:
        patient_ids = [
            row.voxares_patient_id
            for row in conn.execute(
                select(PatientMirror.voxares_patient_id).order_by(PatientMirror.provider_id)
            )
        ]
    ids: list[str] = []
    for i in range(spec.submissions):
        at = HISTORY_START + timedelta(seconds=i // SUBMISSIONS_PER_INSTANT)
        status = "Rejected" if i % 4 == 3 else "Completed"
        ids += served.admin.seed_submissions(
            1, status=status, at=at, patient_ids=[patient_ids[i % len(patient_ids)]]
        )
    return ids


def _submit_sms(rt: Runtime, spec: SoakSpec) -> dict[str, tuple[str, str]]:
    """K inline SMS requests, one per patient; key -> (providerId, content)."""
    keys: dict[str, tuple[str, str]] = {}
    for i in range(spec.sms):
        provider_id = f"S{i % spec.patients:05d}"
        content = f"Soak reminder {i}: your appointment is tomorrow."
        key = f"soak-{i}"
        submit_request(
            rt.engine,
            key=key,
            provider=rt.provider,
            provider_id=provider_id,
            content=content,
            origin="soak",
        )
        keys[key] = (provider_id, content)
    return keys


def _unfinished(served: ServedSandbox, engine: Engine) -> list[str]:
    """What is still to do (empty when converged)."""
    todo: list[str] = []
    versions = served.admin.submission_versions()
    newest = max((parse_timestamp(v["updatedAt"]) for v in versions), default=None)
    with engine.connect() as conn:
        watermark = conn.execute(select(PollerState.watermark)).scalar_one_or_none()
        events = conn.execute(select(func.count()).select_from(OutboxEvent)).scalar_one()
        delivered = conn.execute(
            select(func.count())
            .select_from(OutboxDelivery)
            .where(OutboxDelivery.sink == SINK, OutboxDelivery.state == "delivered")
        ).scalar_one()
        open_sms = conn.execute(
            select(func.count())
            .select_from(MessageRequest)
            .where(MessageRequest.state.in_(("pending", "sending")))
        ).scalar_one()
    if newest is not None and (watermark is None or watermark < newest):
        todo.append("poll: the watermark is behind the server's last change")
    if delivered != events:
        todo.append(f"deliver: {events - delivered} of {events} events not delivered")
    if open_sms:
        todo.append(f"send: {open_sms} SMS requests pending")
    return todo


async def _sandbox_patients(rt: Runtime) -> list[tuple[Any, ...]]:
    """Every patient the sandbox holds, as comparable tuples (UUIDs and times left out)."""
    held = []
    async for page in rt.client.iter_pages(rt.client.list_patients):
        for p in page.data:
            held.append((p.first_name, p.last_name, p.mobile_number, p.email, p.date_of_birth))
    return sorted(held, key=repr)


def _mirror(engine: Engine) -> dict[str, tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(PatientMirror.provider_id, PatientMirror.payload_hash, PatientMirror.payload)
        ).all()
    return {row[0]: (row[1], row[2]) for row in rows}


def _latest_versions(served: ServedSandbox) -> dict[str, str]:
    latest: dict[str, str] = {}
    for version in served.admin.submission_versions():
        latest[version["id"]] = max(latest.get(version["id"], ""), version["updatedAt"])
    return latest


def _outbox_versions(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        payloads = conn.execute(
            select(OutboxEvent.payload).where(OutboxEvent.event_type == "form_submission.updated")
        ).scalars()
        return [_version_of(json.loads(p)) for p in payloads]


def _outbox_event_ids(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(OutboxEvent.event_id)).scalars())


def _ndjson_lines(directory: Path) -> Iterator[dict[str, Any]]:
    for path in sorted(directory.glob("*.ndjson")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                yield json.loads(line)


def _delivered_lines(directory: Path) -> Counter[str]:
    return Counter(str(event["id"]) for event in _ndjson_lines(directory))


def _delivered_versions(directory: Path) -> set[tuple[str, str]]:
    return {
        _version_of(event["data"])
        for event in _ndjson_lines(directory)
        if event.get("type") == "form_submission.updated"
    }


def _version_of(payload: dict[str, Any]) -> tuple[str, str]:
    submission = payload["submission"]
    return str(submission["id"]), str(submission["updatedAt"])


def _sms_by_key(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return {
            row.key: row.state
            for row in conn.execute(select(MessageRequest.key, MessageRequest.state))
        }


# --- judging ----------------------------------------------------------------------------


def invariants(run: RunOutcome, spec: SoakSpec) -> list[str]:
    """What must hold in any converged run, faulted or not (empty: all held)."""
    problems: list[str] = []
    if not run.converged:
        problems.append(f"did not converge: {run.unfinished}")
    if len(run.patients) != spec.patients or len(run.mirror) != spec.patients:
        problems.append(
            f"patients: sandbox holds {len(run.patients)}, mirror {len(run.mirror)}, "
            f"expected {spec.patients}"
        )
    emitted = Counter(run.outbox_versions)
    twice = [v for v, n in emitted.items() if n > 1]
    if twice:
        problems.append(f"{len(twice)} submission versions are in the outbox more than once")
    missing = set(run.latest_versions.items()) - set(emitted)
    if missing:
        problems.append(f"{len(missing)} latest submission versions are not in the outbox")
    if set(run.delivered_lines) != run.outbox_event_ids:
        problems.append(
            f"delivered events differ from the outbox: "
            f"{len(run.outbox_event_ids - set(run.delivered_lines))} undelivered, "
            f"{len(set(run.delivered_lines) - run.outbox_event_ids)} unknown"
        )
    resent = {fp: n for fp, n in run.sends_per_fingerprint.items() if n > 1}
    if resent:
        problems.append(f"{len(resent)} SMS were sent more than once")
    if set(run.sms_states) - {"sent", "unknown", "failed"}:
        problems.append(f"SMS requests not in a final state: {dict(run.sms_states)}")
    for key, state in run.sms_by_key.items():
        accepted = run.accepted(key)
        if accepted > 1:
            problems.append(f"SMS request {key} was accepted {accepted} times")
        if state == "sent" and accepted != 1:
            problems.append(f"SMS request {key} is recorded sent but was never accepted")
        if state == "failed" and accepted:
            problems.append(f"SMS request {key} is recorded failed but was accepted")
    return problems


def compare(fault_free: RunOutcome, faulted: RunOutcome, spec: SoakSpec) -> list[str]:
    """Every difference between the two converged states that faults must not cause."""
    problems = [f"fault-free: {p}" for p in invariants(fault_free, spec)]
    problems += [f"faulted: {p}" for p in invariants(faulted, spec)]
    if fault_free.patients != faulted.patients:
        problems.append("the sandbox holds different patients")
    if fault_free.mirror != faulted.mirror:
        problems.append("the mirrors differ")
    if fault_free.seeded_ids != faulted.seeded_ids:
        problems.append("the seeded submissions differ (the seed did not reproduce)")
    seeded = set(fault_free.seeded_ids)
    free_seeded = {v for v in fault_free.delivered_versions if v[0] in seeded}
    soaked_seeded = {v for v in faulted.delivered_versions if v[0] in seeded}
    if free_seeded != soaked_seeded:
        problems.append("the delivered versions of the seeded submissions differ")
    if fault_free.sms_states != Counter({"sent": spec.sms}):
        problems.append(f"fault-free SMS states: {dict(fault_free.sms_states)}")
    return problems


def extra_calls(fault_free: RunOutcome, faulted: RunOutcome) -> dict[str, tuple[int, int]]:
    """Requests per "METHOD /template" (all statuses): (fault-free, faulted)."""

    def by_template(requests: dict[str, int]) -> Counter[str]:
        totals: Counter[str] = Counter()
        for label, count in requests.items():
            method, template, _status = label.split(" ", 2)
            totals[f"{method} {template}"] += count
        return totals

    free, soaked = by_template(fault_free.requests), by_template(faulted.requests)
    return {t: (free[t], soaked[t]) for t in sorted(set(free) | set(soaked))}


@contextmanager
def _workdirs(base: Path | None) -> Iterator[Path]:
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
        yield base
        return
    with tempfile.TemporaryDirectory(prefix="fault-soak-") as tmp:
        yield Path(tmp)


async def soak(spec: SoakSpec, base: Path | None = None) -> tuple[RunOutcome, RunOutcome]:
    """The fault-free run, then the faulted run, with the same seed and inputs."""
    with _workdirs(base) as root:
        fault_free = await run_once(spec, faulted=False, workdir=root / "fault-free")
        faulted = await run_once(spec, faulted=True, workdir=root / "faulted")
    return fault_free, faulted


def report(spec: SoakSpec, fault_free: RunOutcome, faulted: RunOutcome) -> str:
    """The figures of a soak, as Markdown-friendly text (ids and counts only)."""
    lines = [
        f"seed={spec.seed} patients={spec.patients} submissions={spec.submissions} "
        f"sms={spec.sms} page_size={spec.page_size} read_timeout={spec.read_timeout}s "
        f"hang={spec.hang_seconds}s retry_after={spec.retry_after_seconds}s",
    ]
    for run in (fault_free, faulted):
        label = "faulted" if run.faulted else "fault-free"
        duplicate_lines = sum(n - 1 for n in run.delivered_lines.values())
        lines.append(
            f"{label}: converged={run.converged} rounds={run.rounds} seconds={run.seconds:.1f} "
            f"submissions={len(run.latest_versions)} outbox_events={len(run.outbox_event_ids)} "
            f"duplicate_ndjson_lines={duplicate_lines} sms={dict(run.sms_states)} "
            f"sms_accepted={sum(run.sends_per_fingerprint.values())} "
            f"attempts_without_answer={run.transport_failures}"
        )
        lines.append(f"  job runs: {dict(sorted(run.job_outcomes.items()))}")
    unknown_accepted = sum(
        1
        for key, state in faulted.sms_by_key.items()
        if state == "unknown" and faulted.accepted(key)
    )
    lines.append(
        f"faulted SMS unknown={faulted.sms_states['unknown']} "
        f"(of which Voxares accepted {unknown_accepted}, never resent)"
    )
    lines.append("| request | fault-free | faulted | extra |")
    lines.append("|---|---:|---:|---:|")
    total_free = total_soaked = 0
    for template, (free, soaked) in extra_calls(fault_free, faulted).items():
        total_free += free
        total_soaked += soaked
        lines.append(f"| {template} | {free} | {soaked} | {soaked - free:+d} |")
    lines.append(
        f"| total | {total_free} | {total_soaked} | {total_soaked - total_free:+d} "
        f"({(total_soaked - total_free) / max(1, total_free):+.0%}) |"
    )
    faulted_statuses: Counter[str] = Counter()
    for label, count in faulted.requests.items():
        faulted_statuses[label.rsplit(" ", 1)[1]] += count
    lines.append(f"faulted answers by status: {dict(sorted(faulted_statuses.items()))}")
    problems = compare(fault_free, faulted, spec)
    lines.append("guarantees: " + ("all held" if not problems else "; ".join(problems)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run a soak and print its figures; exit 1 when a guarantee did not hold."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--submissions", type=int, default=300)
    parser.add_argument("--sms", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--retry-after", type=int, default=1, help="Retry-After of 429/503")
    parser.add_argument("--page-size", type=int, default=50, help="submissions.page_size")
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the runs' files here")
    args = parser.parse_args(argv)
    from syncd.logging import configure_logging

    configure_logging("WARNING", "json", stream=sys.stderr)
    spec = SoakSpec(
        patients=args.patients,
        submissions=args.submissions,
        sms=args.sms,
        seed=args.seed,
        retry_after_seconds=args.retry_after,
        page_size=args.page_size,
        deadline_seconds=args.deadline,
    )
    fault_free, faulted = asyncio.run(soak(spec, args.workdir))
    print(report(spec, fault_free, faulted))
    return 1 if compare(fault_free, faulted, spec) else 0


if __name__ == "__main__":
    raise SystemExit(main())
