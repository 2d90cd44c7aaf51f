"""VoxaresClient over real sockets to a served sandbox: real timeouts, drops and refusals."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from syncd.exceptions import SendOutcomeUnknown, VoxaresTransportError
from syncd.sandbox.faults import FaultConfig, FaultRule
from syncd.sandbox.server import ServedSandbox
from syncd.voxares import ClientLimits, RetryPolicy, SendMessage, Timeouts, VoxaresClient
from syncd.voxares.contract import API_PREFIX
from tests.waiting import wait_until


@pytest.fixture(scope="module")
def served() -> Iterator[ServedSandbox]:
    """One sandbox subprocess for the module; each test sets its own faults."""
    with ServedSandbox(seed=9) as sandbox:
        yield sandbox


@pytest.fixture
def practice(served: ServedSandbox) -> Iterator[tuple[str, str]]:
    """A fresh practice (id, key) on the served sandbox; faults cleared afterwards."""
    created = served.admin.create_practice("client-served")
    yield created["id"], created["keys"][0]["key"]
    served.admin.set_faults(FaultConfig())


def client(base_url: str, key: str, **kwargs: object) -> VoxaresClient:
    """A client on httpx's real transport, no rate limit, three attempts without waits."""
    return VoxaresClient(
        base_url=base_url,
        api_key=key,
        limits=ClientLimits(requests_per_second=None),
        retry=RetryPolicy.no_wait(attempts=3),
        **kwargs,  # type: ignore[arg-type]
    )


def sms(provider_id: str) -> SendMessage:
    """An inline SMS that creates its patient."""
    return SendMessage(
        provider_id=provider_id,
        content="See you at 9",
        first_name="Ana",
        last_name="Horvat",
        mobile_number="+385991234567",
    )


def on_send(**faults: object) -> FaultConfig:
    """Faults aimed at POST /messages/send only."""
    return FaultConfig(rules=[FaultRule(method="POST", path_prefix="/messages/send", **faults)])


async def test_round_trip_over_http(served: ServedSandbox, practice: tuple[str, str]) -> None:
    """The default transport talks to a loopback server: send, then read the message back."""
    practice_id, key = practice
    async with client(served.base_url, key) as voxares:
        message = await voxares.send_message(sms("S-1"))
        again = await voxares.get_message(message.message_id)
        forms = await voxares.list_forms()
    assert again.message_id == message.message_id
    assert forms.count > 0
    assert voxares.server_time() is not None
    assert served.admin.stats(practice_id)["sendsAccepted"] == 1


@pytest.mark.parametrize(
    "faults",
    [
        on_send(hang_rate=1.0, hang_phase="after", hang_seconds=60.0),
        on_send(drop_rate=1.0, drop_phase="after"),
    ],
    ids=["read timeout", "connection dropped"],
)
async def test_lost_answer_on_a_real_socket_is_unknown_and_sent_once(
    served: ServedSandbox, practice: tuple[str, str], faults: FaultConfig
) -> None:
    """httpx's real ReadTimeout and RemoteProtocolError after the send: unknown, one SMS."""
    practice_id, key = practice
    served.admin.set_faults(faults)
    async with client(served.base_url, key, timeouts=Timeouts(read=0.5)) as voxares:
        with pytest.raises(SendOutcomeUnknown):
            await voxares.send_message(sms("S-2"))
    # The client may give up before a starved sandbox process has even processed the send.
    wait_until(lambda: served.admin.stats(practice_id)["sendsAccepted"], "the send")
    assert served.admin.stats(practice_id)["sendsAccepted"] == 1


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_refused_connection_is_retried_and_reported_as_not_reaching_the_server() -> None:
    """Connection refused: retried, then a transport error saying the request never left."""
    base_url = f"http://127.0.0.1:{closed_port()}{API_PREFIX}"
    async with client(base_url, "vox-1-nobody") as voxares:
        with pytest.raises(VoxaresTransportError) as read:
            await voxares.list_forms()
        with pytest.raises(VoxaresTransportError) as send:
            await voxares.send_message(sms("S-3"))
    assert read.value.reached_server is False
    assert send.value.reached_server is False
    assert not isinstance(send.value, SendOutcomeUnknown)
