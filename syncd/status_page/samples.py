"""The status page's history of gauges: the form polling lag and each sink's backlog.

Job runs are already recorded in `job_runs`; these gauges are not, so the daemon's sampler
reads them every `status_page.sample_interval_seconds` into `status_samples` and deletes
samples older than the retention, both in one transaction.

The sampler is not a `JobRunner` job: a run record per minute would bury the real jobs'
runs. Two daemons on one database would both sample; the charts keep each bucket's
highest value, so a doubled sample changes nothing.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import structlog
from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.orm import Session

from syncd.state.db import reader
from syncd.state.models import PollerState, StatusSample

log = structlog.get_logger(__name__)

LAG: Final = "form_lag_seconds"  # subject: the stream ("form_submissions")
PENDING: Final = "outbox_pending"  # subject: the sink
OLDEST: Final = "outbox_oldest_seconds"  # subject: the sink
METRICS: Final = (LAG, PENDING, OLDEST)
FORM_STREAM: Final = "form_submissions"


@dataclass(frozen=True, slots=True)
class Reading:
    """One gauge's value for one subject."""

    metric: str
    subject: str
    value: float


def read_gauges(engine: Engine, now: datetime) -> list[Reading]:
    """The gauges as they are at `now`: the poller's lag behind `now` (when it has polled)
    and each sink's pending deliveries and the oldest one's wait."""
    from syncd.outbox.queries import backlog

    with Session(reader(engine)) as session:
        poller = session.get(PollerState, FORM_STREAM)
    readings: list[Reading] = []
    if poller is not None and poller.watermark is not None:
        lag = max((now - poller.watermark).total_seconds(), 0.0)
        readings.append(Reading(LAG, FORM_STREAM, lag))
    for sink, b in backlog(engine, now=now).items():
        readings.append(Reading(PENDING, sink, float(b.pending)))
        readings.append(Reading(OLDEST, sink, b.oldest_age_seconds))
    return readings


def record_samples(
    engine: Engine, readings: Sequence[Reading], *, now: datetime, retention: timedelta
) -> int:
    """Store `readings` taken at `now` and delete samples older than `retention`, in one
    transaction; returns how many old samples were deleted."""
    with engine.begin() as conn:
        if readings:
            conn.execute(
                insert(StatusSample),
                [
                    {"taken_at": now, "metric": r.metric, "subject": r.subject, "value": r.value}
                    for r in readings
                ],
            )
        pruned = conn.execute(
            delete(StatusSample).where(StatusSample.taken_at < now - retention)
        ).rowcount
    return int(pruned or 0)


def sample_once(engine: Engine, *, retention: timedelta, now: datetime | None = None) -> int:
    """Read the gauges and record them; returns how many readings were stored."""
    moment = now or datetime.now(UTC)
    readings = read_gauges(engine, moment)
    pruned = record_samples(engine, readings, now=moment, retention=retention)
    log.debug("status_page.sampled", readings=len(readings), pruned=pruned)
    return len(readings)


async def sampler_task(engine: Engine, *, interval: float, retention: timedelta) -> None:
    """Sample every `interval` seconds until cancelled; a failed sample is logged (by its
    exception class) and the next one is tried on time."""
    while True:
        try:
            await asyncio.to_thread(sample_once, engine, retention=retention)
        except Exception as exc:
            log.warning("status_page.sample_failed", error=type(exc).__name__)
        await asyncio.sleep(interval)


def read_series(
    engine: Engine, metric: str, since: datetime
) -> dict[str, list[tuple[datetime, float]]]:
    """Samples of `metric` taken at or after `since`, by subject, oldest first."""
    query = (
        select(StatusSample.subject, StatusSample.taken_at, StatusSample.value)
        .where(StatusSample.metric == metric, StatusSample.taken_at >= since)
        .order_by(StatusSample.taken_at)
    )
    series: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
    with Session(reader(engine)) as session:
        for subject, taken_at, value in session.execute(query):
            series[subject].append((taken_at, float(value)))
    return dict(series)


def bucketed(
    points: Iterable[tuple[datetime, float]], *, start: datetime, width: timedelta
) -> list[tuple[datetime, float]]:
    """One point per `width`-wide bucket from `start` that holds samples: the bucket's start
    and its highest value (a chart of a week draws 168 hourly points, not 10 080 samples;
    the highest keeps a short spike of lag visible). Points before `start` are left out."""
    highest: dict[int, float] = {}
    for moment, value in points:
        if moment < start:
            continue
        index = int((moment - start) / width)
        highest[index] = max(value, highest.get(index, value))
    return [(start + index * width, highest[index]) for index in sorted(highest)]
