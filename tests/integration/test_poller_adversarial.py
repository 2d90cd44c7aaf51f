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
import contextlib
import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from structlog.testing import capture_logs

from syncd.exceptions import SyncdError
from syncd.state.db import make_engine, upgrade
from syncd.state.models import OutboxEvent
from syncd.submissions.poller import PollCounts, SubmissionPoller
from syncd.submissions.sweep import Sweep
from syncd.voxares.client import VoxaresClient
from syncd.voxares.limits import ClientLimits
from syncd.voxares.models import SubmissionFilters
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
            late = draw(
                st.sampled_from([0, 0, 0, 0, 300_000, 5 * SECOND, 40 * SECOND, 120 * SECOND])
            )
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


# --- targeted cases on the same server ----------------------------------------------------


def _poller(
    engine: Engine, client: VoxaresClient, stream: str, **overrides: object
) -> SubmissionPoller:
    options: dict[str, object] = {
        "overlap": OVERLAP,
        "settle": SETTLE,
        "page_size": 5,
        "max_window_seconds": 60,
        "max_window_items": 10,
        "detail_concurrency": 4,
        "start_from": EPOCH - timedelta(seconds=1),
        "provider": "ehr",
        "stream": stream,
        "stale_wait": 0,
        "sweeps": [SWEEP],
    }
    options.update(overrides)
    return SubmissionPoller(engine, client, **options)  # type: ignore[arg-type]


def _client(transport: httpx.AsyncBaseTransport, attempts: int = 5) -> VoxaresClient:
    return VoxaresClient(
        base_url="http://adversarial" + PREFIX,
        api_key="vox-test-adversarial000000000000",
        transport=transport,
        limits=ClientLimits(requests_per_second=None, max_concurrency=8),
        retry=replace(RetryPolicy.no_wait(), attempts=attempts),
    )


def _quiet(n: int, prefix: str) -> dict[str, list[Write]]:
    """n submissions completed one second apart, all visible at once."""
    return {
        f"{prefix}-{k}": [Write(f"{prefix}-{k}", k * SECOND, k * SECOND, "Completed")]
        for k in range(n)
    }


def test_a_write_visible_after_the_overlap_is_found_by_the_sweep_and_reported(
    engine: Engine,
) -> None:
    """A write made visible 90 s after its stamp (overlap 2 s): polling cannot see it, the
    next due sweep emits it, counts it and logs how late it was (ids only)."""
    prefix = uuid.uuid4().hex[:8]
    writes = _quiet(5, prefix)
    late = f"{prefix}-late"
    writes[late] = [Write(late, 2 * SECOND + 500, 92 * SECOND, "Completed")]
    server = AdversarialServer(writes, random.Random(3), tick_us=0)

    async def scenario() -> tuple[PollCounts, PollCounts]:
        client = _client(server.transport())
        poller = _poller(engine, client, "adv-late-" + prefix)
        try:
            server.clock_us = 20 * SECOND
            first = await poller.run(None)  # the first sweep runs at once (never swept)
            server.clock_us = 95 * SECOND  # the late write is visible; its stamp is far
            with capture_logs() as logs:  # behind the poll window, and a sweep is due
                second = await poller.run(None)
        finally:
            await client.aclose()
        found = [e for e in logs if e["event"] == "poller.sweep_found"]
        assert [e["submission_id"] for e in found] == [late]
        assert found[0]["log_level"] == "warning"
        assert found[0]["late_seconds"] >= 90
        return first, second

    first, second = asyncio.run(scenario())
    assert first.sweep_found == 0
    assert second.sweep_found == 1
    assert (late, server.final()[late], "Completed") in emitted(engine, {late})


def test_a_sweep_over_recorded_submissions_reads_no_detail(engine: Engine) -> None:
    """A sweep over 200 submissions already recorded makes list calls only, ~count/100
    (on a server whose order is stable between requests; a shuffling one costs splits)."""
    prefix = uuid.uuid4().hex[:8]
    server = AdversarialServer(_quiet(200, prefix), random.Random(4), tick_us=0, shuffle=False)

    async def scenario() -> dict[str, int]:
        client = _client(server.transport())
        poller = _poller(engine, client, "adv-cost-" + prefix, page_size=100, max_window_items=2000)
        try:
            server.clock_us = 300 * SECOND
            await poller.run(None)
            before = dict(server.requests)
            counts = await poller.reconcile(None, since=EPOCH - timedelta(seconds=1))
            assert counts.known_skipped == 200
            assert counts.sweep_found == 0
            return {k: server.requests[k] - before[k] for k in before}
        finally:
            await client.aclose()

    calls = asyncio.run(scenario())
    assert calls["detail"] == 0
    assert calls["list"] <= 2 + 1  # two pages of 100 (+ the clock read)


def _clustered(seconds: int, per_second: int, prefix: str) -> dict[str, list[Write]]:
    """`per_second` submissions completed at each whole second, ids in time order (so a
    server listing by id lists by creation, as seeded or batch-imported data does)."""
    writes = {}
    for k in range(seconds * per_second):
        sid = f"{prefix}-{k:06d}"
        stamp = (k // per_second) * SECOND + 250
        writes[sid] = [Write(sid, stamp, stamp, "Completed")]
    return writes


def test_clustered_oversized_windows_cost_about_one_list_call_per_page(engine: Engine) -> None:
    """1,000 submissions, 10 per second, pages of 10 and windows of at most 50 items: the
    first poll and a sweep each list about 100 pages, not one cut per page as halving at the
    first page's median did (~2 calls per 10 items); everything is emitted once."""
    prefix = uuid.uuid4().hex[:8]
    server = AdversarialServer(_clustered(100, 10, prefix), random.Random(9), tick_us=0)
    server.shuffle = False

    async def scenario() -> tuple[int, int, PollCounts]:
        client = _client(server.transport())
        poller = _poller(
            engine, client, "adv-cluster-" + prefix, page_size=10, max_window_items=50, sweeps=[]
        )
        try:
            server.clock_us = 400 * SECOND
            await poller.run(None)
            polled = server.requests["list"]
            swept = await poller.reconcile(None, since=EPOCH - timedelta(seconds=1))
            return polled, server.requests["list"] - polled, swept
        finally:
            await client.aclose()

    polled, sweep_calls, swept = asyncio.run(scenario())
    pages = 1000 // 10
    assert pages + 1 <= polled <= pages + 1 + 6  # + the clock; a few cuts learning the pace
    assert pages + 1 <= sweep_calls <= pages + 1 + 6
    assert swept.known_skipped == 1000
    assert swept.sweep_found == 0
    got = emitted(engine, set(server.writes))
    assert sorted((s, a) for s, a, _ in got) == sorted(server.final().items())


def test_a_first_run_leaves_the_due_sweep_to_the_next_run(engine: Engine) -> None:
    """The first run listed everything the sweep would re-list moments later: the sweep
    stays due and the next run makes it, over the same lookback."""
    prefix = uuid.uuid4().hex[:8]
    server = AdversarialServer(_quiet(300, prefix), random.Random(10), tick_us=0, shuffle=False)
    sweep = Sweep("daily", timedelta(seconds=30), timedelta(seconds=120))

    async def scenario() -> tuple[PollCounts, int, PollCounts, int]:
        client = _client(server.transport())
        poller = _poller(
            engine,
            client,
            "adv-defer-" + prefix,
            page_size=100,
            max_window_items=2000,
            sweeps=[sweep],
        )
        try:
            server.clock_us = 310 * SECOND
            first = await poller.run(None)
            first_calls = server.requests["list"]
            server.clock_us += 5 * SECOND
            second = await poller.run(None)
            return first, first_calls, second, server.requests["list"] - first_calls
        finally:
            await client.aclose()

    first, first_calls, second, second_calls = asyncio.run(scenario())
    assert first.sweeps == 0
    assert first_calls == 1 + 3  # the clock and 300 submissions in pages of 100
    assert second.sweeps == 1  # still due, swept by the next run
    # The clock, the new (empty) window, and the sweep's last 120 s: two pages of the 105
    # submissions stamped 195 s to 299 s, all recorded by the first run.
    assert second_calls == 1 + 1 + 2
    assert second.known_skipped == 105
    assert second.details == 0


class _Flaky(httpx.AsyncBaseTransport):
    """Answers a share of requests with 503 before they reach the server."""

    def __init__(self, inner: httpx.AsyncBaseTransport, rate: float, seed: int) -> None:
        self.inner = inner
        self.rate = rate
        self.rng = random.Random(seed)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.rng.random() < self.rate:
            return httpx.Response(503, json={"statusCode": 503, "message": "unavailable"})
        return await self.inner.handle_async_request(request)


def test_runs_converge_under_heavy_faults_by_keeping_their_progress(engine: Engine) -> None:
    """44% of answers are 503 and a call gives up after 2 attempts: runs fail, but each keeps
    what it did (recorded details, completed parts), so repeated runs emit everything once."""
    prefix = uuid.uuid4().hex[:8]
    server = AdversarialServer(_quiet(120, prefix), random.Random(5), tick_us=0)
    flaky = _Flaky(server.transport(), rate=0.44, seed=6)

    async def scenario() -> tuple[int, int]:
        client = _client(flaky, attempts=2)
        poller = _poller(engine, client, "adv-faults-" + prefix, sweeps=[])
        server.clock_us = 200 * SECOND
        failed = runs = 0
        try:
            while runs < 200:
                runs += 1
                try:
                    await poller.run(None)
                except SyncdError:
                    failed += 1
                    continue
                break
        finally:
            await client.aclose()
        return runs, failed

    runs, failed = asyncio.run(scenario())
    assert failed > 0  # the faults did fail runs
    assert runs < 200  # ... and the runs still converged
    got = emitted(engine, set(server.writes))
    assert sorted((s, a) for s, a, _ in got) == sorted(server.final().items())


class _FailAfter(httpx.AsyncBaseTransport):
    """Passes `budget` requests to the server, then answers every request with 503."""

    def __init__(self, inner: httpx.AsyncBaseTransport, budget: int) -> None:
        self.inner = inner
        self.budget = budget

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.budget -= 1
        if self.budget < 0:
            return httpx.Response(503, json={"statusCode": 503, "message": "unavailable"})
        return await self.inner.handle_async_request(request)


def test_status_shows_where_a_failed_poll_resumes_and_the_last_sweep(engine: Engine) -> None:
    """After a run fails mid-window, `status` names where polling resumes (the progress
    kept) and when the last sweep ran."""
    from syncd.status import gather_status

    prefix = uuid.uuid4().hex[:8]
    server = AdversarialServer(_quiet(60, prefix), random.Random(8), tick_us=0, shuffle=False)
    failing = _FailAfter(server.transport(), budget=10_000)

    async def scenario() -> None:
        client = _client(failing, attempts=1)
        poller = _poller(engine, client, "form_submissions", stale_attempts=1)
        server.clock_us = 30 * SECOND  # half the submissions are visible
        try:
            await poller.run(None)  # complete, and the first sweep runs
            server.clock_us = 200 * SECOND
            failing.budget = 12  # the clock, the first splits and parts, then 503s
            with contextlib.suppress(SyncdError):
                await poller.run(None)
        finally:
            await client.aclose()

    asyncio.run(scenario())
    report = gather_status(engine)
    assert report.last_sweep is not None
    assert report.window_in_progress
    assert report.watermark is not None
    assert report.window_resume_from is not None
    assert report.window_resume_from > report.watermark - timedelta(seconds=OVERLAP)
