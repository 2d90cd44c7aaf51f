"""Crash soak: the real daemon SIGKILLed at random moments, again and again, then checked.

One installation (`tests/acceptance/crash_harness.CrashRig`: CSV export, SQLite state file,
`syncd run` with 0.5-1 s intervals, a signed webhook receiver, SMS requests) against a
served sandbox practice with live activity (submissions created and advanced all along).
Each round starts the daemon, waits a random delay once its jobs are scheduled, sometimes
edits the export or adds SMS requests (some via `syncd messages send`), kills the daemon
with SIGKILL and checks the invariants that hold at every moment (`safety_violations`:
integrity, no version emitted twice, no unknown webhook-id, no SMS accepted twice, a killed
`sending` request never resent). After the last kill the activity stops, the daemon runs
until converged, stops with SIGTERM, and everything is checked (`final_violations`:
nothing lost either).

    .venv/bin/python scripts/crash_soak.py --kills 120

Prints ids and counts only (the patient data is synthetic anyway). Exit code 1 when an
invariant broke.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from syncd.sandbox.server import ServedSandbox  # noqa: E402 (after the path set-up)
from tests.acceptance.crash_harness import (  # noqa: E402
    KILLED,
    CrashRig,
    WebhookReceiver,
    running,
)

# Daemon log events that show where kills landed (work found half done by a restart).
RECOVERY_EVENTS = (
    "job.previous_run_interrupted",
    "poller.window_resumed",
    "outbox.dead_worker_claims_released",
    "messages.interrupted_sends_unknown",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=120, help="SIGKILLs before converging")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--patients", type=int, default=60)
    parser.add_argument("--submissions", type=int, default=40)
    parser.add_argument("--sms", type=int, default=5, help="SMS requests at the start")
    parser.add_argument(
        "--min-delay", type=float, default=0.0, help="seconds of work before a kill"
    )
    parser.add_argument("--max-delay", type=float, default=3.0)
    parser.add_argument("--activity-period", type=float, default=0.25, help="seconds/change")
    parser.add_argument("--workdir", type=Path, help="keep the installation here")
    return parser.parse_args(argv)


def recovery_counts(log_path: Path) -> Counter[str]:
    """How often the daemon's log shows each recovery event."""
    counts: Counter[str] = Counter()
    for line in log_path.read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line).get("event")
        except ValueError:
            continue
        if event in RECOVERY_EVENTS:
            counts[event] += 1
    return counts


def soak(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Run the soak in `workdir`; the report."""
    rng = random.Random(args.seed)
    report: dict[str, Any] = {"command": " ".join(sys.argv), "seed": args.seed}
    violations: list[str] = []
    started = time.monotonic()
    with ServedSandbox(seed=args.seed) as served, WebhookReceiver() as receiver:
        created = served.admin.create_practice(f"crash-soak-{uuid.uuid4().hex[:8]}")
        rig = CrashRig(
            workdir, served, created["id"], created["keys"][0]["key"], receiver, seed=args.seed
        )
        try:
            rig.prepare(patients=args.patients, submissions=args.submissions, sms=args.sms)
            assert rig.activity is not None
            rig.activity.period = args.activity_period
            rig.activity.start()
            kills = exited_early = 0
            for round_no in range(1, args.kills + 1):
                delay = rng.uniform(args.min_delay, args.max_delay)
                offset = rig.log_size()
                with running(rig) as daemon:
                    # The delay counts from the start of the jobs, not of the interpreter.
                    rig.wait_started(daemon, offset, 30)
                    time.sleep(delay / 2)
                    if round_no % 7 == 0:
                        rig.edit_source()
                    time.sleep(delay / 2)
                    if daemon.poll() is not None:
                        exited_early += 1
                        violations.append(f"round {round_no}: exited {daemon.returncode} alone")
                        continue
                    if rig.kill(daemon) == KILLED:
                        kills += 1
                rig.after_kill()
                found = rig.safety_violations()
                violations += [f"after kill {round_no}: {problem}" for problem in found]
                if round_no % 5 == 0:
                    rig.add_sms(rng.randint(1, 2), via_cli=round_no % 25 == 0)
                if round_no % 10 == 0:
                    print(f"kills {kills}, violations so far {len(violations)}", flush=True)
            rig.activity.stop()
            report["activity_changes"] = rig.activity.changes
            converge_started = time.monotonic()
            with running(rig) as daemon:
                left = rig.wait_converged(180)
                violations += [f"not converged: {item}" for item in left]
                code = rig.stop(daemon)
            if code != 0:
                violations.append(f"graceful stop exited {code}")
            violations += [f"final: {problem}" for problem in rig.final_violations()]
            report.update(
                kills=kills,
                exited_early=exited_early,
                converge_seconds=round(time.monotonic() - converge_started, 1),
                seconds=round(time.monotonic() - started, 1),
                sms_requests=len(rig.sms),
                sms_killed_while_sending=len(rig.ever_sending),
                source_rows=len(rig.source.rows),
                **rig.summary(),
                recoveries=dict(recovery_counts(workdir / "daemon.log")),
                violations=violations,
            )
        finally:
            rig.close()
    return report


def print_report(report: dict[str, Any]) -> None:
    """The figures, one per line."""
    sms = report["sms_by_state"]
    print(f"command: {report['command']}")
    print(f"kills: {report['kills']} (daemon exited on its own: {report['exited_early']})")
    print(f"time: {report['seconds']} s, converged after the last kill in "
          f"{report['converge_seconds']} s")  # fmt: skip
    print(f"source rows: {report['source_rows']} (valid, mirrored: {report['patients']}, "
          f"quarantined: {report['quarantined']})")  # fmt: skip
    print(f"submission changes by the activity: {report['activity_changes']}")
    print(f"events: {report['events']} (submission versions: {report['submission_versions']})")
    print(f"webhooks received: {report['webhooks_received']}, distinct: "
          f"{report['webhooks_distinct']}, redelivered (same id): "
          f"{report['webhooks_redelivered']}")  # fmt: skip
    print(f"lost: {report['events_lost']}")
    print(f"duplicates (a version emitted twice): {report['versions_duplicated']}")
    print(f"SMS requests: {report['sms_requests']}, by state: {sms}")
    print(f"SMS sent twice: {report['sms_sent_twice']}")
    print(f"unknown SMS: {sms.get('unknown', 0)} (accepted by Voxares: "
          f"{report['sms_unknown_accepted']}; left sending by a kill: "
          f"{report['sms_killed_while_sending']})")  # fmt: skip
    print(f"integrity: {report['integrity']}")
    print(f"recoveries seen in the daemon log: {report['recoveries']}")
    print(f"violations: {len(report['violations'])}")
    for problem in report["violations"][:20]:
        print(f"  {problem}")


def main(argv: list[str] | None = None) -> int:
    """Run the soak, print the report; 1 when an invariant broke."""
    args = parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        report = soak(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="crash-soak-") as tmp:
            report = soak(args, Path(tmp))
    print_report(report)
    return 1 if report["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
