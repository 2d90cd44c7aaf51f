"""Statuses and transport failures become syncd exceptions, retried only where they may pass."""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest
from structlog.testing import capture_logs

from syncd import metrics
from syncd.exceptions import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
    VoxaresHTTPError,
    VoxaresMalformedResponse,
    VoxaresTransportError,
)
from syncd.voxares import ClientLimits, Limiter, RetryPolicy, Timeouts, VoxaresClient
from syncd.voxares.models import PatientUpsert
from syncd.voxares.testing import ScriptedTransport, json_response, truncated_response

BASE = "http://sandbox/api/v1/integration"
KEY = "vox-k1-s3cr3tvalue"
PATIENT = {"id": "p-1", "firstName": "Ana", "lastName": "Kovač"}
TEMPLATE = "/patients/{provider}/{provider_id}"


def make_client(transport: ScriptedTransport, **kwargs: Any) -> VoxaresClient:
    """A client on a scripted transport, without rate limit or retry waits."""
    kwargs.setdefault("limits", ClientLimits(requests_per_second=None))
    kwargs.setdefault("retry", RetryPolicy.no_wait(attempts=3))
    return VoxaresClient(base_url=BASE, api_key=KEY, transport=transport, **kwargs)


def error(status: int, message: object = "nope") -> httpx.Response:
    """An error answer in the API's shape."""
    return json_response(status, {"statusCode": status, "message": message, "error": "E"})


def api_calls(status: str) -> float:
    """The API_CALLS counter of GET on the patient-by-id template for one status."""
    value = metrics.REGISTRY.get_sample_value(
        "syncd_api_calls_total", {"method": "GET", "endpoint": TEMPLATE, "status": status}
    )
    return value or 0.0


def retries_counted() -> float:
    """The API_RETRIES counter of the patient-by-id template."""
    value = metrics.REGISTRY.get_sample_value("syncd_api_retries_total", {"endpoint": TEMPLATE})
    return value or 0.0


@pytest.mark.parametrize(
    ("status", "kind", "attempts"),
    [
        (400, Invalid, 1),
        (401, Unauthorized, 1),
        (403, Forbidden, 1),
        (404, NotFound, 1),
        (409, Conflict, 1),
        (422, Invalid, 1),
        (418, VoxaresHTTPError, 1),
        (501, ServerError, 1),
        (429, RateLimited, 3),
        (500, ServerError, 3),
        (502, ServerError, 3),
        (503, ServerError, 3),
        (504, ServerError, 3),
    ],
)
async def test_status_maps_to_exception_and_retries_only_transient_ones(
    status: int, kind: type[VoxaresHTTPError], attempts: int
) -> None:
    """Each error status raises its exception; only 429/500/502/503/504 are tried again."""
    transport = ScriptedTransport(default=lambda _: error(status))
    before = api_calls(str(status))
    async with make_client(transport) as client:
        with pytest.raises(kind) as info:
            await client.get_patient("ehr", "patient-42")
    assert type(info.value) is kind
    assert transport.calls == attempts
    assert api_calls(str(status)) - before == attempts
    assert info.value.status == status
    assert info.value.method == "GET"
    assert info.value.path == TEMPLATE
    assert "patient-42" not in str(info.value)


async def test_api_message_is_carried_as_string_or_joined_list() -> None:
    """The API's message (string or list) is kept on the exception and in its text."""
    transport = ScriptedTransport(
        error(422, ["firstName must be a string", "email must be an email"]), error(403, "scope")
    )
    async with make_client(transport) as client:
        with pytest.raises(Invalid) as invalid:
            await client.get_patient("ehr", "1")
        with pytest.raises(Forbidden) as forbidden:
            await client.get_patient("ehr", "1")
    assert invalid.value.api_message == "firstName must be a string; email must be an email"
    assert "email must be an email" in str(invalid.value)
    assert forbidden.value.api_message == "scope"


async def test_api_message_never_echoes_what_the_call_sent() -> None:
    """Ids from the path, and a NestJS unknown-route path, are cut out of the API's message."""
    transport = ScriptedTransport(
        error(404, "Patient EHR-77310 of provider ehr/main not found"),
        error(404, "Cannot GET /api/v1/integration/patients/ehr/main/EHR-77310"),
    )
    async with make_client(transport) as client:
        with pytest.raises(NotFound) as echoed:
            await client.get_patient("ehr/main", "EHR-77310")
        with pytest.raises(NotFound) as route:
            await client.get_patient("ehr/main", "EHR-77310")
    assert echoed.value.api_message == "Patient <redacted> of provider <redacted> not found"
    assert route.value.api_message == "Cannot GET <path>"
    for exc in (echoed.value, route.value):
        assert "EHR-77310" not in str(exc)
        assert "ehr/main" not in str(exc)


CANARY_NAME = "CANARY\u017dFN"  # CANARYŽFN
CANARY_ID = "EHR Ž/77"


def echo_every_spelling(request: httpx.Request) -> httpx.Response:
    """A 422 quoting what it was sent in every usual encoding, and the caller's key."""
    sent = json.loads(request.content)
    name = sent["firstName"]
    message = [
        f"token {request.headers['Authorization']}, secret {KEY.rsplit('-', 1)[-1]}",
        f"firstName {json.dumps(name)} is invalid",  # JSON-escaped, lower-case hex
        f"again {json.dumps(name).upper()}",  # upper-case hex
        f"raw {name}, {name.lower()}",
        f"at {quote(CANARY_ID, safe='')}, {quote_plus(CANARY_ID)}",
        f"{json.dumps({'lastName': sent['lastName']})}",
    ]
    return error(422, message)


async def test_api_message_is_scrubbed_of_every_encoding_of_sent_values_and_the_key() -> None:
    """Raw, JSON-escaped and percent-encoded echoes of sent values, and the key, are cut."""
    transport = ScriptedTransport(default=echo_every_spelling)
    patient = PatientUpsert(
        provider="ehr",
        provider_id=CANARY_ID,
        first_name=CANARY_NAME,
        last_name="Quillfeatherby",
        mobile_number="+385917776655",
    )
    async with make_client(transport) as client:
        with pytest.raises(Invalid) as invalid:
            await client.upsert_patient(patient)
    text = f"{invalid.value} {invalid.value!r} {invalid.value.api_message}"
    escaped = json.dumps(CANARY_NAME)[1:-1]
    for leak in (
        CANARY_NAME,
        CANARY_NAME.lower(),
        escaped,
        escaped.upper(),
        "Quillfeatherby",
        "7776655",
        CANARY_ID,
        quote(CANARY_ID, safe=""),
        quote_plus(CANARY_ID),
        KEY,
        KEY.rsplit("-", 1)[-1],
    ):
        assert leak.lower() not in text.lower(), leak
    assert 'firstName "<redacted>" is invalid' in text
    assert not invalid.value.api_message.endswith("…")  # every echo above was checked


async def test_error_without_json_body_still_maps() -> None:
    """A gateway's HTML 502 page maps to ServerError without an API message."""
    html = httpx.Response(502, text="<html>Bad gateway</html>")
    transport = ScriptedTransport(html, html, html)
    async with make_client(transport) as client:
        with pytest.raises(ServerError) as info:
            await client.get_patient("ehr", "1")
    assert info.value.api_message is None


async def test_transient_failures_then_success_returns_result_and_counts_retries() -> None:
    """503, then a read timeout, then 200: the call succeeds and two retries are counted."""
    transport = ScriptedTransport(
        error(503), httpx.ReadTimeout("timed out"), json_response(200, PATIENT)
    )
    retries_before, no_response_before = retries_counted(), api_calls("0")
    async with make_client(transport) as client:
        patient = await client.get_patient("ehr", "1")
    assert patient.id == "p-1"
    assert transport.calls == 3
    assert retries_counted() - retries_before == 2
    assert api_calls("0") - no_response_before == 1


@pytest.mark.parametrize(
    ("failure", "reached"),
    [
        (httpx.ConnectError("refused"), False),
        (httpx.ConnectTimeout("connect timed out"), False),
        (httpx.PoolTimeout("pool"), False),
        (httpx.ReadTimeout("read timed out"), True),
        (httpx.WriteTimeout("write timed out"), True),
        (httpx.RemoteProtocolError("Server disconnected"), True),
        (httpx.ReadError("reset by peer"), True),
    ],
)
async def test_transport_failures_become_transport_errors_after_retries(
    failure: Exception, reached: bool
) -> None:
    """httpx failures are retried and surface as VoxaresTransportError, never as httpx errors."""
    transport = ScriptedTransport(default=failure)
    async with make_client(transport) as client:
        with pytest.raises(VoxaresTransportError) as info:
            await client.get_patient("ehr", "1")
    assert transport.calls == 3
    assert info.value.reached_server is reached
    assert not isinstance(info.value, httpx.HTTPError)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__
    assert type(failure).__name__ in str(info.value)


async def test_truncated_body_is_a_transport_error_and_retried() -> None:
    """A body cut off by a dropped connection is retried for a read, then succeeds."""
    transport = ScriptedTransport(truncated_response(200, PATIENT), json_response(200, PATIENT))
    async with make_client(transport) as client:
        patient = await client.get_patient("ehr", "1")
    assert patient.id == "p-1"
    assert transport.calls == 2


@pytest.mark.parametrize(
    "answer",
    [
        json_response(200, {"firstName": "Ana"}),
        json_response(200, ["not", "an", "object"]),
        httpx.Response(200, text='{"id": "p-1", "firstN'),
        httpx.Response(200, content=b""),
    ],
)
async def test_malformed_2xx_is_not_retried(answer: httpx.Response) -> None:
    """A 2xx that breaks the contract raises VoxaresMalformedResponse after one attempt."""
    transport = ScriptedTransport(answer)
    async with make_client(transport) as client:
        with pytest.raises(VoxaresMalformedResponse) as info:
            await client.get_patient("ehr", "1")
    assert transport.calls == 1
    assert info.value.path == TEMPLATE
    assert "Ana" not in str(info.value)


async def test_malformed_list_names_fields_not_values() -> None:
    """The malformed-response message says which field failed, without its value."""
    bad = json_response(200, {"data": [{"firstName": "Ana"}], "count": "many"})
    async with make_client(ScriptedTransport(bad)) as client:
        with pytest.raises(VoxaresMalformedResponse) as info:
            await client.list_patients()
    assert "data.0.id (missing)" in str(info.value)
    assert "count" in str(info.value)
    assert "Ana" not in str(info.value)
    assert "many" not in str(info.value)


async def test_whole_attempt_deadline_holds_for_a_hanging_transport() -> None:
    """A transport that never answers is cut off by Timeouts.attempt and retried."""

    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    transport = httpx.MockTransport(hang)
    client = VoxaresClient(
        base_url=BASE,
        api_key=KEY,
        transport=transport,
        limits=ClientLimits(requests_per_second=None),
        retry=RetryPolicy.no_wait(attempts=2),
        timeouts=Timeouts(attempt=0.02),
    )
    async with client:
        with pytest.raises(VoxaresTransportError) as info:
            await client.get_patient("ehr", "1")
    assert info.value.reached_server is True


def retry_events(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    """The client's retry decisions among captured log entries."""
    return [e for e in logs if e["event"] == "voxares.retry_scheduled"]


@pytest.mark.parametrize(
    ("headers", "at_least"),
    [
        ({"Retry-After": "7"}, 7.0),
        # HTTP-date form, read against the response's own Date so clock skew cannot shorten it.
        (
            {
                "Date": "Tue, 20 May 2025 09:15:00 GMT",
                "Retry-After": "Tue, 20 May 2025 09:15:12 GMT",
            },
            12.0,
        ),
    ],
)
async def test_retry_after_is_never_undercut(headers: dict[str, str], at_least: float) -> None:
    """After a 429 with Retry-After the retry waits at least that long, and so does the key."""
    clock = [1000.0]
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    limiter = Limiter(
        ClientLimits(requests_per_second=100.0), clock=lambda: clock[0], sleep=fake_sleep
    )
    transport = ScriptedTransport(
        json_response(429, {"message": "slow down"}, headers=headers), json_response(200, PATIENT)
    )
    with capture_logs() as logs:
        async with make_client(transport, limiter=limiter, retry=RetryPolicy.no_wait(5)) as client:
            await client.get_patient("ehr", "1")
    [scheduled] = retry_events(logs)
    assert scheduled["delay_s"] >= at_least
    assert scheduled["status"] == 429
    # The key's shared limiter held the retry back for the Retry-After as well.
    assert transport.calls == 2
    assert sum(slept) >= at_least


async def test_retry_after_beyond_the_time_budget_gives_up_with_rate_limited() -> None:
    """A Retry-After longer than the call's budget is not waited out: RateLimited is raised."""
    transport = ScriptedTransport(
        json_response(429, {"message": "later"}, headers={"Retry-After": "3600"})
    )
    policy = RetryPolicy(attempts=5, timeout=60.0, wait=False)
    async with make_client(transport, retry=policy) as client:
        with pytest.raises(RateLimited) as info:
            await client.get_patient("ehr", "1")
    assert transport.calls == 1
    assert info.value.retry_after == 3600.0


async def test_backoff_grows_with_full_jitter_under_the_cap() -> None:
    """Scheduled waits of successive retries stay within the doubling, capped ceiling."""
    transport = ScriptedTransport(default=lambda _: error(503))
    policy = RetryPolicy(attempts=6, initial=0.5, max_backoff=2.0, timeout=None, wait=False)
    with capture_logs() as logs:
        async with make_client(transport, retry=policy) as client:
            with pytest.raises(ServerError):
                await client.get_patient("ehr", "1")
    delays = [e["delay_s"] for e in retry_events(logs)]
    assert len(delays) == 5
    for number, delay in enumerate(delays, start=1):
        assert 0.0 <= delay <= min(2.0, 0.5 * 2 ** (number - 1))


async def test_unexpected_exception_from_a_read_transport_is_not_swallowed() -> None:
    """A bug in a transport (not an httpx failure) surfaces as itself for non-send calls."""

    def broken(request: httpx.Request) -> httpx.Response:
        raise KeyError("bug")

    async with make_client(ScriptedTransport(broken)) as client:
        with pytest.raises(KeyError):
            await client.get_patient("ehr", "1")
