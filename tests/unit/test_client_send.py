"""POST /messages/send is tried once whenever the request may have reached Voxares."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from syncd.exceptions import Invalid, RateLimited, SendOutcomeUnknown, Unauthorized
from syncd.voxares import ClientLimits, RetryPolicy, SendMessage, Timeouts, VoxaresClient
from syncd.voxares.testing import ScriptedTransport, Step, json_response, truncated_response

BASE = "http://sandbox/api/v1/integration"
KEY = "vox-k1-s3cr3tvalue"
MESSAGE = {"messageId": "m-1", "patientId": "p-1", "status": "Pending", "smsCount": 1}
SMS = SendMessage(provider_id="42", content="Your appointment is tomorrow", first_name="Ana")


def make_client(transport: httpx.AsyncBaseTransport, **kwargs: Any) -> VoxaresClient:
    """A client that would retry up to 5 times if the send rule allowed it."""
    kwargs.setdefault("limits", ClientLimits(requests_per_second=None))
    kwargs.setdefault("retry", RetryPolicy.no_wait(attempts=5))
    return VoxaresClient(base_url=BASE, api_key=KEY, transport=transport, **kwargs)


AMBIGUOUS: dict[str, Step] = {
    "read timeout": httpx.ReadTimeout("timed out"),
    "write timeout": httpx.WriteTimeout("timed out"),
    "dropped connection": httpx.RemoteProtocolError("Server disconnected without response"),
    "connection reset": httpx.ReadError("Connection reset by peer"),
    "500": json_response(500, {"message": "boom"}),
    "502": httpx.Response(502, text="Bad gateway"),
    "503": json_response(503, {"message": "down"}, headers={"Retry-After": "1"}),
    "504": json_response(504, {"message": "gateway timeout"}),
    "malformed 2xx": json_response(201, {"status": "Pending"}),
    "non-JSON 2xx": httpx.Response(201, text="<html>ok</html>"),
    "empty 2xx": httpx.Response(201),
    "truncated body": truncated_response(201, MESSAGE),
}


@pytest.mark.parametrize("fault", list(AMBIGUOUS))
async def test_ambiguous_failure_is_one_attempt_and_outcome_unknown(fault: str) -> None:
    """Each failure after which the SMS may have gone out stops at one attempt."""
    transport = ScriptedTransport(AMBIGUOUS[fault], default=lambda _: json_response(201, MESSAGE))
    with capture_logs() as logs:
        async with make_client(transport) as client:
            with pytest.raises(SendOutcomeUnknown) as info:
                await client.send_message(SMS)
    assert transport.calls == 1
    assert info.value.method == "POST"
    assert info.value.path == "/messages/send"
    assert info.value.__cause__ is None
    assert "voxares.send_outcome_unknown" in [e["event"] for e in logs]
    assert not [e for e in logs if e["event"] == "voxares.retry_scheduled"]


async def test_hanging_send_hits_the_attempt_deadline_and_is_unknown() -> None:
    """A send that gets no answer before Timeouts.attempt is unknown, not retried."""
    calls = 0

    async def hang(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    client = make_client(httpx.MockTransport(hang), timeouts=Timeouts(attempt=0.02))
    async with client:
        with pytest.raises(SendOutcomeUnknown):
            await client.send_message(SMS)
    assert calls == 1


async def test_unknown_transport_fault_during_send_is_outcome_unknown() -> None:
    """Even a non-httpx fault mid-send leaves the outcome unknown rather than retried."""

    def broken(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("socket library bug")

    transport = ScriptedTransport(broken, default=lambda _: json_response(201, MESSAGE))
    async with make_client(transport) as client:
        with pytest.raises(SendOutcomeUnknown):
            await client.send_message(SMS)
    assert transport.calls == 1


@pytest.mark.parametrize(
    "first",
    [
        httpx.ConnectError("Connection refused"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.PoolTimeout("no free connection"),
        json_response(429, {"message": "slow down"}, headers={"Retry-After": "0"}),
    ],
    ids=["connect refused", "connect timeout", "pool timeout", "429"],
)
async def test_send_that_provably_did_not_get_through_is_retried(first: Step) -> None:
    """Connect failures, pool timeouts and 429 never reached the SMS logic: send again."""
    transport = ScriptedTransport(first, json_response(201, MESSAGE))
    async with make_client(transport) as client:
        message = await client.send_message(SMS)
    assert message.message_id == "m-1"
    assert transport.calls == 2
    bodies = transport.json_bodies()
    assert bodies[0] == bodies[1]


async def test_send_rejected_by_validation_is_not_unknown() -> None:
    """A 422 means the API refused the SMS: Invalid, once, not SendOutcomeUnknown."""
    transport = ScriptedTransport(json_response(422, {"message": ["content too long"]}))
    async with make_client(transport) as client:
        with pytest.raises(Invalid) as info:
            await client.send_message(SMS)
    assert transport.calls == 1
    assert info.value.api_message == "content too long"


async def test_send_with_bad_key_is_unauthorized_once() -> None:
    """A 401 on send is Unauthorized after one attempt."""
    transport = ScriptedTransport(json_response(401, {"message": "bad key"}))
    async with make_client(transport) as client:
        with pytest.raises(Unauthorized):
            await client.send_message(SMS)
    assert transport.calls == 1


async def test_send_rate_limited_on_every_attempt_ends_rate_limited() -> None:
    """A send answered 429 each time gives up as RateLimited (it never went out)."""
    transport = ScriptedTransport(default=lambda _: json_response(429, {"message": "slow"}))
    async with make_client(transport, retry=RetryPolicy.no_wait(attempts=3)) as client:
        with pytest.raises(RateLimited):
            await client.send_message(SMS)
    assert transport.calls == 3
