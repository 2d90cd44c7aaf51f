"""The poller against a server written from the contract alone (`tests/adversarial.py`).

Hypothesis draws the server's freedoms (microsecond or millisecond storage, floor or round
rendering, ties on one millisecond, shuffled lists, writes landing between page requests,
writes made visible up to two minutes late, a lagging detail replica) and a history of
writes. The poller runs on its schedule through it, sweeps included; then the replica
catches up, and one more run after the next sweep is due must leave, for every submission:

- its final version emitted exactly once, no version emitted twice;
- its versions emitted in non-decreasing `updatedAt` order (never an older one after a newer).
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from syncd.state.db import make_engine, upgrade
from syncd.state.models import OutboxEvent
from syncd.submissions.poller import PollCounts, SubmissionPoller
from syncd.submissions.sweep import Sweep
from syncd.voxares.client import VoxaresClient
from syncd.voxares.limits import ClientLimits
from syncd.voxares.retry import RetryPolicy
from tests.adversarial import EPOCH, PREFIX, AdversarialServer, Write

STATUSES = ("Pending", "Opened", "Completed")
SECOND = 1_000_000  # microseconds
OVERLAP, SETTLE = 2.0, 1.0
SWEEP = Sweep("daily", timedelta(seconds=30), timedelta(seconds=600))


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """One migrated SQLite state database; every example uses its own submission ids."""
    path: Path = tmp_path_factory.mktemp("adversarial") / "state.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    yield engine
    engine.dispose()


@st.composite
def histories(draw: st.DrawFn) -> dict[str, list[Write]]:
    """Submissions with 1-3 writes each, stamped on a few shared milliseconds (ties)."""
    prefix = uuid.uuid4().hex[:8]
    slots = draw(st.lists(st.integers(0, 20_000), min_size=1, max_size=6, unique=True))
    fine = draw(st.booleans())
    writes: dict[str, list[Write]] = {}
    for n in range(draw(st.integers(1, 24))):
        sid = f"{prefix}-{n}"
        count = draw(st.integers(1, len(STATUSES)))
        base_ms = draw(st.sampled_from(slots))
        steps = draw(st.lists(st.integers(0, 4_000), min_size=count, max_size=count))
        visible, stamp_ms, history = 0, base_ms, []
        for k in range(count):
            stamp_ms += steps[k] if k else 0
            sub_ms = draw(st.integers(0, 999)) if fine else 0
            stamp = stamp_ms * 1000 + sub_ms + k  # strictly increasing per submission
            late = draw(st.sampled_from([0, 0, 0, 0, 300_000, 5 * SECOND, 40 * SECOND, 120 * SECOND]))
            visible = max(visible, stamp + late)
            history.append(Write(sid, stamp, visible, STATUSES[k]))
        writes[sid] = history
    return writes


def emitted(engine: Engine, ids: set[str]) -> list[tuple[str, str, str]]:
    """(id, updatedAt, status) of this example's form_submission.updated events, in seq order."""
    with Session(engine) as session:
        rows = session.scalars(
            select(OutboxEvent)
            .where(OutboxEvent.event_type == "form_submission.updated")
            .order_by(OutboxEvent.seq)
        ).all()
    out = []
    for row in rows:
        submission = json.loads(row.payload)["submission"]
        if submission["id"] in ids:
            out.append((submission["id"], submission["updatedAt"], submission["status"]))
    return out


async def run_through(server: AdversarialServer, engine: Engine, stream: str) -> PollCounts:
    """Poll every few seconds of server time until every write is visible and swept."""
    client = VoxaresClient(
        base_url="http://adversarial" + PREFIX,
        api_key="vox-test-adversarial000000000000",
        transport=server.transport(),
        limits=ClientLimits(requests_per_second=None, max_concurrency=8),
        retry=RetryPolicy.no_wait(),
    )
    poller = SubmissionPoller(
        engine,
        client,
        overlap=OVERLAP,
        settle=SETTLE,
        page_size=5,
        max_window_seconds=60,
        max_window_items=10,
        detail_concurrency=4,
        start_from=EPOCH - timedelta(seconds=1),
        provider="ehr",
        stream=stream,
        stale_wait=0,
        sweeps=[SWEEP],
    )
    rng = random.Random(0)
    last_visible = max(w.visible_us for ws in server.writes.values() for w in ws)
    total = PollCounts()
    try:
        while server.clock_us <= last_visible + 2 * SECOND:
            _add(total, await poller.run(None))
            server.clock_us += rng.randrange(1 * SECOND, 8 * SECOND)
        server.detail_lag_rate = 0.0  # the replica catches up ("briefly older")
        server.clock_us += int(SWEEP.interval.total_seconds() * SECOND)
        _add(total, await poller.run(None))
    finally:
        await client.aclose()
    return total


def _add(total: PollCounts, run: PollCounts) -> None:
    for name, value in run.as_dict().items():
        setattr(total, name, getattr(total, name) + value)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    writes=histories(),
    precision=st.sampled_from([1, 1000]),
    rounding=st.sampled_from(["floor", "round"]),
    lag=st.sampled_from([0.0, 0.0, 0.2, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_every_final_version_is_emitted_exactly_once(
    engine: Engine,
    writes: dict[str, list[Write]],
    precision: int,
    rounding: str,
    lag: float,
    seed: int,
) -> None:
    """Whatever the server's storage, order, paging, visibility and replicas: each final
    version once, nothing twice, never an older version after a newer one."""
    server = AdversarialServer(
        writes,
        random.Random(seed),
        precision_us=precision,
        rounding=rounding,  # type: ignore[arg-type]
        detail_lag_rate=lag,
    )
    stream = "adv-" + next(iter(writes)).split("-")[0]
    asyncio.run(run_through(server, engine, stream))
    got = emitted(engine, set(writes))
    versions = [(sid, at) for sid, at, _ in got]
    assert len(got) == len(set(got)), "a version was emitted twice"
    final = server.final()
    for sid, at in final.items():
        statuses = [status for s, a, status in got if (s, a) == (sid, at)]
        assert writes[sid][-1].status in statuses, f"final version of {sid} never emitted"
    for sid in writes:
        mine = [at for s, at in versions if s == sid]
        assert mine == sorted(mine), f"{sid}: an older version was emitted after a newer one"


def test_the_server_hides_a_microsecond_tail_from_a_millisecond_bound() -> None:
    """The independent server really compares stored microseconds (the loss the poller must
    survive): an item at .123456 matches neither updatedTo=.123 nor updatedFrom=.124."""
    write = Write("s", 123_456, 0, "Completed")
    server = AdversarialServer({"s": [write]}, random.Random(1), tick_us=0)
    client = VoxaresClient(
        base_url="http://adversarial" + PREFIX,
        api_key="vox-test-adversarial000000000000",
        transport=server.transport(),
        retry=RetryPolicy.no_wait(),
    )
    from syncd.voxares.models import SubmissionFilters

    async def count(low_ms: int, high_ms: int) -> int:
        filters = SubmissionFilters(
            updated_from=EPOCH + timedelta(milliseconds=low_ms),
            updated_to=EPOCH + timedelta(milliseconds=high_ms),
        )
        return (await client.list_form_submissions(filters)).count

    async def probe() -> tuple[int, int, int]:
        try:
            return await count(0, 123), await count(124, 200), await count(123, 124)
        finally:
            await client.aclose()

    assert asyncio.run(probe()) == (0, 0, 1)
