"""The daemon runs the status page's sampler beside its jobs, and stops it on shutdown."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from syncd.daemon import Daemon
from syncd.jobs import JobRunner
from syncd.state.models import PollerState, StatusSample
from syncd.status_page import samples
from tests.waiting import async_wait_until


def _count(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.scalar(select(func.count()).select_from(StatusSample)) or 0)


async def test_daemon_samples_until_stopped(state_engine: Engine) -> None:
    now = datetime.now(UTC)
    with Session(state_engine) as session, session.begin():
        session.add(
            PollerState(
                stream="form_submissions", watermark=now - timedelta(minutes=3), updated_at=now
            )
        )
    daemon = Daemon(
        JobRunner(state_engine),
        [],
        background=[
            lambda: samples.sampler_task(state_engine, interval=3600, retention=timedelta(days=8))
        ],
    )
    running = asyncio.create_task(daemon.run())
    await async_wait_until(lambda: _count(state_engine) == 1, "the first sample", interval=0.05)
    daemon.request_stop()
    await asyncio.wait_for(running, timeout=60)
    series = samples.read_series(state_engine, samples.LAG, now - timedelta(hours=1))
    [(_, lag)] = series["form_submissions"]
    assert lag >= 180.0
