"""The API key and patient data stay out of reprs, exceptions and logs; https is enforced."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from syncd.exceptions import ConfigError, SyncdError
from syncd.voxares import (
    ClientLimits,
    PatientUpsert,
    RetryPolicy,
    SendMessage,
    VoxaresClient,
)
from syncd.voxares.testing import ScriptedTransport, Step, json_response, truncated_response

BASE = "http://sandbox/api/v1/integration"
KEY = "vox-k1-Zq8sUperSecretPart"
SECRET_PART = "Zq8sUperSecretPart"
# Patient data sent in the calls below; none of it may show up anywhere.
PATIENT_DATA = ("Ana", "Kovač", "+385991234567", "ana@example.org", "1990-01-15", "EHR-77310")


def make_client(transport: httpx.AsyncBaseTransport) -> VoxaresClient:
    """A client with the secret key, no waits, two attempts per call."""
    return VoxaresClient(
        base_url=BASE,
        api_key=SecretStr(KEY),
        transport=transport,
        limits=ClientLimits(requests_per_second=None),
        retry=RetryPolicy.no_wait(attempts=2),
    )


# Every way a call can fail; several answers echo the request's patient data back.
FAILURES: list[Callable[[], Step]] = [
    lambda: json_response(400, {"message": ["mobileNumber must be E.164"], "error": "Bad"}),
    lambda: json_response(401, {"message": "Unauthorized"}),
    lambda: json_response(403, {"message": "missing scope"}),
    lambda: json_response(404, {"message": "not found"}),
    lambda: json_response(409, {"message": "duplicate"}),
    lambda: json_response(422, {"message": "invalid"}),
    lambda: json_response(429, {"message": "slow"}),
    lambda: json_response(500, {"message": "boom"}),
    lambda: json_response(200, {"firstName": "Ana", "mobileNumber": "+385991234567"}),
    lambda: httpx.Response(200, text="Ana Kovač +385991234567 not json"),
    lambda: truncated_response(200, {"firstName": "Ana", "lastName": "Kovač"}),
    lambda: httpx.ConnectError("Connection refused"),
    lambda: httpx.ReadTimeout("timed out"),
    lambda: httpx.RemoteProtocolError("Server disconnected"),
]


UPSERT = PatientUpsert(
    provider_id="EHR-77310",
    first_name="Ana",
    last_name="Kovač",
    mobile_number="+385991234567",
    email="ana@example.org",
    date_of_birth="1990-01-15",
)
SMS = SendMessage(provider_id="EHR-77310", content="Ana, see you", first_name="Ana")
# An upsert, a search, a lookup and a send, each full of patient data.
CALLS: list[Callable[[VoxaresClient], Awaitable[object]]] = [
    lambda client: client.upsert_patient(UPSERT),
    lambda client: client.list_patients(search_term="Ana Kovač"),
    lambda client: client.get_patient("ehr", "EHR-77310"),
    lambda client: client.send_message(SMS),
]


def answer_with(make: Callable[[], Step]) -> Callable[[httpx.Request], httpx.Response]:
    """A transport step that builds a fresh failure for every request."""

    def step(request: httpx.Request) -> httpx.Response:
        made = make()
        if isinstance(made, Exception):
            raise made
        assert isinstance(made, httpx.Response)
        return made

    return step


async def provoke_every_failure() -> tuple[list[BaseException], list[MutableMapping[str, Any]]]:
    """Run every call against every failure; return the errors raised and the logs."""
    caught: list[BaseException] = []
    with capture_logs() as logs:
        for make in FAILURES:
            for call in CALLS:
                transport = ScriptedTransport(default=answer_with(make))
                async with make_client(transport) as client:
                    try:
                        await call(client)
                    except SyncdError as exc:
                        caught.append(exc)
    return caught, logs


async def test_no_key_or_patient_data_in_exceptions_or_logs() -> None:
    """Across every failure mode, errors and log entries name no key and no patient data."""
    caught, logs = await provoke_every_failure()
    assert len(caught) == len(CALLS) * len(FAILURES)
    texts = [f"{exc!s} {exc!r} {exc.args!r} {vars(exc)!r}" for exc in caught]
    texts.append(repr(logs))
    joined = "\n".join(texts)
    assert SECRET_PART not in joined
    assert "Bearer" not in joined
    for value in PATIENT_DATA:
        assert value not in joined, value
    # The logs did record the calls (ids and templates only).
    assert any(entry["event"] == "voxares.request" for entry in logs)


def test_client_repr_and_str_hide_the_key() -> None:
    """The client's repr and str show the base URL but not the key."""
    client = VoxaresClient(base_url=BASE, api_key=KEY, transport=ScriptedTransport())
    assert SECRET_PART not in repr(client)
    assert SECRET_PART not in str(client)
    assert "sandbox" in repr(client)


@pytest.mark.parametrize("bad_key", ["", "vox-1-with space", "vox-1-line\nbreak"])
def test_unusable_key_is_a_config_error_that_does_not_echo_it(bad_key: str) -> None:
    """A key that cannot travel in a header is refused at construction, without quoting it."""
    with pytest.raises(ConfigError) as info:
        VoxaresClient(base_url=BASE, api_key=bad_key, transport=ScriptedTransport())
    if bad_key:
        assert bad_key not in str(info.value)
    assert "api_key" in str(info.value)


@pytest.mark.parametrize(
    ("url", "with_transport"),
    [
        ("https://api.voxares.com/api/v1/integration", False),
        ("https://staging-api.voxares.com/api/v1/integration", True),
        ("http://localhost:8080/api/v1/integration", False),
        ("http://127.0.0.1:8080/api/v1/integration", False),
        ("http://[::1]:8080/api/v1/integration", False),
        ("http://sandbox/api/v1/integration", True),
    ],
)
def test_accepted_base_urls(url: str, with_transport: bool) -> None:
    """https anywhere; plain http for loopback, or a one-label host with an injected transport."""
    transport = ScriptedTransport() if with_transport else None
    VoxaresClient(base_url=url, api_key=KEY, transport=transport)


@pytest.mark.parametrize(
    ("url", "with_transport"),
    [
        ("http://api.voxares.com/api/v1/integration", False),
        ("http://api.voxares.com/api/v1/integration", True),
        ("http://sandbox/api/v1/integration", False),
        ("http://10.0.0.7/api/v1/integration", True),
        ("ftp://api.voxares.com/", False),
        ("https://user:pw@api.voxares.com/", False),
        ("https://api.voxares.com/?key=x", False),
        ("api.voxares.com", False),
        ("", False),
    ],
)
def test_refused_base_urls(url: str, with_transport: bool) -> None:
    """Anything that could carry the key in clear text over a network is a ConfigError."""
    transport = ScriptedTransport() if with_transport else None
    with pytest.raises(ConfigError, match="base_url"):
        VoxaresClient(base_url=url, api_key=KEY, transport=transport)
