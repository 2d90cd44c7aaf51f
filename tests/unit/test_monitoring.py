"""The monitoring verdict of `syncd status` (syncd.monitoring): levels, reasons, exit codes."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from syncd.monitoring import Problem, assess, status_json
from syncd.state.runs import RunSummary
from syncd.status import SinkStatus, StatusReport

NOW = datetime(2025, 5, 20, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
FRESH = {"push_patients": HOUR, "send_messages": timedelta(minutes=10)}


def run(job: str, outcome: str, minutes_ago: float, error: str | None = None) -> RunSummary:
    """A finished run of `job`, `minutes_ago` minutes before NOW."""
    end = NOW - timedelta(minutes=minutes_ago)
    return RunSummary(1, job, end - timedelta(seconds=5), end, outcome, {"created": 1}, error)


def report(*runs: RunSummary, **changes: Any) -> StatusReport:
    """A snapshot holding `runs` as the latest runs; successes follow from ok/partial runs."""
    base = StatusReport(
        runs=list(runs),
        last_success={
            r.job: r.finished_at
            for r in runs
            if r.outcome in ("ok", "partial") and r.finished_at is not None
        },
        patients_active=10,
        patients_inactive=0,
        quarantined=3,
        watermark=None,
        watermark_lag_seconds=None,
        window_in_progress=False,
        window_resume_from=None,
        last_sweep=None,
        sinks=[],
        messages_by_state={"sent": 4},
    )
    return replace(base, **changes)


def test_all_recent_and_ok_is_ok_exit_0() -> None:
    """Every enabled job ran ok within its limit: ok, no problems, exit 0 (quarantine is
    the source's problem and is not judged)."""
    verdict = assess(
        report(run("push_patients", "ok", 5), run("send_messages", "ok", 1)), FRESH, now=NOW
    )
    assert (verdict.level, verdict.problems, verdict.exit_code) == ("ok", [], 0)


def test_a_failed_last_run_is_critical_exit_2() -> None:
    """The latest run failed: critical, naming the job and the run's error."""
    verdict = assess(
        report(
            run("push_patients", "failed", 5, "stopped early: Voxares unreachable or failing"),
            run("send_messages", "ok", 1),
        ),
        FRESH,
        now=NOW,
    )
    assert verdict.exit_code == 2
    assert verdict.problems == [
        Problem(
            "critical",
            "job:push_patients",
            "last run failed: stopped early: Voxares unreachable or failing",
        )
    ]


@pytest.mark.parametrize("outcome", ["partial", "interrupted"])
def test_a_partial_or_interrupted_last_run_is_a_warning_exit_1(outcome: str) -> None:
    """A partial or interrupted latest run: warning, exit 1."""
    verdict = assess(
        report(run("push_patients", outcome, 5, "x"), run("send_messages", "ok", 1)),
        FRESH,
        now=NOW,
    )
    assert verdict.exit_code == 1
    assert verdict.problems == [Problem("warning", "job:push_patients", f"last run {outcome}: x")]


def test_no_success_within_the_freshness_limit_is_critical() -> None:
    """A job whose last success is older than its limit (a stopped daemon) is critical."""
    verdict = assess(
        report(run("push_patients", "ok", 61), run("send_messages", "ok", 1)), FRESH, now=NOW
    )
    assert verdict.problems == [
        Problem("critical", "job:push_patients", "last success 3660s ago (limit 3600s)")
    ]


def test_an_enabled_job_that_never_ran_is_a_warning_and_disabled_jobs_are_not_judged() -> None:
    """An enabled job without runs warns; a job not enabled any more is ignored."""
    verdict = assess(
        report(run("push_patients", "ok", 5), run("mirror_content", "failed", 1)), FRESH, now=NOW
    )
    assert verdict.problems == [Problem("warning", "job:send_messages", "no run recorded yet")]


def test_sms_in_doubt_and_dead_letters_warn_and_a_disabled_sink_is_critical() -> None:
    """Unknown SMS and dead letters need a look (warning); a disabled sink stops (critical).
    The worst problem comes first."""
    sinks = [
        SinkStatus("crm", 2, 30.0, 0, "401 from the webhook"),
        SinkStatus("files", 0, 0.0, 5, None),
    ]
    verdict = assess(
        report(
            run("push_patients", "ok", 5),
            run("send_messages", "ok", 1),
            sinks=sinks,
            messages_by_state={"sent": 4, "unknown": 2},
        ),
        FRESH,
        now=NOW,
    )
    assert verdict.level == "critical"
    assert [(p.level, p.check) for p in verdict.problems] == [
        ("critical", "sink:crm"),
        ("warning", "sink:files"),
        ("warning", "messages"),
    ]
    assert verdict.problems[2].reason.startswith("2 SMS in 'unknown'")


def test_status_json_is_one_object_with_full_ids_and_iso_times() -> None:
    """`--json`: one object with the verdict, every job's last run (run id in full, ISO
    times), patients, polling, outbox and SMS; it round-trips through JSON."""
    snapshot = report(run("push_patients", "partial", 5, "1 of 9 pushes failed"))
    verdict = assess(snapshot, {"push_patients": HOUR}, now=NOW)
    body = json.loads(json.dumps(status_json(snapshot, verdict)))
    assert (body["status"], body["exit_code"]) == ("warning", 1)
    assert body["problems"] == [
        {
            "level": "warning",
            "check": "job:push_patients",
            "reason": "last run partial: 1 of 9 pushes failed",
        }
    ]
    [job] = body["jobs"]
    assert job == {
        "job": "push_patients",
        "run_id": 1,
        "outcome": "partial",
        "started_at": "2025-05-20T08:54:55+00:00",
        "finished_at": "2025-05-20T08:55:00+00:00",
        "counts": {"created": 1},
        "error": "1 of 9 pushes failed",
        "last_success_at": "2025-05-20T08:55:00+00:00",
    }
    assert body["patients"] == {"active": 10, "inactive": 0, "quarantined_rows": 3}
    assert body["messages"] == {"by_state": {"sent": 4}, "unknown": 0}
    assert set(body) == {
        "status",
        "exit_code",
        "problems",
        "jobs",
        "patients",
        "submissions",
        "outbox",
        "messages",
        "hl7",
    }
    assert body["hl7"] == {"by_status": {}}  # no HL7 feed
