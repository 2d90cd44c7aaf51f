"""What the status page shows, read in one go through deferred readers (`db.reader`), so
that rendering the page never queues behind a writer.

Ids, counts, states and times only: no query here selects a patient field, a message's
text or an event's payload.
"""

from __future__ import annotations

import shlex
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from syncd.messages.views import RequestView, list_requests
from syncd.monitoring import Verdict, assess
from syncd.outbox.tables import DEAD
from syncd.state.db import reader
from syncd.state.models import OutboxDelivery, OutboxEvent, QuarantinedRow
from syncd.state.runs import RunSummary, recent_runs
from syncd.status import StatusReport, gather_status, quarantine_rows
from syncd.status_page import samples

RUNS_PER_JOB: Final = 5
ROWS_LIMIT: Final = 100  # quarantine rows, dead letters, unknown SMS listed (counts are exact)
PROBLEM_OUTCOMES: Final = ("failed", "interrupted", "partial")


@dataclass(frozen=True, slots=True)
class JobRuns:
    """One job's latest runs, newest first."""

    job: str
    runs: list[RunSummary]

    @property
    def latest_outcome(self) -> str:
        return self.runs[0].outcome if self.runs else "none"

    @property
    def failing(self) -> bool:
        return self.latest_outcome in PROBLEM_OUTCOMES


@dataclass(frozen=True, slots=True)
class SinkDeliveries:
    """Deliveries to one sink by state (the retention keeps delivered ones for a while)."""

    sink: str
    delivered: int
    pending: int
    dead: int
    oldest_pending_seconds: float
    disabled_reason: str | None
    removed: bool


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A delivery that gave up: which event, which sink, after how many attempts."""

    event_id: str
    event_type: str
    sink: str
    attempts: int
    last_error: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Window:
    """A chart's span and bucket width."""

    name: str
    span: timedelta
    bucket: timedelta


WINDOWS: Final = (
    Window("24 h", timedelta(hours=24), timedelta(minutes=15)),
    Window("7 days", timedelta(days=7), timedelta(hours=1)),
)


@dataclass(frozen=True, slots=True)
class Series:
    """One line of a chart: a subject's bucketed points."""

    subject: str
    points: list[tuple[datetime, float]]


@dataclass(frozen=True, slots=True)
class ChartData:
    """One chart: a metric over one window, one series per subject."""

    id: str
    title: str
    window: Window
    series: list[Series]
    start: datetime  # the x axis spans start..end, so "now" is always at the right edge
    end: datetime

    @property
    def point_count(self) -> int:
        return sum(len(s.points) for s in self.series)


@dataclass(frozen=True, slots=True)
class PageData:
    """Everything the page shows."""

    now: datetime
    verdict: Verdict
    report: StatusReport
    jobs: list[JobRuns]
    sinks: list[SinkDeliveries]
    dead_letters: list[DeadLetter]
    quarantine: list[QuarantinedRow]
    unknown_sms: list[RequestView]
    charts: list[ChartData]


def gather_page(
    engine: Engine,
    *,
    freshness: Mapping[str, timedelta],
    configured_sinks: Collection[str],
    now: datetime | None = None,
) -> PageData:
    """Read the page's data (`freshness`: the enabled jobs' limits, as `syncd status`)."""
    moment = now or datetime.now(UTC)
    report = gather_status(engine, now=moment, configured=configured_sinks)
    runs = recent_runs(engine, RUNS_PER_JOB)
    jobs = [JobRuns(job, job_runs) for job, job_runs in runs.items()]
    # The jobs that need a look first, then the rest by name.
    jobs.sort(key=lambda j: (not j.failing, j.job))
    return PageData(
        now=moment,
        verdict=assess(report, freshness, now=moment),
        report=report,
        jobs=jobs,
        sinks=_sink_deliveries(engine, report),
        dead_letters=dead_letters(engine),
        quarantine=quarantine_rows(engine, limit=ROWS_LIMIT),
        unknown_sms=list_requests(reader(engine), state="unknown", limit=ROWS_LIMIT),
        charts=charts(engine, moment),
    )


def _sink_deliveries(engine: Engine, report: StatusReport) -> list[SinkDeliveries]:
    d = OutboxDelivery
    with Session(reader(engine)) as session:
        counts = {
            (str(sink), str(state)): int(n)
            for sink, state, n in session.execute(
                select(d.sink, d.state, func.count()).group_by(d.sink, d.state)
            )
        }
    return [
        SinkDeliveries(
            sink=s.sink,
            delivered=counts.get((s.sink, "delivered"), 0),
            pending=s.pending,
            dead=s.dead,
            oldest_pending_seconds=s.oldest_age_seconds,
            disabled_reason=s.disabled_reason,
            removed=s.removed,
        )
        for s in report.sinks
    ]


def dead_letters(engine: Engine, limit: int = ROWS_LIMIT) -> list[DeadLetter]:
    """Dead-lettered deliveries, newest event first."""
    d, e = OutboxDelivery, OutboxEvent
    query = (
        select(e.event_id, e.event_type, d.sink, d.attempts, d.last_error, e.created_at)
        .join(e, e.seq == d.event_seq)
        .where(d.state == DEAD)
        .order_by(e.seq.desc(), d.sink)
        .limit(limit)
    )
    with Session(reader(engine)) as session:
        return [DeadLetter(*row) for row in session.execute(query)]


def window_start(now: datetime, window: Window) -> datetime:
    """The first bucket's start: `now - span`, rounded down to a whole bucket since the
    epoch, so buckets fall on the clock (:00, :15, ...) and stay put between refreshes."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    start = now - window.span
    return epoch + ((start - epoch) // window.bucket) * window.bucket


def charts(engine: Engine, now: datetime) -> list[ChartData]:
    """The lag chart and the backlog chart, over each window."""
    found: list[ChartData] = []
    for metric, slug, title in (
        (samples.LAG, "lag", "Form polling lag (seconds)"),
        (samples.PENDING, "backlog", "Outbox backlog per sink (pending deliveries)"),
    ):
        for window in WINDOWS:
            start = window_start(now, window)
            raw = samples.read_series(engine, metric, start)
            series = [
                Series(subject, samples.bucketed(points, start=start, width=window.bucket))
                for subject, points in sorted(raw.items())
            ]
            found.append(
                ChartData(
                    f"{slug}-{window.span.days or 1}d",
                    f"{title}, last {window.name}",
                    window,
                    series,
                    start,
                    now,
                )
            )
    return found


def command(syncd: str, *args: str, config: str | None) -> str:
    """A shell command line, each argument quoted as the shell needs it."""
    words = [*args, *(("--config", config) if config else ())]
    return " ".join([syncd, *(shlex.quote(w) for w in words)])
