"""The SMS sender against a served sandbox (a subprocess on a real port), where the fault
needs a socket: a refused connection, a read timeout after the server accepted the send, a
reply cut off on the wire, and a real SIGKILL of a process in the middle of a send.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine
from structlog.testing import capture_logs

from syncd.messages import submit_request
from syncd.messages.sender import STEP_AFTER_MARK, STEP_AFTER_SEND, MessageSender
from syncd.sandbox.faults import FaultConfig, FaultRule
from syncd.sandbox.server import ServedSandbox
from syncd.sandbox.state import send_fingerprint
from syncd.state.db import make_engine
from syncd.testing_hooks import ENV_VAR
from syncd.voxares.client import Timeouts, VoxaresClient
from syncd.voxares.contract import API_PREFIX
from syncd.voxares.limits import ClientLimits
from syncd.voxares.retry import RetryPolicy
from tests.integration.test_messages_support import (
    PROVIDER,
    add_patient,
    migrated_sqlite,
    request,
)
from tests.waiting import wait_until

TEXT = "Your appointment is tomorrow at 9"
KEY_ENV = "SYNCD_TEST_SANDBOX_KEY"

# What a daemon process runs: one send_messages run against the served sandbox.
SEND_ONCE = """
import asyncio, os, sys
from syncd.messages.sender import MessageSender
from syncd.state.db import make_engine
from syncd.voxares.client import VoxaresClient
from syncd.voxares.limits import ClientLimits

async def main() -> None:
    engine = make_engine(sys.argv[1])
    limits = ClientLimits(requests_per_second=None)
    key = os.environ["SYNCD_TEST_SANDBOX_KEY"]
    async with VoxaresClient(base_url=sys.argv[2], api_key=key, limits=limits) as client:
        await MessageSender(engine, client, provider="ehr").run(None)

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def served() -> Iterator[ServedSandbox]:
    """One served sandbox for the module; each test works in its own practice."""
    with ServedSandbox(seed=5) as sandbox:
        yield sandbox


class Practice:
    """A practice of its own on the served sandbox, with its key."""

    def __init__(self, served: ServedSandbox, name: str) -> None:
        created = served.admin.create_practice(name)
        self.served = served
        self.id: str = created["id"]
        self.key: str = created["keys"][0]["key"]

    def sends(self, provider_id: str) -> int:
        """How many times the sandbox accepted TEXT for `provider_id`."""
        fingerprints = self.served.admin.stats(self.id)["sendsPerFingerprint"]
        fingerprint = send_fingerprint(self.id, PROVIDER, provider_id, f"content:{TEXT}")
        return int(fingerprints.get(fingerprint, 0))

    def client(self, base_url: str | None = None, **options: Any) -> VoxaresClient:
        options.setdefault("limits", ClientLimits(requests_per_second=None))
        options.setdefault("retry", RetryPolicy.no_wait(attempts=3))
        return VoxaresClient(base_url=base_url or self.served.base_url, api_key=self.key, **options)


@pytest.fixture
def practice(served: ServedSandbox, request: pytest.FixtureRequest) -> Iterator[Practice]:
    served.admin.set_faults(None)
    yield Practice(served, request.node.name[:60])
    served.admin.set_faults(None)


@pytest.fixture
async def engine(tmp_path: Any) -> AsyncIterator[Engine]:
    engine = make_engine(migrated_sqlite(tmp_path))
    add_patient(engine, "P-1")
    submit_request(
        engine, key="r-1", provider=PROVIDER, provider_id="P-1", content=TEXT, origin="api"
    )
    yield engine
    engine.dispose()


def on_send(**faults: Any) -> FaultConfig:
    return FaultConfig(rules=[FaultRule(method="POST", path_prefix="/messages/send", **faults)])


def closed_port_url() -> str:
    """An API base URL on a loopback port nothing listens on (connect is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{API_PREFIX}"


async def send_run(engine: Engine, client: VoxaresClient) -> Any:
    async with client:
        return await MessageSender(engine, client, provider=PROVIDER).run(None)


async def test_connect_refused_is_retried_and_sent_exactly_once(
    practice: Practice, engine: Engine
) -> None:
    """A refused connect proves nothing left: retried, then pending; the next run sends once."""
    with capture_logs() as logs:
        first = await send_run(engine, practice.client(closed_port_url()))
    retries = [e for e in logs if e["event"] == "voxares.retry_scheduled"]
    assert len(retries) == 2  # 3 attempts
    assert first.not_sent == 1
    stored = request(engine, "r-1")
    assert stored.state == "pending"
    assert stored.error is not None
    assert "ConnectError" in stored.error
    assert practice.sends("P-1") == 0
    second = await send_run(engine, practice.client())
    assert second.sent == 1
    assert request(engine, "r-1").state == "sent"
    assert practice.sends("P-1") == 1


async def test_read_timeout_after_the_server_accepted_is_unknown(
    served: ServedSandbox, practice: Practice, engine: Engine
) -> None:
    """The sandbox sends the SMS, then stalls: a read timeout is `unknown`, never resent."""
    served.admin.set_faults(on_send(hang_rate=1.0, hang_phase="after", hang_seconds=60))
    counts = await send_run(engine, practice.client(timeouts=Timeouts(read=0.3, attempt=5)))
    assert counts.unknown == 1
    # The client may give up before a starved sandbox process has even processed the send.
    wait_until(lambda: practice.sends("P-1"), "the send")
    assert practice.sends("P-1") == 1
    served.admin.set_faults(None)
    again = await send_run(engine, practice.client())
    assert again.sent == 0
    assert request(engine, "r-1").state == "unknown"
    assert practice.sends("P-1") == 1


@pytest.mark.parametrize(
    "faults",
    [on_send(drop_rate=1.0, drop_phase="after"), on_send(truncated_body_rate=1.0)],
    ids=["connection cut mid-reply", "half a JSON body"],
)
async def test_reply_cut_off_on_the_wire_is_unknown(
    served: ServedSandbox, practice: Practice, engine: Engine, faults: FaultConfig
) -> None:
    """The SMS was accepted but the reply arrives broken: `unknown`, sent once."""
    served.admin.set_faults(faults)
    counts = await send_run(engine, practice.client())
    assert counts.unknown == 1
    assert request(engine, "r-1").state == "unknown"
    assert practice.sends("P-1") == 1


@pytest.mark.parametrize(("crash_point", "sends"), [(STEP_AFTER_MARK, 0), (STEP_AFTER_SEND, 1)])
async def test_sigkill_mid_send_leaves_it_unknown_and_never_resent(
    practice: Practice, engine: Engine, crash_point: str, sends: int
) -> None:
    """A daemon SIGKILLed after committing `sending` (before or after the HTTP call): the
    next run marks the request unknown and sends nothing; the sandbox saw at most one send."""
    url = engine.url.render_as_string(hide_password=False)
    env = {**os.environ, ENV_VAR: crash_point, KEY_ENV: practice.key}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", SEND_ONCE, url, practice.served.base_url],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    assert request(engine, "r-1").state == "sending"
    assert practice.sends("P-1") == sends
    counts = await send_run(engine, practice.client())
    assert (counts.recovered, counts.sent) == (1, 0)
    stored = request(engine, "r-1")
    assert stored.state == "unknown"
    assert stored.error is not None
    assert "interrupted" in stored.error
    assert practice.sends("P-1") == sends
