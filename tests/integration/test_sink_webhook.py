"""WebhookSink against a real HTTP receiver (uvicorn + Starlette on a loopback port).

The receiver verifies every request with `standardwebhooks.Webhook(secret).verify`, and
has endpoints that fail in each way a real one does: slow, 5xx, 429 with Retry-After,
410, 400, or answering per event. A raw asyncio server drops connections.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import uvicorn
from standardwebhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from structlog.testing import capture_logs

from syncd.sinks.base import DeadLetter, Delivered, DisableSink, EventEnvelope, Retry
from syncd.sinks.webhook import WebhookSink
from tests.waiting import async_wait_until

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PATIENT_NAME = "Ana Horvat"
# The slow endpoint answers long after any read timeout a test sets (and only then).
SLOW_SECONDS = 60.0


@dataclass
class Receiver:
    """What the receiver saw, shared with the server thread."""

    base_url: str = ""
    verified: list[tuple[dict[str, str], Any]] = field(default_factory=list)
    rejected: int = 0
    seen_ids: list[str] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    arrived: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.verified.clear()
            self.seen_ids.clear()
            self.rejected = 0
            self.in_flight = self.max_in_flight = self.arrived = 0


def _app(receiver: Receiver) -> Starlette:
    verifier = Webhook(SECRET)

    async def verified_body(request: Request) -> Any | None:
        body = await request.body()
        headers = dict(request.headers)
        with receiver.lock:
            receiver.seen_ids.append(headers.get("webhook-id", ""))
        try:
            data = verifier.verify(body, headers)
        except WebhookVerificationError:
            with receiver.lock:
                receiver.rejected += 1
            return None
        with receiver.lock:
            receiver.verified.append((headers, data))
        return data

    async def ok(request: Request) -> Response:
        data = await verified_body(request)
        return Response(status_code=204 if data is not None else 401)

    async def status(request: Request) -> Response:
        await verified_body(request)
        headers = {}
        if "retry_after" in request.query_params:
            headers["Retry-After"] = request.query_params["retry_after"]
        return Response(status_code=int(request.path_params["code"]), headers=headers)

    async def slow(request: Request) -> Response:
        """Answers after SLOW_SECONDS, unless the client hung up before (then never)."""
        await verified_body(request)
        for _ in range(int(SLOW_SECONDS / 0.05)):
            if await request.is_disconnected():
                break
            await asyncio.sleep(0.05)
        return Response(status_code=200)

    async def per_event(request: Request) -> Response:
        """Answers the status the event asks for, later for earlier events (out of order).

        An event with `gather: [n, of]` is first held until `n` requests are in flight (or
        all `of` have arrived), so a concurrency test sees its peak however slowly the
        requests come in; its `delay` then gives any request beyond the bound time to show.
        """
        data = await verified_body(request)
        if data is None:
            return Response(status_code=401)
        with receiver.lock:
            receiver.in_flight += 1
            receiver.arrived += 1
            receiver.max_in_flight = max(receiver.max_in_flight, receiver.in_flight)
        try:
            if "gather" in data["data"]:
                wanted, of = data["data"]["gather"]
                await async_wait_until(
                    lambda: receiver.in_flight >= wanted or receiver.arrived >= of,
                    f"{wanted} requests in flight",
                )
            await asyncio.sleep(data["data"].get("delay", 0))
        finally:
            with receiver.lock:
                receiver.in_flight -= 1
        return Response(status_code=data["data"]["respond"])

    return Starlette(
        routes=[
            Route("/ok", ok, methods=["POST"]),
            Route("/status/{code:int}", status, methods=["POST"]),
            Route("/slow", slow, methods=["POST"]),
            Route("/per-event", per_event, methods=["POST"]),
        ]
    )


@pytest.fixture(scope="module")
def receiver_server() -> Iterator[Receiver]:
    """One uvicorn receiver for the module, in a background thread on a free port."""
    receiver = Receiver()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    receiver.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(_app(receiver), lifespan="off", log_level="critical", access_log=False)
    config.timeout_graceful_shutdown = 2
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "receiver thread died"
        assert time.monotonic() < deadline, "receiver did not start"
        time.sleep(0.01)
    try:
        yield receiver
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def receiver(receiver_server: Receiver) -> Receiver:
    """The shared receiver with its records cleared for this test."""
    receiver_server.reset()
    return receiver_server


@pytest.fixture
async def make_sink() -> AsyncIterator[Any]:
    """Builds WebhookSinks for a test and closes them all afterwards."""
    sinks: list[WebhookSink] = []

    def make(url: str, **options: Any) -> WebhookSink:
        options.setdefault("connect_timeout", 10.0)
        options.setdefault("read_timeout", 10.0)
        sink = WebhookSink("crm", url, SECRET, **options)
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        await sink.aclose()


def _event(number: int, **data: Any) -> EventEnvelope:
    return EventEnvelope(
        event_id=f"evt-{number}",
        event_type="form_submission.completed",
        created_at=datetime(2025, 5, 20, 9, 15, number, tzinfo=UTC),
        payload={"patient": {"name": PATIENT_NAME}, **data},
    )


async def test_batch_is_signed_and_verified_by_the_receiver(
    receiver: Receiver, make_sink: Any
) -> None:
    """Every event arrives as its to_json() body, verified by Standard Webhooks, id = event id."""
    sink = make_sink(f"{receiver.base_url}/ok")
    events = [_event(n) for n in range(3)]

    outcomes = await sink.deliver(events)

    assert outcomes == [Delivered()] * 3
    assert receiver.rejected == 0
    by_id = {headers["webhook-id"]: (headers, data) for headers, data in receiver.verified}
    assert set(by_id) == {"evt-0", "evt-1", "evt-2"}
    for event in events:
        headers, data = by_id[event.event_id]
        assert data == event.to_json()
        assert headers["content-type"] == "application/json"
        assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60


async def test_receiver_with_another_secret_rejects_the_signature(
    receiver: Receiver, make_sink: Any
) -> None:
    """A sink signing with a different secret fails verification (the check is real)."""
    sink = WebhookSink("crm", f"{receiver.base_url}/ok", "whsec_" + "QUJD" * 8, max_attempts_4xx=1)
    try:
        outcomes = await sink.deliver([_event(1)])
    finally:
        await sink.aclose()
    assert outcomes == [DeadLetter("HTTP 401 after 1 attempts")]
    assert receiver.rejected == 1


@pytest.mark.parametrize(
    ("path", "attempt", "expected"),
    [
        ("/status/500", 1, Retry("HTTP 500")),
        ("/status/503?retry_after=30", 5, Retry("HTTP 503", 30.0)),
        ("/status/429?retry_after=7", 1, Retry("HTTP 429", 7.0)),
        ("/status/408", 1, Retry("HTTP 408")),
        ("/status/410", 1, DisableSink("HTTP 410 Gone")),
        ("/status/400", 1, Retry("HTTP 400 (attempt 1 of 2)")),
        ("/status/400", 2, DeadLetter("HTTP 400 after 2 attempts")),
        ("/status/404", 2, DeadLetter("HTTP 404 after 2 attempts")),
    ],
)
async def test_each_answer_maps_to_its_outcome(
    receiver: Receiver, make_sink: Any, path: str, attempt: int, expected: object
) -> None:
    """A real HTTP answer becomes the outcome its status (and Retry-After) calls for."""
    sink = make_sink(f"{receiver.base_url}{path}", max_attempts_4xx=2)
    assert await sink.deliver([_event(1)], attempts=[attempt]) == [expected]
    assert len(receiver.verified) == 1


async def test_timeout_is_a_retry(receiver: Receiver, make_sink: Any) -> None:
    """A receiver slower than read_timeout yields Retry(ReadTimeout), in about that time."""
    sink = make_sink(f"{receiver.base_url}/slow", read_timeout=0.5)
    started = time.monotonic()
    assert await sink.deliver([_event(1)]) == [Retry("ReadTimeout")]
    assert time.monotonic() - started < SLOW_SECONDS


async def test_dropped_connection_is_a_retry(make_sink: Any) -> None:
    """A server that reads the request and hangs up without answering yields a Retry."""
    got_request = asyncio.Event()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        got_request.set()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sink = make_sink(f"http://127.0.0.1:{port}/hook")
        assert await sink.deliver([_event(1)]) == [Retry("RemoteProtocolError")]
        assert got_request.is_set()
    finally:
        server.close()
        await server.wait_closed()


async def test_refused_connection_is_a_retry(make_sink: Any) -> None:
    """Nothing listening on the port yields Retry(ConnectError)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = make_sink(f"http://127.0.0.1:{port}/hook")
    assert await sink.deliver([_event(1)]) == [Retry("ConnectError")]


async def test_webhook_id_is_stable_across_retries(receiver: Receiver, make_sink: Any) -> None:
    """Retrying an event re-sends the same webhook-id, freshly signed and still valid."""
    sink = make_sink(f"{receiver.base_url}/status/503")
    event = _event(7)
    for attempt in (1, 2, 3):
        assert await sink.deliver([event], attempts=[attempt]) == [Retry("HTTP 503")]
    assert receiver.seen_ids == ["evt-7"] * 3
    assert receiver.rejected == 0


async def test_outcomes_keep_batch_order_when_answers_arrive_out_of_order(
    receiver: Receiver, make_sink: Any
) -> None:
    """Per-event answers land at their event's position even when earlier events answer last."""
    sink = make_sink(f"{receiver.base_url}/per-event", max_attempts_4xx=1)
    events = [
        _event(0, respond=200, delay=0.3),
        _event(1, respond=500, delay=0.2),
        _event(2, respond=410, delay=0.1),
        _event(3, respond=400, delay=0.0),
        _event(4, unserialisable=float("nan"), respond=200),
    ]
    assert await sink.deliver(events) == [
        Delivered(),
        Retry("HTTP 500"),
        DisableSink("HTTP 410 Gone"),
        DeadLetter("HTTP 400 after 1 attempts"),
        DeadLetter("payload is not JSON (ValueError)"),
    ]
    assert len(receiver.seen_ids) == 4  # the unserialisable event was never sent


async def test_batch_is_concurrent_up_to_max_concurrency(
    receiver: Receiver, make_sink: Any
) -> None:
    """Eight slow events with max_concurrency=3 overlap, never more than three at once."""
    sink = make_sink(f"{receiver.base_url}/per-event", max_concurrency=3)
    delay = 0.5
    events = [_event(n, respond=200, delay=delay, gather=[3, 8]) for n in range(8)]
    started = time.monotonic()
    assert await sink.deliver(events) == [Delivered()] * 8
    elapsed = time.monotonic() - started
    assert receiver.max_in_flight == 3
    # Faster than one at a time (8 x 0.5 s); three at a time takes about 1.5 s.
    assert elapsed < 8 * delay


async def test_logs_carry_counts_and_ids_but_no_patient_data(
    receiver: Receiver, make_sink: Any
) -> None:
    """The batch log line has counts; failures log event ids and reasons, never the payload."""
    sink = make_sink(f"{receiver.base_url}/per-event", max_attempts_4xx=1)
    with capture_logs() as logs:
        await sink.deliver([_event(1, respond=200), _event(2, respond=400)])
    batch = [entry for entry in logs if entry["event"] == "sink.batch"]
    assert batch == [
        {
            "event": "sink.batch",
            "log_level": "info",
            "sink": "crm",
            "kind": "webhook",
            "delivered": 1,
            "retry": 0,
            "dead_letter": 1,
            "disable_sink": 0,
        }
    ]
    failure = [entry for entry in logs if entry["event"] == "sink.event_not_delivered"]
    assert failure[0]["event_id"] == "evt-2"
    assert PATIENT_NAME not in json.dumps(logs, default=str)
