"""A graceful stop (SIGTERM) of the daemon during an SMS send run leaves no request in doubt.

The daemon object runs the real `MessageSender` under the real `JobRunner` on a real state
database; the in-process sandbox answers every send after a one-second delay, so sends are
in flight when SIGTERM arrives. The work left (80 sends, 4 at a time: 20 s) is twice the
grace period, so only a sender that stops claiming can end within it.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from syncd import testing_hooks
from syncd.compose import shutdown_grace_seconds
from syncd.config import Settings
from syncd.daemon import Daemon, Schedule
from syncd.jobs import JobRunner
from syncd.messages import counts_by_state
from syncd.messages.sender import STEP_AFTER_MARK
from syncd.sandbox.faults import FaultConfig, FaultRule
from tests.integration.test_messages_support import (
    World,
    make_world,
    migrated_sqlite,
    queue_requests,
)

REQUESTS = 80
SEND_SECONDS = 1.0
GRACE_SECONDS = 10.0
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def world(tmp_path: Any) -> AsyncIterator[World]:
    w = make_world(migrated_sqlite(tmp_path))
    try:
        yield w
    finally:
        await w.close()


def slow_sends() -> FaultConfig:
    """Every `POST /messages/send` answered after SEND_SECONDS (and processed)."""
    return FaultConfig(
        rules=[
            FaultRule(method="POST", path_prefix="/messages/send", latency_ms=SEND_SECONDS * 1000)
        ]
    )


@pytest.fixture
def first_send() -> Iterator[asyncio.Event]:
    """Set once a request is committed `sending` and its call is about to go out."""
    marked = asyncio.Event()

    def hook(step: str) -> None:
        if step == STEP_AFTER_MARK:
            marked.set()

    testing_hooks.set_callback(hook)
    try:
        yield marked
    finally:
        testing_hooks.set_callback(None)


async def test_sigterm_during_a_send_run_leaves_no_unknown_request(
    world: World, first_send: asyncio.Event
) -> None:
    """SIGTERM mid-run: the sender claims no new request, the sends in flight finish within
    the grace period, no request is left `sending` (0 new `unknown`), every request is
    `sent` or still `pending`, none was sent twice, and the next start sends the rest."""
    queue_requests(world.engine, REQUESTS, content="Reminder", key_format="k-{n:02d}")
    world.set_faults(slow_sends())
    daemon = Daemon(
        JobRunner(world.engine),
        [Schedule(world.sender(concurrency=4, batch_size=10), interval_seconds=3600)],
        shutdown_grace_seconds=GRACE_SECONDS,
    )
    loop = asyncio.get_running_loop()
    serving = asyncio.create_task(daemon.run())
    await asyncio.wait_for(first_send.wait(), timeout=20)
    stopped_at = loop.time()
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(serving, timeout=60)

    assert loop.time() - stopped_at < GRACE_SECONDS  # it ended by itself, not by the cancel
    states = counts_by_state(world.engine)
    assert (states["sending"], states["unknown"]) == (0, 0)
    assert 1 <= states["sent"] < REQUESTS
    assert states["sent"] + states["pending"] == REQUESTS
    assert world.max_sends() == 1

    world.set_faults(None)
    counts = await world.sender(concurrency=8).run(None)  # the next start
    assert counts.recovered == 0
    states = counts_by_state(world.engine)
    assert (states["sent"], states["pending"], states["unknown"]) == (REQUESTS, 0, 0)
    assert world.max_sends() == 1


async def test_a_stopped_sender_claims_nothing_and_says_so(world: World) -> None:
    """After `request_stop`, a run claims no request: all stay `pending`, `stopped` set."""
    queue_requests(world.engine, 3)
    sender = world.sender()
    sender.request_stop()
    counts = await sender.run(None)
    assert (counts.sent, counts.stopped, counts.outcome) == (0, True, "ok")
    states = counts_by_state(world.engine)
    assert (states["pending"], states["sending"], states["sent"]) == (3, 0, 0)
    assert world.max_sends() == 0


def test_the_grace_period_outlasts_one_call_and_fits_the_systemd_stop_timeout() -> None:
    """The default grace covers a send's connect and read timeouts, and systemd waits
    longer than the grace before it kills the daemon."""
    settings = Settings()
    grace = shutdown_grace_seconds(settings)
    assert grace > settings.voxares.connect_timeout + settings.voxares.read_timeout
    unit = (ROOT / "deploy/systemd/voxares-syncd.service").read_text(encoding="utf-8")
    match = re.search(r"^TimeoutStopSec=(\d+)$", unit, re.MULTILINE)
    assert match is not None
    assert int(match.group(1)) > grace
