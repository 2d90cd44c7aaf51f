"""VoxaresClient against the sandbox's injected faults: at most one SMS, retries, rate limit."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from syncd.exceptions import RateLimited, SendOutcomeUnknown
from syncd.sandbox.app import create_app
from syncd.sandbox.faults import FaultConfig, FaultRule, RateLimit
from syncd.sandbox.state import DEMO_API_KEY, Sandbox
from syncd.voxares import (
    ClientLimits,
    Limiter,
    RetryPolicy,
    SendMessage,
    Timeouts,
    VoxaresClient,
)
from syncd.voxares.contract import API_PREFIX

BASE = "http://sandbox" + API_PREFIX
SMS = SendMessage(
    provider_id="E-1",
    content="Your appointment is tomorrow",
    first_name="Ana",
    last_name="Horvat",
    mobile_number="+385991234567",
)


def on_send(**faults: Any) -> FaultConfig:
    """Faults aimed at POST /messages/send only."""
    return FaultConfig(
        rules=[FaultRule(method="POST", path_prefix="/messages/send", **faults)],
        retry_after_seconds=0,
    )


def send_requests(sandbox: Sandbox) -> dict[str, int]:
    """The sandbox's count of POST /messages/send requests, by outcome."""
    requests: dict[str, int] = sandbox.stats()["requests"]
    prefix = "POST /messages/send "
    return {k.removeprefix(prefix): n for k, n in requests.items() if k.startswith(prefix)}


def make_client(transport: httpx.AsyncBaseTransport, **kwargs: Any) -> VoxaresClient:
    """A client that would retry five times without waiting if the send rule let it."""
    kwargs.setdefault("limits", ClientLimits(requests_per_second=None))
    kwargs.setdefault("retry", RetryPolicy.no_wait(attempts=5))
    # No attempt in-process is anywhere near 30 s, however loaded the machine.
    kwargs.setdefault("timeouts", Timeouts(attempt=30.0))
    return VoxaresClient(base_url=BASE, api_key=DEMO_API_KEY, transport=transport, **kwargs)


AMBIGUOUS = {
    "500 after processing": on_send(error_rates={500: 1.0}, error_phase="after"),
    "502 after processing": on_send(error_rates={502: 1.0}, error_phase="after"),
    "503 after processing": on_send(error_rates={503: 1.0}, error_phase="after"),
    "504 after processing": on_send(error_rates={504: 1.0}, error_phase="after"),
    "connection dropped after processing": on_send(drop_rate=1.0, drop_phase="after"),
    "answer never comes (read timeout)": on_send(
        hang_rate=1.0, hang_phase="after", hang_seconds=600.0
    ),
    "malformed 2xx": on_send(malformed_json_rate=1.0),
    "truncated 2xx": on_send(truncated_body_rate=1.0),
}


class FakeTime:
    """Monotonic seconds that move only when someone sleeps on them (the client's limiter)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class Counting(httpx.AsyncBaseTransport):
    """Counts the requests that leave the client (the sandbox counts only answered ones)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        return await self.inner.handle_async_request(request)


@pytest.mark.parametrize("fault", list(AMBIGUOUS))
async def test_ambiguous_send_is_tried_once_and_sent_once(fault: str) -> None:
    """The sandbox accepted the SMS and its answer was lost: one request, one SMS, unknown."""
    sandbox = Sandbox(seed=5)
    transport = Counting(httpx.ASGITransport(app=create_app(sandbox, AMBIGUOUS[fault])))
    # The hang never answers, so this deadline always cuts it off; 2 s is what the send's
    # processing (milliseconds, in-process) has before it, and what the test waits.
    async with make_client(transport, timeouts=Timeouts(attempt=2.0)) as client:
        with pytest.raises(SendOutcomeUnknown):
            await client.send_message(SMS)
    assert transport.requests == 1
    assert sandbox.stats()["sendsAccepted"] == 1
    assert sandbox.stats()["duplicateSends"] == 0


@pytest.mark.parametrize(
    "faults",
    [
        on_send(error_rates={503: 1.0}, error_phase="before"),
        on_send(drop_rate=1.0, drop_phase="before"),
    ],
    ids=["503 before processing", "dropped before processing"],
)
async def test_unprovable_rejection_is_still_unknown_and_not_retried(faults: FaultConfig) -> None:
    """A 503 or a drop cannot show the SMS was not taken: unknown, once, though none was sent."""
    sandbox = Sandbox(seed=5)
    transport = Counting(httpx.ASGITransport(app=create_app(sandbox, faults)))
    async with make_client(transport) as client:
        with pytest.raises(SendOutcomeUnknown):
            await client.send_message(SMS)
    assert transport.requests == 1
    assert sandbox.stats()["sendsAccepted"] == 0


class RefuseFirstConnect(httpx.AsyncBaseTransport):
    """Fails the first request as a refused connection, then passes requests through."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.refused = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self.refused:
            self.refused += 1
            raise httpx.ConnectError("[Errno 111] Connection refused")
        return await self.inner.handle_async_request(request)


async def test_send_after_a_refused_connection_is_retried_and_sent_once() -> None:
    """A refused connect never reached Voxares: the send is made again, and once."""
    sandbox = Sandbox(seed=5)
    transport = RefuseFirstConnect(httpx.ASGITransport(app=create_app(sandbox)))
    async with make_client(transport) as client:
        message = await client.send_message(SMS)
    assert transport.refused == 1
    assert send_requests(sandbox) == {"201": 1}
    assert sandbox.stats()["sendsAccepted"] == 1
    assert message.status == "Pending"


class HeldClock:
    """Monotonic seconds held still until `let_go()`, then real time again: the server's
    bucket cannot refill while a slow machine runs the calls before the 429."""

    def __init__(self) -> None:
        self.held: float | None = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() if self.held is None else self.held

    def let_go(self) -> None:
        self.held = None


class LetGoOn429(httpx.AsyncBaseTransport):
    """Lets the held clock go once the server has answered 429 (the client's wait begins)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, clock: HeldClock) -> None:
        self.inner = inner
        self.clock = clock

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if response.status_code == 429:
            self.clock.let_go()
        return response


async def test_send_answered_429_waits_retry_after_then_sends_once() -> None:
    """After a 429 the send waits the server's Retry-After (1 s) and then goes through once."""
    sandbox = Sandbox(seed=5)
    clock = HeldClock()
    app = create_app(
        sandbox, FaultConfig(rate_limit=RateLimit(rps=2.0, burst=1)), fault_clock=clock
    )
    retry = RetryPolicy(attempts=3, initial=0.01, max_backoff=0.05, timeout=10.0)
    transport = LetGoOn429(httpx.ASGITransport(app=app), clock)
    async with make_client(transport, retry=retry) as client:
        await client.list_forms()  # takes the server bucket's only token
        started = time.monotonic()
        message = await client.send_message(SMS)
        waited = time.monotonic() - started
    assert message.message_id
    assert send_requests(sandbox) == {"429": 1, "201": 1}
    assert sandbox.stats()["sendsAccepted"] == 1
    assert waited >= 1.0


async def test_send_refused_429_every_time_ends_rate_limited_with_nothing_sent() -> None:
    """A send that only ever gets 429 gives up as RateLimited after its attempts."""
    sandbox = Sandbox(seed=5)
    app = create_app(sandbox, on_send(error_rates={429: 1.0}))
    async with make_client(httpx.ASGITransport(app=app), retry=RetryPolicy.no_wait(3)) as client:
        with pytest.raises(RateLimited):
            await client.send_message(SMS)
    assert send_requests(sandbox) == {"429": 3}
    assert sandbox.stats()["sendsAccepted"] == 0


async def test_reads_are_retried_through_server_faults() -> None:
    """A read answered 503 or dropped half the time still succeeds, retried."""
    sandbox = Sandbox(seed=5)
    faults = FaultConfig(error_rates={503: 0.3}, drop_rate=0.2, retry_after_seconds=0, seed=11)
    app = create_app(sandbox, faults)
    async with make_client(httpx.ASGITransport(app=app), retry=RetryPolicy.no_wait(8)) as client:
        pages = [await client.list_forms() for _ in range(20)]
    assert all(page.count > 0 for page in pages)
    failed = sum(n for k, n in sandbox.stats()["requests"].items() if not k.endswith(" 200"))
    assert failed > 0  # the faults did happen, and were retried away


async def test_client_rate_meets_server_bucket_without_429() -> None:
    """At 200/s against a 200/s server bucket of 2 tokens, 300 calls get no 429 and keep pace.

    Client and server share one clock that moves only when the client's limiter sleeps:
    the server sees exactly the limiter's schedule. (On real clocks a loaded machine's
    scheduling stalls bunch requests up in a way no client-side pacing can hide.)
    """
    sandbox = Sandbox(seed=5)
    fake = FakeTime()
    app: Starlette = create_app(
        sandbox, FaultConfig(rate_limit=RateLimit(rps=200.0, burst=2)), fault_clock=fake.clock
    )
    limits = ClientLimits(requests_per_second=200.0, max_concurrency=8)
    limiter = Limiter(limits, clock=fake.clock, sleep=fake.sleep)
    async with make_client(httpx.ASGITransport(app=app), limits=limits, limiter=limiter) as client:
        started = fake.now
        await asyncio.gather(*(client.list_forms(page_size=1) for _ in range(300)))
        elapsed = fake.now - started
    statuses = {k.rsplit(" ", 1)[1]: n for k, n in sandbox.stats()["requests"].items()}
    assert statuses == {"200": 300}
    # 300 calls at 196/s take about 1.5 s; the bound only catches a limiter far too slow.
    assert 299 / elapsed > 100
