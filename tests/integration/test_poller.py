"""The submission poller against the in-process sandbox (with its faults) and a real database.

Every scenario ends with the same proof: each submission's LATEST version (per the
sandbox's own version history) is in the outbox exactly once, and no (id, updatedAt) pair
was emitted twice.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import stamina
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from structlog.testing import capture_logs

from syncd import testing_hooks
from syncd.sandbox.app import create_app
from syncd.sandbox.faults import FaultConfig
from syncd.sandbox.state import DEMO_API_KEY, Sandbox
from syncd.state.db import make_engine, upgrade
from syncd.state.models import AuditEntry, OutboxEvent, PatientMirror, SubmissionVersion
from syncd.submissions import poller as poller_module
from syncd.submissions.poller import PollCounts, SubmissionPoller
from syncd.submissions.store import PollerStore
from syncd.voxares.client import VoxaresClient
from syncd.voxares.contract import API_PREFIX, format_timestamp, parse_timestamp
from syncd.voxares.limits import ClientLimits
from syncd.voxares.retry import RetryPolicy
from syncd.voxares.testing import SERVER_DATE
from tests.waiting import async_wait_until

SETTLE = timedelta(seconds=2)
STREAM = "form_submissions"


class Clock:
    """The sandbox's clock, moved by hand; starts near real time so offsets mean something."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def to_next_second(self) -> None:
        self.now = self.now.replace(microsecond=0) + timedelta(seconds=1)


@dataclass
class World:
    """A sandbox with patients, a client to it, and a migrated state database."""

    sandbox: Sandbox
    clock: Clock
    app: Any
    client: VoxaresClient
    engine: Engine
    start: datetime

    @property
    def practice(self) -> str:
        return self.sandbox.demo_practice_id

    def poller(self, **overrides: Any) -> SubmissionPoller:
        options: dict[str, Any] = {
            "overlap": 1.0,
            "settle": SETTLE,
            "page_size": 20,
            "max_window_seconds": 120,
            "max_window_items": 60,
            "detail_concurrency": 8,
            "start_from": self.start,
            "provider": "ehr",
            "stale_wait": 0.0,
        }
        options.update(overrides)
        return SubmissionPoller(self.engine, self.client, **options)

    def set_faults(self, **faults: Any) -> None:
        self.app.state.faults.configure(FaultConfig(**faults))
        self.sandbox.clock_offset = timedelta(seconds=faults.get("clock_offset_seconds", 0.0))

    def activity(self, steps: int, per_step: int = 3, seconds: float = 0.5) -> None:
        """Busy life on the server: new submissions and status moves, time passing."""
        for _ in range(steps):
            self.clock.advance(seconds)
            self.sandbox.tick(per_step)

    async def catch_up(self, poller: SubmissionPoller | None = None) -> PollCounts:
        """Let everything settle, switch faults off, and poll until nothing is left."""
        self.set_faults(clock_offset_seconds=self.sandbox.clock_offset.total_seconds())
        self.clock.advance(SETTLE.total_seconds() + 2)
        return await (poller or self.poller()).run(None)


def emitted(engine: Engine) -> list[dict[str, Any]]:
    """Every form_submission.updated payload in the outbox, in seq order."""
    with Session(engine) as session:
        rows = session.scalars(select(OutboxEvent).order_by(OutboxEvent.seq)).all()
        return [json.loads(r.payload) for r in rows if r.event_type == "form_submission.updated"]


def assert_latest_versions_emitted_once(world: World) -> None:
    """The invariant every scenario ends with (see the module docstring)."""
    pairs = [(p["submission"]["id"], p["submission"]["updatedAt"]) for p in emitted(world.engine)]
    assert len(pairs) == len(set(pairs)), "an (id, updatedAt) was emitted twice"
    latest: dict[str, str] = {}
    for version in world.sandbox.submission_versions(world.practice):
        latest[version["id"]] = max(latest.get(version["id"], ""), version["updatedAt"])
    assert latest, "the scenario made no submissions"
    missing = set(latest.items()) - set(pairs)
    assert not missing, f"{len(missing)} latest versions never emitted"
    with Session(world.engine) as session:
        versions = session.scalar(select(func.count()).select_from(SubmissionVersion))
        events = session.scalar(select(func.count()).select_from(OutboxEvent))
    assert versions == events == len(pairs)


async def make_world(url: str, *, seed: int = 1, patients: int = 40) -> AsyncIterator[World]:
    clock = Clock()
    sandbox = Sandbox(seed=seed, clock=clock)
    app = create_app(sandbox, FaultConfig())
    ids = sandbox.seed_patients(sandbox.demo_practice_id, patients)
    engine = make_engine(url)
    upgrade(engine)
    # Half the patients were created through the mirror: their EHR id is known.
    with Session(engine) as session, session.begin():
        for n, patient_id in enumerate(ids[::2]):
            session.add(
                PatientMirror(
                    provider="ehr",
                    provider_id=f"P-{n}",
                    voxares_patient_id=patient_id,
                    payload_hash="0" * 64,
                    payload="{}",
                    first_pushed_at=clock.now,
                    last_pushed_at=clock.now,
                    last_seen_at=clock.now,
                )
            )
    client = VoxaresClient(
        base_url="http://sandbox" + API_PREFIX,
        api_key=DEMO_API_KEY,
        transport=httpx.ASGITransport(app=app),
        limits=ClientLimits(requests_per_second=None, max_concurrency=16),
        retry=RetryPolicy.no_wait(),
    )
    try:
        yield World(sandbox, clock, app, client, engine, start=clock.now - timedelta(minutes=5))
    finally:
        await client.aclose()
        engine.dispose()


@pytest.fixture
async def world(sqlite_url: str) -> AsyncIterator[World]:
    async for w in make_world(sqlite_url):
        yield w


@pytest.fixture(autouse=True)
def no_crash_hook() -> Iterator[None]:
    yield
    testing_hooks.set_callback(None)


def total(counts: list[PollCounts]) -> PollCounts:
    out = PollCounts()
    for c in counts:
        for name, value in c.as_dict().items():
            setattr(out, name, getattr(out, name) + value)
    return out


# --- scenarios ---------------------------------------------------------------------------


async def test_quiet_stream_emits_each_version_with_its_ehr_id(world: World) -> None:
    """Without faults every latest version is emitted once, with providerId from the mirror."""
    world.activity(20)
    first = await world.poller().run(7)
    world.activity(20)
    await world.catch_up()
    assert first.emitted > 0
    assert_latest_versions_emitted_once(world)
    payloads = emitted(world.engine)
    mirrored = [p for p in payloads if p["patient"]["providerId"] is not None]
    assert mirrored
    assert all(p["patient"]["provider"] == "ehr" for p in mirrored)
    assert all(p["patient"]["voxaresId"] for p in payloads)
    assert any(p["answers"] for p in payloads if p["submission"]["status"] == "Completed")
    with Session(world.engine) as session:
        audited = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "submission.received")
        ).all()
    assert len(audited) == len(payloads)
    assert any(a.run_id == 7 for a in audited)


async def test_shuffled_list_order_loses_nothing(world: World) -> None:
    """Every list request in a new random order: windows re-list/split until provably whole."""
    world.set_faults(shuffle_lists=True, seed=3)
    runs = []
    for _ in range(3):
        world.activity(25, per_step=4)
        runs.append(await world.poller().run(None))
    runs.append(await world.catch_up())
    assert total(runs).relists > 0
    assert total(runs).splits > 0
    assert_latest_versions_emitted_once(world)


async def test_many_submissions_sharing_one_timestamp_at_a_window_edge(world: World) -> None:
    """260 submissions on one millisecond at the window's end are all emitted, once."""
    world.activity(10)
    world.clock.to_next_second()
    edge = world.clock.now - SETTLE  # the end of the window the next run polls
    ids = world.sandbox.seed_submissions(world.practice, 260, at=edge, status="Opened")
    world.set_faults(shuffle_lists=True, seed=5)
    poller = world.poller(page_size=100, max_window_items=100)
    first = await poller.run(None)
    assert first.splits > 0  # narrowed down to the zero-width window at the edge
    assert first.listed >= 260
    # Some of them move on; the next window re-lists the edge (overlap): the versions
    # already recorded cost no detail read and emit nothing twice.
    for submission_id in ids[:30]:
        world.clock.advance(0.01)
        world.sandbox.advance_submission(submission_id)
    second = await world.catch_up(poller)
    assert second.known_skipped >= 230
    assert second.details == second.emitted
    assert_latest_versions_emitted_once(world)


async def test_updates_and_inserts_between_page_requests(world: World) -> None:
    """Submissions updated and inserted while a window is paged: re-listed, none lost."""
    world.set_faults(mutate_during_paging=0.6, mutate_count=3, seed=11, list_order="updated_asc")
    runs = []
    for _ in range(3):
        world.activity(30, per_step=4)
        runs.append(await world.poller(page_size=10).run(None))
    runs.append(await world.catch_up())
    assert total(runs).relists > 0
    assert_latest_versions_emitted_once(world)


@pytest.mark.parametrize("offset_seconds", [600.0, -600.0])
async def test_server_clock_ten_minutes_off(world: World, offset_seconds: float) -> None:
    """Windows follow the server's Date, not ours, whichever way its clock is off."""
    world.set_faults(clock_offset_seconds=offset_seconds)
    world.start = world.sandbox.now() - timedelta(minutes=5)
    runs = []
    for _ in range(4):
        world.activity(10, seconds=1.0)
        runs.append(await world.poller().run(None))
    # Emitted up to the server's horizon, not ours: the last run's window ended within
    # settle + 1 s (the Date header's resolution) of the server's clock.
    state = PollerStore(world.engine, STREAM).load()
    assert state.watermark is not None
    lag = world.sandbox.now() - state.watermark
    assert SETTLE <= lag <= SETTLE + timedelta(seconds=1)
    await world.catch_up()
    assert_latest_versions_emitted_once(world)


class Crash(Exception):
    """Stands in for a killed process."""


def crash_at(step: str, nth: int) -> None:
    reached = 0

    def hook(name: str) -> None:
        nonlocal reached
        if name == step:
            reached += 1
            if reached == nth:
                raise Crash(name)

    testing_hooks.set_callback(hook)


@pytest.mark.parametrize(
    ("step", "nth"),
    [
        (poller_module.STEP_WINDOW_SAVED, 1),
        (poller_module.STEP_AFTER_PAGE, 2),
        (poller_module.STEP_AFTER_DETAIL, 15),
        (poller_module.STEP_AFTER_OUTBOX_INSERT, 1),
        (poller_module.STEP_BEFORE_WATERMARK, 1),
        (poller_module.STEP_AFTER_WATERMARK, 1),
    ],
)
async def test_crash_mid_window_resumes_the_saved_window(world: World, step: str, nth: int) -> None:
    """A run that dies at any step leaves its window saved; a new poller resumes exactly it."""
    world.activity(40, per_step=4)
    crash_at(step, nth)
    with pytest.raises(Crash):
        await world.poller(page_size=10, max_window_items=30).run(None)
    testing_hooks.set_callback(None)
    saved = PollerStore(world.engine, STREAM).load()
    world.activity(10)  # time moves on: a recomputed window would differ from the saved one
    with capture_logs() as logs:
        await world.poller(page_size=10, max_window_items=30).run(None)
    resumed = [e for e in logs if e["event"] == "poller.window_resumed"]
    if step == poller_module.STEP_AFTER_WATERMARK:
        assert saved.window is None
        assert saved.watermark is not None
        assert not resumed
    else:
        assert saved.window is not None
        assert [(e["window_start"], e["window_end"]) for e in resumed] == [
            (format_timestamp(saved.window.start), format_timestamp(saved.window.end))
        ]
    await world.catch_up()
    assert_latest_versions_emitted_once(world)


# --- details: stale and newer reads ------------------------------------------------------


class DetailTwister(httpx.AsyncBaseTransport):
    """Wraps the sandbox transport to make detail reads lag behind, or the data move on."""

    def __init__(
        self, inner: httpx.AsyncBaseTransport, world: World, *, stale_reads: int, advance: int
    ) -> None:
        self.inner = inner
        self.world = world
        self.stale_reads = stale_reads  # each detail is this many times one second old first
        self.advance = advance  # this many submissions move on just before their detail read
        self.reads: dict[str, int] = {}
        self.advanced: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        prefix = API_PREFIX + "/form-submissions/"
        if request.method != "GET" or not path.startswith(prefix):
            return await self.inner.handle_async_request(request)
        submission_id = path.removeprefix(prefix)
        status = self.world.sandbox.submissions[submission_id].status
        if len(self.advanced) < self.advance and status in {"Pending", "Opened"}:
            self.world.sandbox.advance_submission(submission_id)
            self.advanced.append(submission_id)
        response = await self.inner.handle_async_request(request)
        self.reads[submission_id] = self.reads.get(submission_id, 0) + 1
        if self.reads[submission_id] > self.stale_reads:
            return response
        body = json.loads(await response.aread())
        body["updatedAt"] = format_timestamp(
            parse_timestamp(body["updatedAt"]) - timedelta(seconds=1)
        )
        return httpx.Response(
            response.status_code, json=body, headers={"Date": response.headers["Date"]}
        )


def twist(world: World, **kw: int) -> DetailTwister:
    twister = DetailTwister(httpx.ASGITransport(app=world.app), world, **kw)
    world.client = VoxaresClient(
        base_url="http://sandbox" + API_PREFIX,
        api_key=DEMO_API_KEY,
        transport=twister,
        limits=ClientLimits(requests_per_second=None, max_concurrency=16),
        retry=RetryPolicy.no_wait(),
    )
    return twister


async def test_stale_detail_is_refetched_until_current(world: World) -> None:
    """A detail older than listed is read again; once current it is emitted normally."""
    world.activity(10)
    twist(world, stale_reads=2, advance=0)
    counts = await world.poller(stale_attempts=4).run(None)
    assert counts.stale_details == 2 * counts.listed > 0
    await world.catch_up()
    assert_latest_versions_emitted_once(world)


async def test_rereads_keep_their_schedule_and_retry_hooks(world: World) -> None:
    """The first read is made outside stamina and its failure replayed into it: every
    submission is still read exactly `stale_reads + 1` times, and stamina's retry hooks
    still see retries 1 and 2 after the first and second stale read, waiting `stale_wait`
    and then twice that."""
    world.activity(10)
    twister = twist(world, stale_reads=2, advance=0)
    seen: list[tuple[int, float, str]] = []

    def hook(details: stamina.instrumentation.RetryDetails) -> None:
        seen.append(
            (details.retry_num, round(details.wait_for, 6), type(details.caused_by).__name__)
        )

    hooks = stamina.instrumentation.get_on_retry_hooks()
    stamina.instrumentation.set_on_retry_hooks([hook])
    try:
        counts = await world.poller(stale_attempts=4, stale_wait=0.001).run(None)
    finally:
        stamina.instrumentation.set_on_retry_hooks(hooks)
    assert counts.listed == len(twister.reads) > 0
    assert set(twister.reads.values()) == {3}
    assert counts.stale_details == 2 * counts.listed
    assert sorted(seen) == sorted(
        [(1, 0.001, "_StillStale"), (2, 0.002, "_StillStale")] * counts.listed
    )
    assert counts.deferred == 0


async def test_persistently_stale_detail_is_left_to_the_sweep_not_the_stream(
    world: World,
) -> None:
    """Still stale after every read: deferred, the stream moves on, the sweep emits it once."""
    world.activity(10)
    twister = twist(world, stale_reads=3, advance=0)
    first = await world.poller(stale_attempts=3).run(None)
    assert first.deferred == first.listed > 0
    assert emitted(world.engine) == []  # an older state is never emitted for a newer one
    state = PollerStore(world.engine, STREAM).load()
    assert state.window is None
    assert state.watermark is not None
    twister.stale_reads = 0
    swept = await world.poller().reconcile(None)
    assert swept.sweep_found == first.deferred
    await world.catch_up()
    assert_latest_versions_emitted_once(world)


async def test_detail_newer_than_listed_is_emitted_as_read(world: World) -> None:
    """A submission that moves on between list and detail is emitted in its newer version."""
    world.activity(5)
    world.sandbox.seed_submissions(world.practice, 10)  # Pending: they can move on
    world.clock.advance(5)
    twister = twist(world, stale_reads=0, advance=5)
    await world.poller().run(None)
    assert len(twister.advanced) == 5
    newest = {
        p["submission"]["id"]: p["submission"]["updatedAt"]
        for p in emitted(world.engine)
        if p["submission"]["id"] in twister.advanced
    }
    for submission_id in twister.advanced:
        current = world.sandbox.submissions[submission_id].updated_at
        assert newest[submission_id] == format_timestamp(current)
    await world.catch_up()
    assert_latest_versions_emitted_once(world)


class InFlight(httpx.AsyncBaseTransport):
    """Wraps the sandbox transport to measure how many detail reads run at once."""

    def __init__(self, inner: httpx.AsyncBaseTransport, expected: int) -> None:
        self.inner = inner
        self.expected = expected
        self.now = 0
        self.peak = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if "/form-submissions/" not in request.url.path:
            return await self.inner.handle_async_request(request)
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            # The first reads wait until `expected` run at once, however slowly they come;
            # then each lingers, so one more at once would show.
            await async_wait_until(lambda: self.peak >= self.expected, "concurrent reads")
            await asyncio.sleep(0.002)
            return await self.inner.handle_async_request(request)
        finally:
            self.now -= 1


async def test_detail_reads_are_concurrent_but_bounded(world: World) -> None:
    """Details are fetched in parallel, never more than detail_concurrency at once."""
    world.activity(20)
    meter = InFlight(httpx.ASGITransport(app=world.app), expected=3)
    world.client = VoxaresClient(
        base_url="http://sandbox" + API_PREFIX,
        api_key=DEMO_API_KEY,
        transport=meter,
        limits=ClientLimits(requests_per_second=None, max_concurrency=16),
        retry=RetryPolicy.no_wait(),
    )
    counts = await world.poller(detail_concurrency=3).run(None)
    assert counts.details > 3
    assert meter.peak == 3


# --- logs and PostgreSQL -----------------------------------------------------------------


async def test_logs_carry_ids_and_counts_never_patient_data(world: World) -> None:
    """No patient name, phone or answer reaches the logs of a run."""
    world.activity(20)
    with capture_logs() as logs:
        await world.catch_up()
    text = json.dumps(logs, default=str)
    assert any(e["event"] == "poller.batch_recorded" for e in logs)
    for patient in world.sandbox.practices[world.practice].patients.values():
        for value in (patient.first_name, patient.last_name, patient.mobile_number):
            assert not value or value not in text
    assert "data:image" not in text


@pytest.mark.postgres
async def test_on_postgresql_with_shuffle_and_mutation(postgres_url: str) -> None:
    """The full fault mix on the real PostgreSQL state database."""
    async for world in make_world(postgres_url, seed=4):
        world.set_faults(shuffle_lists=True, mutate_during_paging=0.5, mutate_count=2, seed=9)
        runs = []
        for _ in range(3):
            world.activity(25, per_step=4)
            runs.append(await world.poller(page_size=10).run(None))
        runs.append(await world.catch_up())
        assert total(runs).relists > 0
        assert_latest_versions_emitted_once(world)


class GoneDetails(httpx.AsyncBaseTransport):
    """Wraps the sandbox transport: the detail of the chosen submissions answers `status`."""

    def __init__(self, inner: httpx.AsyncBaseTransport, gone: set[str], status: int) -> None:
        self.inner = inner
        self.gone = gone
        self.status = status

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        prefix = API_PREFIX + "/form-submissions/"
        if request.url.path.removeprefix(prefix) in self.gone:
            body = {"statusCode": self.status, "message": "gone"}
            return httpx.Response(self.status, json=body, headers={"Date": SERVER_DATE})
        return await self.inner.handle_async_request(request)


@pytest.mark.parametrize("status", [404, 403, 410])
async def test_a_listed_submission_gone_at_its_detail_is_recorded_removed(
    world: World, status: int
) -> None:
    """Detail 404/403/410 on every read: a form_submission.removed event, the window completes."""
    world.activity(6)
    gone = set(list(world.sandbox.submissions)[:2])
    world.client = VoxaresClient(
        base_url="http://sandbox" + API_PREFIX,
        api_key=DEMO_API_KEY,
        transport=GoneDetails(httpx.ASGITransport(app=world.app), gone, status),
        retry=RetryPolicy.no_wait(),
    )
    counts = await world.catch_up(world.poller(stale_attempts=2, stale_wait=0))
    assert counts.removed == len(gone)
    with Session(world.engine) as session:
        removed = session.scalars(
            select(OutboxEvent).where(OutboxEvent.event_type == "form_submission.removed")
        ).all()
    payloads = [json.loads(r.payload)["submission"] for r in removed]
    assert {p["id"] for p in payloads} == gone
    assert {p["detailStatus"] for p in payloads} == {status}
    state = PollerStore(world.engine, STREAM).load()
    assert state.window is None  # not a failed window


async def test_a_poll_that_finds_nothing_new_is_idle(world: World) -> None:
    """Re-listing recorded versions is looking, not work: the run is idle (logged at DEBUG by
    the runner), while a run that emitted is not."""
    world.activity(5)
    first = await world.catch_up()
    assert first.emitted > 0
    assert not first.idle
    again = await world.catch_up()
    assert again.windows > 0  # it did poll
    assert again.emitted == 0
    assert again.idle
