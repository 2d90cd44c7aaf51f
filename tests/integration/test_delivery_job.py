"""OutboxDeliveryJob end to end: real databases, real webhook receivers on loopback ports
(verifying every request with `standardwebhooks.Webhook(secret).verify`), a real NDJSON sink.

The receivers fail in every way a real one does (timeouts, 500, 429 with Retry-After, 410,
400, dropped connections) and deduplicate on `webhook-id`, the way receivers are asked to.
Backoff is switched to near zero through the job's parameters, never by patching.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, text, update
from sqlalchemy.orm import Session
from standardwebhooks import Webhook, WebhookVerificationError
from structlog.testing import capture_logs

from syncd import metrics, testing_hooks
from syncd.jobs import JobRunner
from syncd.outbox import actions, queries
from syncd.outbox.backoff import BackoffPolicy
from syncd.outbox.delivery import DeliveryCounts, OutboxDeliveryJob
from syncd.outbox.events import emit
from syncd.outbox.routing import Route
from syncd.sinks.base import Answered, Delivered, DeliveryOutcome, DisableSink, EventEnvelope, Sink
from syncd.sinks.ndjson import NdjsonFileSink
from syncd.sinks.webhook import WebhookSink
from syncd.state.db import make_engine, upgrade
from syncd.state.models import JobRun, OutboxEvent
from tests.conftest import migrated_engine

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PATIENT_NAME = "Ana Horvat"
FAST = BackoffPolicy(initial_seconds=0.01, max_seconds=0.05, max_retry_after_seconds=5)
# Timings that never race the work on a busy 2-core CI box. An answer that is meant to
# arrive gets READ_TIMEOUT (a loopback answer takes milliseconds); a hang that is meant to
# time out never ends by itself, so its sink's read timeout always fires, however slow the
# machine, and TIMEOUT_READ is only how long the test waits for that.
READ_TIMEOUT = 10.0
TIMEOUT_READ = 2.0
# The job's lease (and so its deliver timeout, half of it) far above any batch's duration
# here: a lease expiring mid-batch would send the batch again (a duplicate the test did
# not ask for).
LEASE_SECONDS = 120.0


# --- databases ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def migrated(module_state_engine: Engine) -> Engine:
    """One migrated database per backend for the module."""
    return module_state_engine


def wipe(engine: Engine) -> None:
    tables = "submission_versions, outbox_deliveries, outbox_events, sink_cursors, audit_log"
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY"))
        else:
            for table in tables.split(", "):
                conn.execute(text(f"DELETE FROM {table}"))


@pytest.fixture
def engine(migrated: Engine) -> Engine:
    """The module's database (each backend), emptied of outbox state."""
    wipe(migrated)
    return migrated


@pytest.fixture(scope="module")
def sqlite_module_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A migrated SQLite database for the tests that need only one backend."""
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('delivery1')}/state.db")
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(sqlite_module_engine: Engine) -> Engine:
    """The SQLite database, emptied of outbox state."""
    wipe(sqlite_module_engine)
    return sqlite_module_engine


def add_events(
    engine: Engine, payloads: Sequence[dict[str, Any]], *, keys: Sequence[str | None] = ()
) -> list[str]:
    """Emit one event per payload (with the patient's name in it); returns their ids."""
    with Session(engine) as session, session.begin():
        events = [
            emit(
                session,
                event_type=payload.pop("type", "form_submission.updated"),
                payload={"patient": PATIENT_NAME, **payload},
                ordering_key=keys[n] if keys else None,
            )
            for n, payload in enumerate(payloads)
        ]
        return [event.event_id for event in events]


def delivery_rows(engine: Engine, sink: str) -> dict[str, queries.DeliveryView]:
    """{event_id: its delivery to `sink`}."""
    return {
        event.event_id: event.deliveries[0]
        for event in queries.list_events(engine, sink=sink, limit=10_000)
    }


# --- the receiver ---------------------------------------------------------------------------


@dataclass
class Receiver:
    """A webhook receiver on a loopback port: verifies signatures, fails as each event's
    `plan` says (one step per attempt, the last repeated), and deduplicates on webhook-id.

    Steps: ok (204), timeout (processes, then never answers), hang (never answers), drop
    (closes the connection unanswered), 500, 400, 410, 429:N (Retry-After: N). A request
    that never gets its answer is held until the client gives up and closes the connection.
    """

    delay_seconds: float = 0.0
    default_plan: tuple[str, ...] = ("ok",)
    port: int = 0
    attempts: Counter[str] = field(default_factory=Counter)
    processed: set[str] = field(default_factory=set)  # the dedupe store
    duplicates: Counter[str] = field(default_factory=Counter)
    bodies: dict[str, set[str]] = field(default_factory=dict)
    arrivals: list[str] = field(default_factory=list)
    processed_order: list[str] = field(default_factory=list)
    processed_at: dict[str, float] = field(default_factory=dict)
    arrived_at: dict[str, float] = field(default_factory=dict)  # first arrival of each id
    gave_up_at: dict[str, float] = field(default_factory=dict)  # the client hung up, unanswered
    bad_signatures: int = 0
    verifier: Webhook = field(default_factory=lambda: Webhook(SECRET))
    handlers: set[asyncio.Task[Any]] = field(default_factory=set)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = {
                name.strip().lower(): value.strip()
                for name, value in (line.split(":", 1) for line in head[1:] if line)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            answer = await self._answer(headers, body, reader)
            if answer is None:
                writer.transport.abort()  # drop: no answer at all
                return
            status, extra = answer
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n"
                f"{extra}\r\n".encode()
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.handlers.discard(task)

    def _process(self, event_id: str) -> None:
        if event_id in self.processed:
            self.duplicates[event_id] += 1
            return
        self.processed.add(event_id)
        self.processed_order.append(event_id)
        self.processed_at[event_id] = time.monotonic()

    async def _answer(
        self, headers: dict[str, str], body: bytes, reader: asyncio.StreamReader
    ) -> tuple[int, str] | None:
        try:
            message = self.verifier.verify(body, headers)
        except WebhookVerificationError:
            self.bad_signatures += 1
            return 401, ""
        event_id = headers["webhook-id"]
        self.arrivals.append(event_id)
        self.arrived_at.setdefault(event_id, time.monotonic())
        self.bodies.setdefault(event_id, set()).add(json.dumps(message, sort_keys=True))
        plan = message["data"].get("plan", self.default_plan)
        step = plan[min(self.attempts[event_id], len(plan) - 1)]
        self.attempts[event_id] += 1
        if step == "ok":
            await asyncio.sleep(self.delay_seconds)
            self._process(event_id)
            return 204, ""
        if step in ("timeout", "hang"):
            if step == "timeout":
                self._process(event_id)
            await reader.read()  # EOF: the client timed out and closed the connection
            self.gave_up_at.setdefault(event_id, time.monotonic())
            return None
        if step == "drop":
            return None
        if step.startswith("429:"):
            return 429, f"Retry-After: {step[4:]}\r\n"
        return int(step), ""


@contextlib.asynccontextmanager
async def serving(receiver: Receiver) -> AsyncIterator[Receiver]:
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    receiver.port = server.sockets[0].getsockname()[1]
    try:
        yield receiver
    finally:
        server.close()
        for task in list(receiver.handlers):
            task.cancel()
        await asyncio.gather(*receiver.handlers, return_exceptions=True)
        await server.wait_closed()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A receiver on a loopback port (its hangs last until the client gives up)."""
    async with serving(Receiver()) as running:
        yield running


@pytest.fixture
async def sinks() -> AsyncIterator[list[Sink]]:
    """Sinks to close after the test."""
    opened: list[Sink] = []
    yield opened
    for sink in opened:
        await sink.aclose()


def webhook(
    opened: list[Sink], name: str, url: str, *, read_timeout: float = READ_TIMEOUT
) -> WebhookSink:
    sink = WebhookSink(
        name, url, SECRET, connect_timeout=1.0, read_timeout=read_timeout, max_attempts_4xx=2
    )
    opened.append(sink)
    return sink


def job(
    engine: Engine, sinks: dict[str, Sink], routes: dict[str, Route] | None = None, **kw: Any
) -> OutboxDeliveryJob:
    options: dict[str, Any] = {
        "batch_size": 20,
        "max_attempts": 4,
        "max_age": timedelta(hours=1),
        "lease_seconds": LEASE_SECONDS,
        "backoff": FAST,
        "time_budget_seconds": 20.0,
    }
    options.update(kw)
    if routes is None:
        routes = {name: Route(name, start="beginning") for name in sinks}
    return OutboxDeliveryJob(engine, sinks, routes, **options)


async def run_until_settled(
    engine: Engine, delivery: OutboxDeliveryJob, *, rounds: int = 40
) -> list[DeliveryCounts]:
    """Run the job until nothing is pending, re-enabling a disabled sink like an operator."""
    runs = []
    for _ in range(rounds):
        runs.append(await delivery.run(None))
        for name, state in queries.sink_states(engine).items():
            if state.disabled_reason is not None:
                actions.retry(engine, sink=name)
        if all(b.pending == 0 for b in queries.backlog(engine).values()):
            return runs
        await asyncio.sleep(0.1)
    raise AssertionError("deliveries still pending")


# --- the tests ------------------------------------------------------------------------------

PLANS = {
    "ok": ["ok"],
    "500_twice": ["500", "500", "ok"],
    "429": ["429:1", "ok"],
    "timeout": ["timeout", "ok"],
    "drop": ["drop", "ok"],
    "400": ["400"],
    "500_forever": ["500"],
    "410": ["410", "ok"],
}
ATTEMPTS = {
    "ok": 1,
    "500_twice": 3,
    "429": 2,
    "timeout": 2,
    "drop": 2,
    "400": 2,
    "500_forever": 4,
    "410": 2,
}
DEAD = {"400": "HTTP 400 after 2 attempts", "500_forever": "HTTP 500; gave up after 4 attempts"}


async def test_a_receiver_failing_every_way_ends_delivered_once_or_dead(
    engine: Engine, receiver: Receiver, sinks: list[Sink]
) -> None:
    """Every event ends delivered exactly once per webhook-id (after dedupe) or dead with a
    reason; Retry-After is honoured, 410 disables the sink until retry re-enables it."""
    ids = dict(zip(PLANS, add_events(engine, [{"plan": p} for p in PLANS.values()]), strict=True))
    sink = webhook(sinks, "chaos", receiver.url(), read_timeout=TIMEOUT_READ)
    chaos = job(engine, {"chaos": sink})

    with capture_logs() as logs:
        before = datetime.now(UTC)
        first = await chaos.run(None)
        assert first.sinks_disabled == 1
        assert queries.sink_states(engine)["chaos"].disabled_reason == "HTTP 410 Gone"
        rows = delivery_rows(engine, "chaos")
        assert (rows[ids["410"]].state, rows[ids["410"]].attempts) == ("pending", 0)
        assert rows[ids["ok"]].state == "delivered"
        assert rows[ids["429"]].next_attempt_at >= before + timedelta(seconds=1)

        seen = sum(receiver.attempts.values())
        skipped = await chaos.run(None)  # disabled: not a single request
        assert skipped.sinks_skipped == 1
        assert sum(receiver.attempts.values()) == seen

        runs = await run_until_settled(engine, chaos)

    rows = delivery_rows(engine, "chaos")
    for kind, event_id in ids.items():
        if kind in DEAD:
            assert (rows[event_id].state, rows[event_id].last_error) == ("dead", DEAD[kind])
        else:
            assert rows[event_id].state == "delivered", kind
    delivered = {event_id for event_id, row in rows.items() if row.state == "delivered"}
    assert receiver.processed == delivered  # each once: the dedupe store is a set
    assert receiver.duplicates == Counter({ids["timeout"]: 1})  # the only one it needed
    assert {kind: receiver.attempts[ids[kind]] for kind in PLANS} == ATTEMPTS
    assert all(len(bodies) == 1 for bodies in receiver.bodies.values())  # same event each time
    assert receiver.bad_signatures == 0
    assert sum(r.delivered for r in [first, *runs]) == len(delivered)
    assert sum(r.dead for r in [first, *runs]) == len(DEAD)
    assert PATIENT_NAME not in repr(logs)
    assert SECRET not in repr(logs)
    labels = {"sink": "chaos"}
    assert metrics.REGISTRY.get_sample_value("syncd_outbox_dead_letters", labels) == 2
    assert metrics.REGISTRY.get_sample_value("syncd_outbox_backlog", labels) == 0


async def test_a_slow_sink_never_delays_a_healthy_one(
    sqlite_engine: Engine, sinks: list[Sink]
) -> None:
    """The healthy sink has delivered everything before the hanging sink's first timeout,
    though the hanging one sorts first and takes two batches of timeouts."""
    hang_timeout = 3.0  # the healthy sink's whole margin: far above its 8 loopback calls
    async with (
        serving(Receiver(default_plan=("hang",))) as hanging,
        serving(Receiver()) as healthy,
    ):
        ids = add_events(sqlite_engine, [{} for _ in range(8)])
        delivery = job(
            sqlite_engine,
            {
                "hanging": webhook(sinks, "hanging", hanging.url(), read_timeout=hang_timeout),
                "quick": webhook(sinks, "quick", healthy.url()),
            },
            batch_size=4,
            batches_in_flight=1,  # the hanging sink's two batches one after the other
            max_attempts=1,
        )
        started = time.monotonic()
        counts = await delivery.run(None)
        elapsed = time.monotonic() - started

    assert healthy.processed == set(ids)
    # Before the hanging sink's first read timeout (the moment its client hung up):
    assert max(healthy.processed_at.values()) < min(hanging.gave_up_at.values())
    # The hanging sink: two batches, the second sent only after the first timed out.
    first, second = hanging.arrivals[:4], hanging.arrivals[4:]
    assert sorted(hanging.arrivals) == sorted(ids)
    assert max(hanging.gave_up_at[i] for i in first) <= min(hanging.arrived_at[i] for i in second)
    assert elapsed >= 2 * hang_timeout
    assert counts.delivered == 8
    assert counts.dead == 8
    assert {row.state for row in delivery_rows(sqlite_engine, "hanging").values()} == {"dead"}


class HangingSink:
    """A sink whose deliver never returns (a wedged adapter)."""

    name = "wedged"

    async def deliver(
        self,
        events: Sequence[EventEnvelope],
        *,
        attempts: Sequence[int] | None = None,
        answered: Answered | None = None,
    ) -> list[DeliveryOutcome]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        return None


async def test_a_wedged_sink_is_cut_off_by_its_own_timeout(
    sqlite_engine: Engine, receiver: Receiver, sinks: list[Sink]
) -> None:
    """A sink call that never returns is timed out and retried; other sinks go on."""
    ids = add_events(sqlite_engine, [{}, {}])
    delivery = job(
        sqlite_engine,
        {"wedged": HangingSink(), "fine": webhook(sinks, "fine", receiver.url())},
        deliver_timeout_seconds=1.0,
        backoff=BackoffPolicy(initial_seconds=60, max_seconds=60),
    )
    started = time.monotonic()
    counts = await delivery.run(None)
    # Cut off by its own 1 s timeout: without it the run would wait forever; 10 s is far
    # below the lease (120 s) and the run's budget (20 s), far above the 1 s it waits.
    assert time.monotonic() - started < 10.0
    assert receiver.processed == set(ids)
    assert counts.retried == 2
    wedged = delivery_rows(sqlite_engine, "wedged")
    assert {(r.state, r.last_error) for r in wedged.values()} == {
        ("pending", "sink timed out after 1s")
    }


async def test_a_batch_timeout_retries_only_the_unanswered_events(
    sqlite_engine: Engine, sinks: list[Sink]
) -> None:
    """A receiver answers three events of a batch at once and holds two past the batch's
    deliver timeout: the three are recorded delivered and sent exactly once; only the two
    go out again."""
    async with serving(Receiver()) as receiver:
        answered = add_events(sqlite_engine, [{"plan": ["ok"]} for _ in range(3)])
        held = add_events(sqlite_engine, [{"plan": ["hang", "ok"]} for _ in range(2)])
        delivery = job(
            sqlite_engine,
            # The held requests would wait 10 s; the batch is cut off after 2 s (the lease
            # stays far away from both, for a loaded machine).
            {"s": webhook(sinks, "s", receiver.url(), read_timeout=10.0)},
            lease_seconds=120.0,
            deliver_timeout_seconds=2.0,
            batches_in_flight=1,
        )
        with capture_logs() as logs:
            # The two come back due at once (FAST backoff): this run or a later one (its
            # budget decides, and a loaded machine is slow) delivers them.
            runs = [await delivery.run(None)]
            while sum(c.delivered for c in runs) < 5 and len(runs) < 5:
                runs.append(await delivery.run(None))
    claimed, delivered, retried = (
        sum(getattr(c, k) for c in runs) for k in ("claimed", "delivered", "retried")
    )
    assert (claimed, delivered, retried) == (7, 5, 2)
    timed_out = [e for e in logs if e["event"] == "outbox.sink_timed_out"]
    assert [(e["answered"], e["unanswered"]) for e in timed_out] == [(3, 2)]
    assert {event_id: receiver.attempts[event_id] for event_id in answered} == dict.fromkeys(
        answered, 1
    )
    assert {event_id: receiver.attempts[event_id] for event_id in held} == dict.fromkeys(held, 2)
    assert not receiver.duplicates
    assert receiver.processed == set(answered + held)
    rows = delivery_rows(sqlite_engine, "s")
    assert {event_id: rows[event_id].attempts for event_id in answered + held} == {
        **dict.fromkeys(answered, 1),
        **dict.fromkeys(held, 2),
    }


class BlockingSink:
    """A sink whose batches wait until released, like a receiver that hangs."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.received: list[str] = []

    async def deliver(
        self,
        events: Sequence[EventEnvelope],
        *,
        attempts: Sequence[int] | None = None,
        answered: Answered | None = None,
    ) -> list[DeliveryOutcome]:
        self.entered.set()
        await self.release.wait()
        self.received.extend(event.event_id for event in events)
        return [Delivered()] * len(events)

    async def aclose(self) -> None:
        return None


class CollectingSink:
    """A sink that takes every event at once; `wait_for` waits until it has some ids."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.received: list[str] = []
        self._arrived = asyncio.Event()

    async def deliver(
        self,
        events: Sequence[EventEnvelope],
        *,
        attempts: Sequence[int] | None = None,
        answered: Answered | None = None,
    ) -> list[DeliveryOutcome]:
        self.received.extend(event.event_id for event in events)
        self._arrived.set()
        return [Delivered()] * len(events)

    async def wait_for(self, event_ids: Sequence[str]) -> None:
        while not set(event_ids) <= set(self.received):
            self._arrived.clear()
            await self._arrived.wait()

    async def aclose(self) -> None:
        return None


async def test_a_hanging_sink_never_keeps_new_events_from_a_healthy_one(engine: Engine) -> None:
    """While one sink's batch hangs, events written after the run began are fanned out and
    delivered to the healthy sink within that same run; the hanging sink gets them after."""
    first = add_events(engine, [{}])
    stuck, quick = BlockingSink("stuck"), CollectingSink("quick")
    delivery = job(engine, {"stuck": stuck, "quick": quick}, lease_seconds=120.0)
    run = asyncio.create_task(delivery.run(None))
    try:
        await asyncio.wait_for(stuck.entered.wait(), 20)
        later = add_events(engine, [{}, {}])
        await asyncio.wait_for(quick.wait_for(first + later), 20)
        assert not run.done()  # the stuck batch is still in flight
        assert stuck.received == []
    finally:
        stuck.release.set()
    counts = await asyncio.wait_for(run, 20)
    assert sorted(quick.received) == sorted(first + later)
    assert sorted(stuck.received) == sorted(first + later)
    assert (counts.fanned_out, counts.delivered) == (6, 6)


class Crash(Exception):
    """Stands in for the process dying at a step."""


@pytest.fixture
def crash_at() -> Iterator[list[str]]:
    """Steps at which to crash (once each); the hook is removed afterwards."""
    steps: list[str] = []

    def hook(name: str) -> None:
        if name in steps:
            steps.remove(name)
            raise Crash(name)

    testing_hooks.set_callback(hook)
    yield steps
    testing_hooks.set_callback(None)


@pytest.mark.parametrize(
    ("step", "redelivered"),
    [
        ("delivery.after_claim", False),
        ("delivery.after_http_before_mark", True),
        ("delivery.after_mark", False),
    ],
)
async def test_a_crash_at_each_step_ends_delivered_with_a_stable_id(
    sqlite_engine: Engine,
    receiver: Receiver,
    sinks: list[Sink],
    crash_at: list[str],
    step: str,
    redelivered: bool,
) -> None:
    """After a crash at any step, a later worker (once the lease expired) delivers every
    event; only a crash between the answer and its record sends an event twice, with the
    same webhook-id, which the receiver's dedupe absorbs."""
    ids = add_events(sqlite_engine, [{} for _ in range(4)])
    crash_at.append(step)
    first = job(sqlite_engine, {"s": webhook(sinks, "s", receiver.url())}, lease_seconds=30)
    with pytest.raises(Crash):
        await first.run(None)
    # A worker that starts after the lease expired (its clock is 31 s ahead).
    later = job(
        sqlite_engine,
        {"s": webhook(sinks, "s2", receiver.url())},
        {"s": Route("s", start="beginning")},
        clock=lambda: datetime.now(UTC) + timedelta(seconds=31),
    )
    await later.run(None)
    assert {r.state for r in delivery_rows(sqlite_engine, "s").values()} == {"delivered"}
    assert receiver.processed == set(ids)
    expected = Counter(dict.fromkeys(ids, 1)) if redelivered else Counter()
    assert receiver.duplicates == expected


@pytest.mark.parametrize("keep_order", [True, False])
async def test_per_patient_order(
    sqlite_engine: Engine, receiver: Receiver, sinks: list[Sink], keep_order: bool
) -> None:
    """With keep_order_per_patient a patient's event is sent only after the earlier one was
    taken, even when that one needs retries; without it, they overtake each other."""
    ids = add_events(
        sqlite_engine,
        [{"plan": ["500", "500", "ok"]}, {}, {}, {}],
        keys=["p1", "p1", "p1", "p2"],
    )
    delivery = job(
        sqlite_engine,
        {"s": webhook(sinks, "s", receiver.url())},
        keep_order_per_patient=keep_order,
    )
    await run_until_settled(sqlite_engine, delivery)
    assert receiver.processed == set(ids)
    p1 = [i for i in receiver.processed_order if i in ids[:3]]
    assert (p1 == ids[:3]) is keep_order
    if keep_order:
        # Nothing of p1 reached the receiver before the event ahead of it was taken.
        first_taken = receiver.arrivals.index(ids[0], 2)  # its third attempt
        assert receiver.arrivals.index(ids[1]) > first_taken
        assert receiver.processed_order.index(ids[3]) < first_taken  # p2 did not wait


@pytest.mark.postgres
async def test_two_workers_on_postgres_never_deliver_one_event_twice(
    postgres_url: str, sinks: list[Sink]
) -> None:
    """Two jobs (separate engines, as two daemons) racing on one database: each event
    reaches the receiver exactly once, and both did part of the work."""
    with migrated_engine(postgres_url) as engine:
        await _two_workers_race(engine, sinks)


async def _two_workers_race(engine: Engine, sinks: list[Sink]) -> None:
    second_engine = make_engine(engine.url)
    try:
        async with serving(Receiver(delay_seconds=0.01)) as slow_receiver:
            ids = add_events(engine, [{} for _ in range(80)])
            workers = [
                job(
                    db,
                    {"s": webhook(sinks, "s", slow_receiver.url())},
                    batch_size=5,
                    worker_id=f"w{n}",
                )
                for n, db in enumerate([engine, second_engine])
            ]
            results = await asyncio.gather(*(w.run(None) for w in workers))
        assert sorted(slow_receiver.attempts) == sorted(ids)
        assert set(slow_receiver.attempts.values()) == {1}
        assert not slow_receiver.duplicates
        assert [r.delivered > 0 for r in results] == [True, True]
        assert sum(r.delivered for r in results) == 80
        assert sum(r.fanned_out for r in results) == 80  # fan-out happened once
    finally:
        second_engine.dispose()


def _submission(status: str) -> dict[str, Any]:
    return {
        "submission": {
            "id": f"sub-{status}",
            "status": status,
            "createdAt": "2026-01-02T03:04:05.000Z",
            "updatedAt": "2026-01-02T03:04:06.000Z",
            "receivedAt": None,
            "requestedBy": None,
        },
        "form": {"id": "form-1", "displayName": "Intake"},
        "patient": {"voxaresId": "p-1", "providerId": "42", "provider": "ehr"},
        "answers": {"allergies": "none"},
    }


async def test_fhir_sink_gets_questionnaire_responses(
    sqlite_engine: Engine, tmp_path: Path, sinks: list[Sink]
) -> None:
    """A fhir-format NDJSON sink gets QuestionnaireResponses; a submission FHIR cannot
    express is dead-lettered with the reason, without holding up the other."""
    good, bad = add_events(sqlite_engine, [_submission("Completed"), _submission("Archived")])
    archive = NdjsonFileSink("fhir", tmp_path / "events")
    sinks.append(archive)
    counts = await job(
        sqlite_engine,
        {"fhir": archive},
        {"fhir": Route("fhir", ("form_submission.*",), "fhir", "beginning")},
    ).run(None)
    assert (counts.delivered, counts.dead) == (1, 1)
    [line] = (tmp_path / "events").glob("*.ndjson")
    [record] = [json.loads(text_line) for text_line in line.read_text().splitlines()]
    assert record["id"] == good
    assert record["data"]["resourceType"] == "QuestionnaireResponse"
    rows = delivery_rows(sqlite_engine, "fhir")
    assert (rows[bad].state, rows[bad].last_error) == ("dead", "cannot render as fhir (ValueError)")


async def test_retention_prunes_old_delivered_events_once_per_period(
    sqlite_engine: Engine, receiver: Receiver, sinks: list[Sink]
) -> None:
    """With retention, a run deletes delivered events past it, at most once per period."""
    now = [datetime.now(UTC)]

    def add_old_and_one_new(old: int) -> list[str]:
        ids = add_events(sqlite_engine, [{} for _ in range(old + 1)])
        with sqlite_engine.begin() as conn:
            conn.execute(
                update(OutboxEvent)
                .where(OutboxEvent.event_id.in_(ids[:old]))
                .values(created_at=now[0] - timedelta(days=20))
            )
        return ids[:old]

    first = add_old_and_one_new(3)
    delivery = job(
        sqlite_engine,
        {"s": webhook(sinks, "s", receiver.url())},
        retention=timedelta(days=14),
        prune_every=timedelta(hours=1),
        clock=lambda: now[0],
    )
    assert (await delivery.run(None)).pruned == 3  # delivered, then pruned in the same run
    assert queries.show_event(sqlite_engine, first[0]) is None
    second = add_old_and_one_new(2)
    now[0] += timedelta(minutes=30)
    assert (await delivery.run(None)).pruned == 0  # pruned less than an hour ago
    assert queries.show_event(sqlite_engine, second[0]) is not None
    now[0] += timedelta(minutes=31)
    assert (await delivery.run(None)).pruned == 2


# --- several batches in flight per sink ----------------------------------------------------


def lanes_that_delivered(logs: list[dict[str, Any]]) -> set[int]:
    """The lanes whose batches delivered something, from the captured `outbox.batch` logs."""
    return {e["lane"] for e in logs if e["event"] == "outbox.batch" and e["delivered"]}


async def test_lanes_deliver_every_event_exactly_once(engine: Engine, sinks: list[Sink]) -> None:
    """With three batches in flight and small batches, every event reaches a real receiver
    exactly once, is recorded delivered and audited once, and every lane did part of it."""
    async with serving(Receiver(delay_seconds=0.01)) as slow_receiver:
        ids = add_events(engine, [{} for _ in range(90)])
        delivery = job(
            engine,
            {"s": webhook(sinks, "s", slow_receiver.url())},
            batch_size=5,
            batches_in_flight=3,
        )
        with capture_logs() as logs:
            counts = await delivery.run(None)
    assert sorted(slow_receiver.attempts) == sorted(ids)
    assert set(slow_receiver.attempts.values()) == {1}
    assert (counts.claimed, counts.delivered, counts.lease_lost) == (90, 90, 0)
    assert {row.state for row in delivery_rows(engine, "s").values()} == {"delivered"}
    with Session(engine) as session:
        audited = session.scalars(
            text("SELECT object_id FROM audit_log WHERE action = 'event.delivered'")
        ).all()
    assert sorted(audited) == sorted(ids)
    assert lanes_that_delivered(logs) == {0, 1, 2}


async def test_a_410_in_flight_on_every_lane_disables_the_sink_once(
    engine: Engine, sinks: list[Sink]
) -> None:
    """A receiver answering 410 to every lane's batch: the sink is disabled and audited
    once, no lane claims another batch, and every event stays pending, unattempted."""
    async with serving(Receiver(default_plan=("410",), delay_seconds=0.01)) as gone:
        ids = add_events(engine, [{} for _ in range(60)])
        delivery = job(
            engine, {"s": webhook(sinks, "s", gone.url())}, batch_size=5, batches_in_flight=3
        )
        counts = await delivery.run(None)
        sent = sum(gone.attempts.values())
        assert (await delivery.run(None)).sinks_skipped == 1
        assert sum(gone.attempts.values()) == sent
    assert counts.sinks_disabled == 1
    assert counts.claimed <= 15  # at most one batch per lane: none claimed after the 410
    assert sent <= counts.claimed
    assert counts.released == counts.claimed
    rows = delivery_rows(engine, "s")
    assert len(rows) == len(ids)
    assert {(r.state, r.attempts) for r in rows.values()} == {("pending", 0)}
    with Session(engine) as session:
        disabled = session.scalars(
            text("SELECT detail FROM audit_log WHERE action = 'sink.disabled'")
        ).all()
    assert disabled == ["HTTP 410 Gone"]


@dataclass
class GoneAtOnceSink:
    """A sink that answers 410 for every event without yielding to the event loop, so the
    first lane to get its claim back disables the sink before any other lane resumes."""

    name: str = "gone"
    calls: list[int] = field(default_factory=list)

    async def deliver(
        self,
        events: Sequence[EventEnvelope],
        *,
        attempts: Sequence[int] | None = None,
        answered: Answered | None = None,
    ) -> list[DeliveryOutcome]:
        self.calls.append(len(events))
        return [DisableSink("HTTP 410 Gone")] * len(events)

    async def aclose(self) -> None:
        return None


async def test_a_batch_claimed_after_another_lane_disabled_the_sink_is_not_sent(
    engine: Engine,
) -> None:
    """The lanes' first claims all run at once; only the first batch back reaches the
    sink; the others come back after it disabled the sink and are given back unsent."""
    add_events(engine, [{} for _ in range(30)])
    sink = GoneAtOnceSink()
    delivery = job(engine, {"gone": sink}, batch_size=5, batches_in_flight=3)
    with capture_logs() as logs:
        counts = await delivery.run(None)
    assert sink.calls == [5]
    assert counts.claimed == 15  # each lane's first claim started before the disable
    assert (counts.released, counts.sinks_disabled) == (15, 1)
    rows = delivery_rows(engine, "gone")
    assert {(r.state, r.attempts) for r in rows.values()} == {("pending", 0)}
    assert {r.last_error for r in rows.values() if r.last_error} == {"sink disabled: HTTP 410 Gone"}
    assert [e["event"] for e in logs].count("outbox.sink_disabled") == 1


async def test_per_patient_order_holds_across_lanes(engine: Engine, sinks: list[Sink]) -> None:
    """With keep_order_per_patient and three lanes, each patient's events reach the
    receiver strictly in order (a retried event holds the ones behind it), while the
    patients' events go out on several lanes at once."""
    patients = [f"p{n}" for n in range(6)]
    keys = [patients[n % 6] for n in range(36)]
    plans = [{"plan": ["500", "ok"]} if n % 7 == 0 else {} for n in range(36)]
    async with serving(Receiver(delay_seconds=0.01)) as slow_receiver:
        ids = add_events(engine, plans, keys=keys)
        delivery = job(
            engine,
            {"s": webhook(sinks, "s", slow_receiver.url())},
            batch_size=2,
            batches_in_flight=3,
            keep_order_per_patient=True,
        )
        with capture_logs() as logs:
            await run_until_settled(engine, delivery)
    assert slow_receiver.processed == set(ids)
    for patient in patients:
        theirs = [i for i, key in zip(ids, keys, strict=True) if key == patient]
        assert [i for i in slow_receiver.processed_order if i in theirs] == theirs
        # No event of theirs was sent (even once) before the one ahead of it was taken:
        # its first arrival comes after the earlier event's last (successful) arrival.
        arrivals = slow_receiver.arrivals
        for earlier, later in itertools.pairwise(theirs):
            taken = len(arrivals) - 1 - arrivals[::-1].index(earlier)
            assert arrivals.index(later) > taken
    assert len(lanes_that_delivered(logs)) > 1


async def test_a_run_records_failed_when_nothing_was_delivered_and_partial_when_some_was(
    engine: Engine, receiver: Receiver, sinks: list[Sink]
) -> None:
    """The run record tells an operator how delivery went, not only that the job returned:
    a receiver that refuses everything makes a `failed` run, one that refuses some makes a
    `partial` run, and each says what happened in ids and counts only."""
    sink = webhook(sinks, "hook", receiver.url())
    runner = JobRunner(engine)

    def last_run() -> JobRun:
        with Session(engine) as session:
            return session.scalars(select(JobRun).order_by(JobRun.id.desc()).limit(1)).one()

    add_events(engine, [{"plan": ["500"]}, {"plan": ["500"]}])
    hold = BackoffPolicy(initial_seconds=600, max_seconds=600)  # no retry within a run
    refused = await runner.run_once(job(engine, {"hook": sink}, backoff=hold))
    assert refused.outcome == "failed"
    record = last_run()
    assert record.outcome == "failed"
    assert record.error == "of 2 claimed, 0 delivered; 2 to retry"

    add_events(engine, [{"plan": ["ok"]}, {"plan": ["500"]}])
    mixed = await runner.run_once(job(engine, {"hook": sink}, backoff=hold))
    assert mixed.outcome == "partial", mixed.counts
    assert (mixed.counts["delivered"], mixed.counts["retried"]) == (1, 1)
    assert last_run().error == "of 2 claimed, 1 delivered; 1 to retry"
    assert PATIENT_NAME not in (last_run().error or "")
