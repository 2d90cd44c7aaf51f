"""The SMS sender against the in-process sandbox and a real state database: at most once.

The fault matrix combines every fault the sandbox can put on `POST /messages/send` with a
crash before the call (right after the request was committed `sending`) and after it (before
the result was recorded). Each case ends with the same proofs: no SMS was accepted twice by
the sandbox, ambiguous sends end `unknown`, provable rejections `failed`, and a later run on
the same database (a restarted daemon) never sends an `unknown` request again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from syncd import metrics
from syncd.content.mirror import ContentMirror
from syncd.exceptions import Unauthorized
from syncd.messages import counts_by_state, submit_request
from syncd.messages.sender import STEP_AFTER_MARK, STEP_AFTER_SEND, STEP_BEFORE_MARK
from syncd.sandbox.faults import FaultConfig, FaultRule
from syncd.state.db import make_engine, upgrade
from syncd.state.models import AuditEntry
from syncd.voxares.client import VoxaresClient
from syncd.voxares.contract import API_PREFIX
from syncd.voxares.limits import ClientLimits
from syncd.voxares.retry import RetryPolicy
from tests.integration.test_messages_support import (
    PROVIDER,
    Crash,
    World,
    add_patient,
    crash_at,
    make_world,
    migrated_sqlite,
    queue_requests,
    request,
)


@pytest.fixture
async def world(tmp_path: Any) -> AsyncIterator[World]:
    w = make_world(migrated_sqlite(tmp_path))
    try:
        yield w
    finally:
        await w.close()


def on_send(**faults: Any) -> FaultConfig:
    """Faults aimed at `POST /messages/send` only."""
    seed = faults.pop("seed", 0)
    return FaultConfig(
        seed=seed, rules=[FaultRule(method="POST", path_prefix="/messages/send", **faults)]
    )


@dataclass(frozen=True)
class Case:
    """One fault: what it does to the send, the state it must end in, and how many SMS the
    sandbox accepted when the call was made."""

    faults: FaultConfig
    state: str
    sends: int
    patient_known: bool = True
    template_gone: bool = False


CASES: dict[str, Case] = {
    "answered": Case(FaultConfig(), "sent", 1),
    # seed 1: the first attempt draws a 429, the second does not.
    "429 then retried": Case(on_send(error_rates={429: 0.7}, seed=1), "sent", 1),
    "500 before processing": Case(on_send(error_rates={500: 1.0}), "unknown", 0),
    "503 after processing": Case(
        on_send(error_rates={503: 1.0}, error_phase="after"), "unknown", 1
    ),
    "timeout after accepted": Case(
        on_send(hang_rate=1.0, hang_phase="after", hang_seconds=600), "unknown", 1
    ),
    "dropped before processing": Case(on_send(drop_rate=1.0), "unknown", 0),
    "dropped after processing": Case(on_send(drop_rate=1.0, drop_phase="after"), "unknown", 1),
    "truncated reply": Case(on_send(truncated_body_rate=1.0), "unknown", 1),
    "malformed 2xx": Case(on_send(malformed_json_rate=1.0), "unknown", 1),
    "400 rejected": Case(on_send(error_rates={400: 1.0}), "failed", 0),
    "409 rejected": Case(on_send(error_rates={409: 1.0}), "failed", 0),
    "422 patient unusable": Case(FaultConfig(), "failed", 0, patient_known=False),
    "404 template gone": Case(FaultConfig(), "failed", 0, template_gone=True),
}
CRASHES = {
    "no crash": None,
    "crash before call": STEP_AFTER_MARK,
    "crash after call": STEP_AFTER_SEND,
}


async def template_request(world: World, key: str, provider_id: str) -> str:
    """Mirror the content, then ask for the first template to `provider_id`; the template id."""
    await ContentMirror(world.engine, world.client()).run(None)
    template_id = world.template_ids()[0]
    submit_request(
        world.engine,
        key=key,
        provider=PROVIDER,
        provider_id=provider_id,
        template_id=template_id,
        origin="api",
    )
    return template_id


@pytest.mark.parametrize("crash", list(CRASHES.values()), ids=list(CRASHES))
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
async def test_send_fault_matrix(world: World, case: Case, crash: str | None) -> None:
    """Every fault x crash point: never two sends, ambiguous -> unknown, refused -> failed."""
    if case.patient_known:
        add_patient(world.engine, "P-1")
    template_id = await template_request(world, "reminder-1", "P-1")
    if case.template_gone:
        del world.sandbox.practices[world.practice].templates[template_id]
    world.set_faults(case.faults)
    # Cuts off the hang (which never answers); far above an in-process answer, so no other
    # case's answer is lost to it however busy the machine.
    client = world.client(attempts=5, attempt_timeout=2.0)
    if crash is None:
        counts = await world.sender(client).run(1)
        assert counts.sent + counts.failed + counts.unknown == 1
        # Refused is the request's own problem (like a quarantined row); in doubt is not ok.
        assert counts.outcome == ("failed" if case.state == "unknown" else "ok")
    else:
        with crash_at(crash), pytest.raises(Crash):
            await world.sender(client).run(1)
        assert request(world.engine, "reminder-1").state == "sending"

    # A restarted daemon, faults gone: an interrupted send becomes unknown, never resent.
    world.set_faults()
    second = await world.sender().run(2)
    assert second.recovered == (0 if crash is None else 1)
    assert second.sent == 0
    await world.sender().run(3)

    stored = request(world.engine, "reminder-1")
    expected_sends = 0 if crash == STEP_AFTER_MARK else case.sends
    assert stored.state == (case.state if crash is None else "unknown")
    assert world.sends("P-1", f"template:{template_id}") == expected_sends
    assert world.max_sends() <= 1
    if stored.state == "sent":
        assert stored.message_id
        assert stored.delivery_status == "Pending"
        assert stored.sent_at is not None
    if stored.state in ("failed", "unknown"):
        assert stored.error
        assert stored.message_id is None
    assert stored.sending_at is not None


async def test_429_is_retried_within_the_send(world: World) -> None:
    """A 429 proves nothing was sent: the client retries it and the SMS goes out once."""
    add_patient(world.engine, "P-1")
    template_id = await template_request(world, "reminder-1", "P-1")
    world.set_faults(CASES["429 then retried"].faults)
    counts = await world.sender(world.client(attempts=5)).run(None)
    assert counts.sent == 1
    assert world.requests_seen("POST /messages/send 429") == 1
    assert world.requests_seen("POST /messages/send 201") == 1
    assert world.sends("P-1", f"template:{template_id}") == 1


async def test_429_until_retries_run_out_leaves_the_request_pending(world: World) -> None:
    """Only 429s: provably not sent, so the request waits for the next run, which sends it."""
    add_patient(world.engine, "P-1")
    template_id = await template_request(world, "reminder-1", "P-1")
    world.set_faults(on_send(error_rates={429: 1.0}))
    first = await world.sender(world.client(attempts=3)).run(None)
    assert first.not_sent == 1
    assert (first.outcome, first.problem) == (
        "failed",
        "1 not sent (pending for the next run), 0 unknown (resolve with `syncd messages resolve`)",
    )
    stored = request(world.engine, "reminder-1")
    assert stored.state == "pending"
    assert stored.error is not None
    assert "RateLimited" in stored.error
    world.set_faults()
    second = await world.sender().run(None)
    assert second.sent == 1
    assert (second.outcome, second.problem) == ("ok", None)
    assert world.sends("P-1", f"template:{template_id}") == 1


async def test_a_run_with_some_sends_in_doubt_is_partial(world: World) -> None:
    """One send answered, one whose answer was lost (unknown): the run is `partial`."""
    for n in range(2):
        add_patient(world.engine, f"P-{n}")
    submit_request(
        world.engine, key="a", provider=PROVIDER, provider_id="P-0", content="Hi", origin="api"
    )
    first = await world.sender().run(None)
    assert (first.sent, first.outcome) == (1, "ok")
    submit_request(
        world.engine, key="b", provider=PROVIDER, provider_id="P-1", content="Hi", origin="api"
    )
    submit_request(
        world.engine, key="c", provider=PROVIDER, provider_id="P-0", content="Yo", origin="api"
    )
    world.set_faults(on_send(drop_rate=0.5, drop_phase="after", seed=3))
    counts = await world.sender(concurrency=1).run(None)
    assert (counts.sent, counts.unknown) == (1, 1)
    assert counts.outcome == "partial"


async def test_crash_before_marking_leaves_it_pending_and_the_next_run_sends(world: World) -> None:
    """A crash before the `sending` commit loses nothing and sends nothing twice."""
    add_patient(world.engine, "P-1")
    template_id = await template_request(world, "reminder-1", "P-1")
    with crash_at(STEP_BEFORE_MARK), pytest.raises(Crash):
        await world.sender().run(None)
    assert request(world.engine, "reminder-1").state == "pending"
    counts = await world.sender().run(None)
    assert (counts.sent, counts.recovered) == (1, 0)
    assert world.sends("P-1", f"template:{template_id}") == 1


async def test_send_carries_the_mirror_patient_so_voxares_can_create_it(world: World) -> None:
    """A patient Voxares does not know is created from the mirror's names and mobile."""
    add_patient(world.engine, "P-9")
    submit_request(
        world.engine,
        key="k",
        provider=PROVIDER,
        provider_id="P-9",
        content="See you tomorrow at 9",
        origin="api",
    )
    counts = await world.sender().run(None)
    assert counts.sent == 1
    created = world.sandbox.practices[world.practice].by_external[(PROVIDER, "P-9")]
    assert (created.first_name, created.last_name, created.mobile_number) == (
        "Ana",
        "Horvat",
        "+385991234567",
    )
    with Session(world.engine) as session:
        audited = session.scalars(select(AuditEntry).where(AuditEntry.action == "message.sent"))
        entry = audited.one()
    assert entry.object_id == "k"
    assert entry.detail == f"message_id={request(world.engine, 'k').message_id}"


async def test_concurrent_sends_with_a_crash_mid_run(world: World) -> None:
    """12 requests, 4 at a time, a crash at the 5th mark: no SMS twice, every request ends
    sent or unknown, and only requests that were in flight become unknown."""
    queue_requests(world.engine, 12, content="Reminder", key_format="k-{n:02d}")
    world.set_faults(on_send(latency_ms=5))
    with crash_at(STEP_AFTER_MARK, nth=5), pytest.raises(Crash):
        await world.sender(concurrency=4).run(None)
    counts = await world.sender(concurrency=4).run(None)
    states = counts_by_state(world.engine)
    assert states["sent"] + states["unknown"] == 12
    assert 1 <= counts.recovered == states["unknown"] <= 4
    assert world.max_sends() <= 1
    sent_total = sum(world.sends(f"P-{n}", "content:Reminder") for n in range(12))
    assert sent_total == states["sent"] + (states["unknown"] - 1)  # the crashed one never left


async def test_sends_are_concurrent_but_bounded(world: World) -> None:
    """With concurrency 3, three sends are in flight at once, never more.

    The first three sends are held until all three have arrived (so the peak of a correct
    sender is 3 however slow the machine), then 0.3 s more, long enough for a fourth send
    to arrive if the bound were broken."""
    in_flight = peak = arrived = 0
    app = world.app
    three_in = asyncio.Event()

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        nonlocal in_flight, peak, arrived
        is_send = scope["type"] == "http" and scope["path"].endswith("/messages/send")
        if is_send:
            in_flight += 1
            arrived += 1
            peak = max(peak, in_flight)
            if arrived == 3:
                three_in.set()
            if arrived <= 3:
                await asyncio.wait_for(three_in.wait(), timeout=30)
                await asyncio.sleep(0.3)
        try:
            await app(scope, receive, send)
        finally:
            if is_send:
                in_flight -= 1

    world.app = counting  # type: ignore[assignment]
    queue_requests(world.engine, 9)
    counts = await world.sender(concurrency=3, batch_size=4).run(None)
    assert counts.sent == 9
    assert peak == 3


async def test_bad_key_fails_one_request_and_stops_the_run(world: World) -> None:
    """401: that request is `failed` (nothing sent), the run stops, the rest stay pending."""
    queue_requests(world.engine, 3)
    bad = VoxaresClient(
        base_url="http://sandbox" + API_PREFIX,
        api_key="vox-nope-wrongsecret",
        transport=httpx.ASGITransport(app=world.app),
        limits=ClientLimits(requests_per_second=None),
        retry=RetryPolicy.no_wait(),
    )
    world.clients.append(bad)
    with pytest.raises(Unauthorized):
        await world.sender(bad, concurrency=1).run(None)
    states = counts_by_state(world.engine)
    assert (states["failed"], states["pending"], states["sent"]) == (1, 2, 0)
    assert world.max_sends() == 0


async def test_requests_of_another_provider_are_left_alone(world: World) -> None:
    """A sender handles its own provider's requests only."""
    submit_request(
        world.engine, key="other", provider="crm", provider_id="C-1", content="Hi", origin="api"
    )
    counts = await world.sender().run(None)
    assert counts.sent == counts.failed == counts.unknown == 0
    assert request(world.engine, "other").state == "pending"


async def test_metrics_follow_the_table_after_a_run(world: World) -> None:
    """`syncd_messages{state}` equals the counts by state after every run."""
    add_patient(world.engine, "P-1")
    submit_request(
        world.engine, key="a", provider=PROVIDER, provider_id="P-1", content="Hi", origin="api"
    )
    submit_request(
        world.engine, key="b", provider=PROVIDER, provider_id="P-2", content="Hi", origin="api"
    )
    await world.sender().run(None)
    for state, count in counts_by_state(world.engine).items():
        assert metrics.REGISTRY.get_sample_value("syncd_messages", {"state": state}) == count
    assert metrics.REGISTRY.get_sample_value("syncd_messages", {"state": "sent"}) == 1
    assert metrics.REGISTRY.get_sample_value("syncd_messages", {"state": "failed"}) == 1


@pytest.mark.postgres
async def test_crash_recovery_on_postgresql(postgres_url: str) -> None:
    """On PostgreSQL too: a send interrupted after its mark is `unknown`, never resent."""
    engine = make_engine(postgres_url)
    upgrade(engine)
    engine.dispose()
    world = make_world(postgres_url)
    try:
        add_patient(world.engine, "P-1")
        submit_request(
            world.engine, key="k", provider=PROVIDER, provider_id="P-1", content="Hi", origin="api"
        )
        with crash_at(STEP_AFTER_SEND), pytest.raises(Crash):
            await world.sender().run(None)
        counts = await world.sender().run(None)
        assert (counts.recovered, counts.sent) == (1, 0)
        assert request(world.engine, "k").state == "unknown"
        assert world.sends("P-1", "content:Hi") == 1
    finally:
        await world.close()
