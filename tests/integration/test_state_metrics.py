"""The scrape-time metrics of the state database (`syncd.state_metrics.StateCollector`),
over real runs recorded by `JobRunner`, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, insert
from sqlalchemy.orm import Session

from syncd.jobs import JobRunner
from syncd.outbox.actions import retry
from syncd.state.db import make_engine
from syncd.state.models import QuarantinedRow, SinkCursor
from syncd.state_metrics import StateCollector

FRESHNESS = {"push_patients": timedelta(minutes=30), "poll_submissions": timedelta(minutes=10)}


@dataclass
class Outcome:
    """A job result that reports the outcome its run should get."""

    outcome: str
    failed: int = 0
    pushed: int = 1


@dataclass
class ReportingJob:
    """A job that returns a given result."""

    name: str
    result: Any

    async def run(self, run_id: int) -> Any:
        return self.result


class FailingJob:
    """A job whose run raises."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def run(self, run_id: int) -> Any:
        raise RuntimeError("boom")


def scrape(collector: StateCollector) -> CollectorRegistry:
    """A registry holding only `collector`, as one scrape sees it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def value(registry: CollectorRegistry, name: str, labels: Mapping[str, str]) -> float | None:
    """One sample of a scrape."""
    return registry.get_sample_value(name, dict(labels))


async def test_last_success_counts_ok_and_partial_and_survives_a_new_collector(
    state_engine: Engine,
) -> None:
    """The last success is the end of the latest ok or partial run: a failed run leaves
    it, and a collector built afresh (a restarted daemon) reads the same value."""
    collector = StateCollector(state_engine, FRESHNESS, [])
    success = "syncd_job_last_success_timestamp_seconds"
    runner = JobRunner(state_engine)
    await runner.run_once(FailingJob("push_patients"))
    assert value(scrape(collector), success, {"job": "push_patients"}) is None
    await runner.run_once(ReportingJob("push_patients", Outcome("partial", failed=1)))
    first = value(scrape(collector), success, {"job": "push_patients"})
    assert first is not None
    assert abs(first - datetime.now(UTC).timestamp()) < 300
    await runner.run_once(FailingJob("push_patients"))
    restarted = StateCollector(state_engine, FRESHNESS, [])
    assert value(scrape(restarted), success, {"job": "push_patients"}) == first


async def test_last_outcome_is_the_latest_finished_run(state_engine: Engine) -> None:
    """`syncd_job_last_outcome` is 1 for the latest finished run's outcome, 0 for the
    other outcomes; a job that never ran has no series."""
    collector = StateCollector(state_engine, FRESHNESS, [])
    runner = JobRunner(state_engine)
    await runner.run_once(ReportingJob("push_patients", Outcome("ok")))
    await runner.run_once(FailingJob("push_patients"))
    registry = scrape(collector)

    def outcome(name: str) -> float | None:
        labels = {"job": "push_patients", "outcome": name}
        return value(registry, "syncd_job_last_outcome", labels)

    assert [outcome(o) for o in ("ok", "partial", "failed", "interrupted")] == [0, 0, 1, 0]
    labels = {"job": "poll_submissions", "outcome": "failed"}
    assert value(registry, "syncd_job_last_outcome", labels) is None
    await runner.run_once(ReportingJob("push_patients", Outcome("ok")))
    registry = scrape(collector)
    assert (outcome("ok"), outcome("failed")) == (1, 0)


async def test_only_enabled_jobs_are_exposed_with_their_freshness(state_engine: Engine) -> None:
    """A job no longer enabled (not in the freshness map) exposes nothing, so it cannot
    keep an alert firing; each enabled job exposes its limit in seconds."""
    await JobRunner(state_engine).run_once(FailingJob("mirror_content"))
    registry = scrape(StateCollector(state_engine, FRESHNESS, []))
    limit = "syncd_job_freshness_limit_seconds"
    assert value(registry, limit, {"job": "push_patients"}) == 1800
    assert value(registry, limit, {"job": "poll_submissions"}) == 600
    assert value(registry, limit, {"job": "mirror_content"}) is None
    labels = {"job": "mirror_content", "outcome": "failed"}
    assert value(registry, "syncd_job_last_outcome", labels) is None


def quarantine(engine: Engine, source: str, row_key: str) -> None:
    """A quarantined row, as the push records one (ids and reason only)."""
    moment = datetime.now(UTC)
    with Session(engine) as session, session.begin():
        session.execute(
            insert(QuarantinedRow).values(
                source=source,
                row_key=row_key,
                line_number=2,
                field="mobileNumber",
                reason="not a valid phone number",
                row_hash="0" * 64,
                first_seen_at=moment,
                last_seen_at=moment,
            )
        )


def test_quarantined_rows_by_source(state_engine: Engine) -> None:
    """`syncd_quarantined_rows` counts the quarantine table per source."""
    quarantine(state_engine, "ehr-export", "P1")
    quarantine(state_engine, "ehr-export", "line:7")
    quarantine(state_engine, "reminders", "R9")
    registry = scrape(StateCollector(state_engine, FRESHNESS, []))
    assert value(registry, "syncd_quarantined_rows", {"source": "ehr-export"}) == 2
    assert value(registry, "syncd_quarantined_rows", {"source": "reminders"}) == 1


def test_a_disabled_sink_reads_1_until_retry_re_enables_it(state_engine: Engine) -> None:
    """`syncd_outbox_sink_disabled` follows the cursor's disabled reason for each configured
    sink (0 for one without a cursor yet); `syncd outbox retry --sink` brings it back to 0."""
    with Session(state_engine) as session, session.begin():
        session.add(
            SinkCursor(
                sink="crm",
                last_xid=0,
                last_seq=0,
                disabled_reason="webhook answered 410 Gone",
                updated_at=datetime.now(UTC),
            )
        )
        session.add(
            SinkCursor(
                sink="gone",
                last_xid=0,
                last_seq=0,
                disabled_reason="410",
                updated_at=datetime.now(UTC),
            )
        )
    collector = StateCollector(state_engine, FRESHNESS, ["crm", "archive"])
    registry = scrape(collector)
    disabled = "syncd_outbox_sink_disabled"
    assert value(registry, disabled, {"sink": "crm"}) == 1
    assert value(registry, disabled, {"sink": "archive"}) == 0
    assert value(registry, disabled, {"sink": "gone"}) is None  # not configured any more
    retry(state_engine, sink="crm")
    assert value(scrape(collector), disabled, {"sink": "crm"}) == 0


def test_an_unreadable_database_gives_no_families(tmp_path: Any) -> None:
    """A state database that cannot be read yields nothing instead of failing the scrape
    (the `database` readiness check reports it)."""
    engine = make_engine(f"sqlite:///{tmp_path}/never-migrated.db")
    try:
        assert list(StateCollector(engine, FRESHNESS, ["crm"]).collect()) == []
    finally:
        engine.dispose()
