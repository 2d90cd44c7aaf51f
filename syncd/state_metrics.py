"""Metrics read from the state database at scrape time, not kept in the process.

What the dashboard and the alerts judge must survive a restart and must not depend on which
process did the work: a job's last success, its latest outcome, quarantined rows and
disabled sinks are facts of the state database. A process gauge would be absent after a
restart until the job next succeeded, so a job failing since the restart would never look
stale. Each scrape reads them through a deferred reader (`syncd.state.db.reader`): a scrape
never queues behind a writer.

    syncd_job_last_success_timestamp_seconds{job}  end of the last ok or partial run
    syncd_job_freshness_limit_seconds{job}          the freshness limit /readyz holds it to
    syncd_job_last_outcome{job,outcome}             1 for the latest finished run's outcome
    syncd_quarantined_rows{source}                  source rows in quarantine
    syncd_outbox_sink_disabled{sink}                1 while a configured sink is disabled

Only enabled jobs and configured sinks are exposed: a job switched off or a sink removed
must not keep an alert firing. Labels carry job, source and sink names only.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from datetime import UTC, datetime, timedelta

import structlog
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from syncd.exceptions import StateError
from syncd.state.db import reader
from syncd.state.models import JobRun, QuarantinedRow
from syncd.state.runs import OUTCOMES, SUCCEEDED

log = structlog.get_logger(__name__)


class StateCollector(Collector):
    """Collects the state-database metrics above on each scrape.

    `freshness`: enabled job name -> its freshness limit (`compose.job_freshness`);
    `sinks`: the configured sink names.
    """

    def __init__(
        self, engine: Engine, freshness: Mapping[str, timedelta], sinks: Collection[str]
    ) -> None:
        self._engine = reader(engine)
        self._freshness = dict(freshness)
        self._sinks = frozenset(sinks)

    def describe(self) -> Iterator[Metric]:
        """Nothing: registering must not read the database (names are checked per scrape)."""
        return iter(())

    def collect(self) -> Iterator[Metric]:
        """The families, read in one pass; none when the database cannot be read (the
        `database` readiness check says so, and /metrics keeps serving the rest)."""
        try:
            families = self._read()
        except (SQLAlchemyError, StateError) as exc:
            log.warning("metrics.state_unreadable", error=type(exc).__name__)
            return iter(())
        return iter(families)

    def _read(self) -> list[Metric]:
        jobs = sorted(self._freshness)
        successes = select(JobRun.job, func.max(JobRun.finished_at)).where(
            JobRun.outcome.in_(SUCCEEDED), JobRun.job.in_(jobs)
        )
        latest_finished = (
            select(func.max(JobRun.id))
            .where(JobRun.outcome.in_(OUTCOMES), JobRun.job.in_(jobs))
            .group_by(JobRun.job)
            .scalar_subquery()
        )
        outcomes = select(JobRun.job, JobRun.outcome).where(JobRun.id.in_(latest_finished))
        quarantined = select(QuarantinedRow.source, func.count()).group_by(QuarantinedRow.source)
        with self._engine.connect() as conn:
            last_success = {
                str(job): moment
                for job, moment in conn.execute(successes.group_by(JobRun.job))
                if moment is not None
            }
            last_outcome = {str(job): str(outcome) for job, outcome in conn.execute(outcomes)}
            quarantine = {str(source): int(n) for source, n in conn.execute(quarantined)}
        from syncd.outbox.queries import sink_states

        disabled = {
            name: state.disabled_reason is not None
            for name, state in sink_states(self._engine).items()
        }
        return [
            _success_family(last_success),
            _freshness_family(self._freshness),
            _outcome_family(last_outcome),
            _quarantine_family(quarantine),
            _disabled_family({sink: disabled.get(sink, False) for sink in sorted(self._sinks)}),
        ]


def _success_family(last_success: Mapping[str, datetime]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "syncd_job_last_success_timestamp_seconds",
        "Unix time the job's last ok or partial run ended (state database; alert on "
        "time() minus this above syncd_job_freshness_limit_seconds)",
        labels=["job"],
    )
    for job, moment in sorted(last_success.items()):
        family.add_metric([job], _utc(moment).timestamp())
    return family


def _freshness_family(freshness: Mapping[str, timedelta]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "syncd_job_freshness_limit_seconds",
        "How recently the enabled job must have succeeded to be fresh (what /readyz uses)",
        labels=["job"],
    )
    for job, limit in sorted(freshness.items()):
        family.add_metric([job], limit.total_seconds())
    return family


def _outcome_family(last_outcome: Mapping[str, str]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "syncd_job_last_outcome",
        "1 for the outcome of the job's latest finished run, 0 for the other outcomes",
        labels=["job", "outcome"],
    )
    for job, outcome in sorted(last_outcome.items()):
        for candidate in OUTCOMES:
            family.add_metric([job, candidate], 1.0 if candidate == outcome else 0.0)
    return family


def _quarantine_family(quarantine: Mapping[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "syncd_quarantined_rows",
        "Source rows in quarantine, by source (`syncd quarantine list` names row, field, reason)",
        labels=["source"],
    )
    for source, count in sorted(quarantine.items()):
        family.add_metric([source], float(count))
    return family


def _disabled_family(disabled: Mapping[str, bool]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "syncd_outbox_sink_disabled",
        "1 while the configured sink is disabled (its deliveries wait), else 0",
        labels=["sink"],
    )
    for sink, is_disabled in disabled.items():
        family.add_metric([sink], 1.0 if is_disabled else 0.0)
    return family


def _utc(moment: datetime) -> datetime:
    # SQLite hands timezone-aware columns back naive; they hold UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
