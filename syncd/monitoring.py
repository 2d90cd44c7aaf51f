"""The monitoring verdict of a status snapshot (pure): ok, warning or critical, and why.

`syncd status` exits with the Nagios plugin convention, so it can be used as a check as is:
0 OK, 1 WARNING, 2 CRITICAL (the state database could not be read is CRITICAL too; 78, a
bad configuration, counts as UNKNOWN to Nagios like any code above 3).

CRITICAL, the sync is not doing its job:
- an enabled job's latest run `failed`;
- an enabled job has not succeeded (`ok` or `partial`) within its freshness limit, the
  limit `/readyz` uses (a stopped daemon shows up here);
- an outbox sink is disabled (its deliveries wait).

WARNING, it works but something needs a look:
- an enabled job's latest run was `partial` (some items failed, retried next run) or
  `interrupted` (stopped or killed mid-run);
- an enabled job has no run recorded yet;
- SMS requests are `unknown` (an operator decides each one);
- dead-lettered outbox deliveries.

Quarantined rows are not a problem of the sync but of the source: they are shown, not
judged. Jobs no longer enabled are not judged either.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from syncd.status import StatusReport

Level = Literal["ok", "warning", "critical"]
EXIT_CODES: Final[Mapping[Level, int]] = {"ok": 0, "warning": 1, "critical": 2}
_RANK: Final[Mapping[Level, int]] = EXIT_CODES


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong: how bad, what (`job:NAME`, `sink:NAME`, `messages`), and why."""

    level: Level
    check: str
    reason: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """The overall level, its exit code, and every problem behind it (worst first)."""

    level: Level
    problems: list[Problem]

    @property
    def exit_code(self) -> int:
        """0 ok, 1 warning, 2 critical (Nagios)."""
        return EXIT_CODES[self.level]


def assess(
    report: StatusReport, freshness: Mapping[str, timedelta], *, now: datetime | None = None
) -> Verdict:
    """Judge `report` for the enabled jobs in `freshness` (job name -> freshness limit)."""
    moment = _utc(now or datetime.now(UTC))
    problems: list[Problem] = []
    latest = {run.job: run for run in report.runs}
    for job, limit in sorted(freshness.items()):
        check = f"job:{job}"
        run = latest.get(job)
        if run is None:
            problems.append(Problem("warning", check, "no run recorded yet"))
            continue
        detail = f": {run.error}" if run.error else ""
        if run.outcome == "failed":
            problems.append(Problem("critical", check, f"last run failed{detail}"))
        elif run.outcome == "partial":
            problems.append(Problem("warning", check, f"last run partial{detail}"))
        elif run.outcome == "interrupted":
            problems.append(Problem("warning", check, f"last run interrupted{detail}"))
        success = report.last_success.get(job)
        if success is None:
            continue  # a first run still going, or the failure above says it
        age = moment - _utc(success)
        if age > limit:
            problems.append(
                Problem(
                    "critical",
                    check,
                    f"last success {int(age.total_seconds())}s ago "
                    f"(limit {int(limit.total_seconds())}s)",
                )
            )
    for sink in report.sinks:
        if sink.disabled_reason:
            problems.append(
                Problem("critical", f"sink:{sink.sink}", f"disabled: {sink.disabled_reason}")
            )
        if sink.dead:
            problems.append(
                Problem("warning", f"sink:{sink.sink}", f"{sink.dead} dead-lettered deliveries")
            )
    if report.messages_unknown:
        problems.append(
            Problem(
                "warning",
                "messages",
                f"{report.messages_unknown} SMS in 'unknown': decide each with "
                "`syncd messages resolve KEY --resend|--mark-sent|--cancel`",
            )
        )
    problems.sort(key=lambda p: -_RANK[p.level])
    level: Level = problems[0].level if problems else "ok"
    return Verdict(level, problems)


def status_json(report: StatusReport, verdict: Verdict) -> dict[str, Any]:
    """`syncd status --json`: one JSON object, ids in full, times in ISO 8601 UTC."""
    return {
        "status": verdict.level,
        "exit_code": verdict.exit_code,
        "problems": [
            {"level": p.level, "check": p.check, "reason": p.reason} for p in verdict.problems
        ],
        "jobs": [
            {
                "job": run.job,
                "run_id": run.id,
                "outcome": run.outcome,
                "started_at": _iso(run.started_at),
                "finished_at": _iso(run.finished_at),
                "counts": run.counts,
                "error": run.error,
                "last_success_at": _iso(report.last_success.get(run.job)),
            }
            for run in report.runs
        ],
        "patients": {
            "active": report.patients_active,
            "inactive": report.patients_inactive,
            "quarantined_rows": report.quarantined,
        },
        "submissions": {
            "watermark": _iso(report.watermark),
            "lag_seconds": report.watermark_lag_seconds,
            "window_in_progress": report.window_in_progress,
            "window_resume_from": _iso(report.window_resume_from),
            "last_sweep": _iso(report.last_sweep),
        },
        "outbox": [
            {
                "sink": s.sink,
                "pending": s.pending,
                "oldest_age_seconds": s.oldest_age_seconds,
                "dead": s.dead,
                "disabled_reason": s.disabled_reason,
            }
            for s in report.sinks
        ],
        "messages": {
            "by_state": dict(sorted(report.messages_by_state.items())),
            "unknown": report.messages_unknown,
        },
        "hl7": {"by_status": dict(sorted(report.hl7_by_status.items()))},
    }


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else _utc(moment).isoformat()
