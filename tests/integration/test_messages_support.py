"""Shared builders for the SMS and content tests (no tests here).

A migrated SQLite state database is built once per process and copied for each test (an
Alembic upgrade per test would dominate the suite's time); the in-process sandbox runs on a
manual clock behind `httpx.ASGITransport`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from starlette.applications import Starlette

from syncd import testing_hooks
from syncd.messages import submit_request
from syncd.messages.sender import MessageSender
from syncd.sandbox.app import create_app
from syncd.sandbox.clock import ManualClock
from syncd.sandbox.faults import FaultConfig
from syncd.sandbox.state import DEMO_API_KEY, MessageTiming, Sandbox, send_fingerprint
from syncd.state.db import make_engine, upgrade
from syncd.state.models import MessageRequest, OutboxEvent, PatientMirror
from syncd.voxares.client import Timeouts, VoxaresClient
from syncd.voxares.contract import API_PREFIX
from syncd.voxares.limits import ClientLimits
from syncd.voxares.retry import RetryPolicy

PROVIDER = "ehr"
MOBILE = "+385991234567"
_TEMPLATE_DB: Path | None = None


def migrated_sqlite(directory: Path) -> str:
    """The URL of a fresh, migrated SQLite state database in `directory`."""
    global _TEMPLATE_DB
    if _TEMPLATE_DB is None:
        path = Path(tempfile.mkdtemp(prefix="syncd-sms-")) / "template.db"
        engine = make_engine(f"sqlite:///{path}")
        upgrade(engine)
        engine.dispose()
        _TEMPLATE_DB = path
    target = directory / "state.db"
    shutil.copyfile(_TEMPLATE_DB, target)
    target.chmod(0o600)
    return f"sqlite:///{target}"


def add_patient(engine: Engine, provider_id: str, *, mobile: str | None = MOBILE) -> None:
    """A patient in the mirror, as the push job would have left it."""
    payload = {"providerId": provider_id, "firstName": "Ana", "lastName": "Horvat"}
    if mobile is not None:
        payload["mobileNumber"] = mobile
    now = datetime.now(UTC)
    with Session(engine) as session, session.begin():
        session.add(
            PatientMirror(
                provider=PROVIDER,
                provider_id=provider_id,
                voxares_patient_id=None,
                payload_hash="0" * 64,
                payload=json.dumps(payload),
                first_pushed_at=now,
                last_pushed_at=now,
                last_seen_at=now,
            )
        )


def queue_requests(
    engine: Engine, count: int, *, content: str = "Hi", key_format: str = "k-{n}"
) -> None:
    """`count` pending API requests (keys from `key_format`) to patients P-0, P-1, ...,
    each patient in the mirror."""
    for n in range(count):
        add_patient(engine, f"P-{n}")
        submit_request(
            engine,
            key=key_format.format(n=n),
            provider=PROVIDER,
            provider_id=f"P-{n}",
            content=content,
            origin="api",
        )


def request(engine: Engine, key: str) -> MessageRequest:
    """The stored request `key`."""
    with Session(engine) as session:
        found = session.get(MessageRequest, key)
        assert found is not None
        return found


def events(engine: Engine, prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    """(type, payload) of every outbox event whose type starts with `prefix`, in order."""
    with Session(engine) as session:
        rows = session.scalars(select(OutboxEvent).order_by(OutboxEvent.seq)).all()
        return [
            (r.event_type, json.loads(r.payload)) for r in rows if r.event_type.startswith(prefix)
        ]


class Crash(Exception):
    """Stands in for the process dying at a crash point (raised by the test hook)."""


@contextmanager
def crash_at(name: str, nth: int = 1) -> Iterator[None]:
    """Raise `Crash` the `nth` time the named crash point is reached (the in-process
    stand-in for a SIGKILL there), for the duration of the block."""
    reached_count = 0

    def hook(reached: str) -> None:
        nonlocal reached_count
        if reached == name:
            reached_count += 1
            if reached_count == nth:
                raise Crash(name)

    testing_hooks.set_callback(hook)
    try:
        yield
    finally:
        testing_hooks.set_callback(None)


@dataclass
class World:
    """A sandbox on a manual clock, its app, and a migrated state database."""

    sandbox: Sandbox
    clock: ManualClock
    app: Starlette
    engine: Engine
    clients: list[VoxaresClient] = field(default_factory=list)

    @property
    def practice(self) -> str:
        return self.sandbox.demo_practice_id

    def client(self, *, attempts: int = 5, attempt_timeout: float = 30.0) -> VoxaresClient:
        """A client of the in-process sandbox (closed by `close`)."""
        client = VoxaresClient(
            base_url="http://sandbox" + API_PREFIX,
            api_key=DEMO_API_KEY,
            transport=httpx.ASGITransport(app=self.app),
            limits=ClientLimits(requests_per_second=None, max_concurrency=8),
            retry=RetryPolicy.no_wait(attempts=attempts),
            timeouts=Timeouts(attempt=attempt_timeout),
        )
        self.clients.append(client)
        return client

    def sender(self, client: VoxaresClient | None = None, **options: Any) -> MessageSender:
        """A new sender (as a new process would build it) on the same database."""
        options.setdefault("batch_size", 10)
        return MessageSender(self.engine, client or self.client(), provider=PROVIDER, **options)

    def set_faults(self, faults: FaultConfig | None = None) -> None:
        self.app.state.faults.configure(faults or FaultConfig())

    def sends(self, provider_id: str, what: str) -> int:
        """How many times the sandbox accepted this SMS (`what`: content:<text> or
        template:<id>)."""
        counts = self.sandbox.stats(self.practice)["sendsPerFingerprint"]
        return int(counts.get(send_fingerprint(self.practice, PROVIDER, provider_id, what), 0))

    def max_sends(self) -> int:
        """The most times any one SMS was accepted (the at-most-once invariant: <= 1)."""
        counts = self.sandbox.stats(self.practice)["sendsPerFingerprint"]
        return max(counts.values(), default=0)

    def requests_seen(self, label: str) -> int:
        """How many contract requests the sandbox counted under "METHOD /template status"."""
        return int(self.sandbox.stats(self.practice)["requests"].get(label, 0))

    def template_ids(self) -> list[str]:
        return list(self.sandbox.practices[self.practice].templates)

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()
        self.engine.dispose()


def make_world(url: str, *, timing: MessageTiming | None = None) -> World:
    """A world on the database at `url` (already migrated)."""
    clock = ManualClock()
    sandbox = Sandbox(seed=1, clock=clock, message_timing=timing or MessageTiming(failure_rate=0))
    app = create_app(sandbox, FaultConfig())
    return World(sandbox, clock, app, make_engine(url))


def later(seconds: float) -> datetime:
    """A moment `seconds` from now (UTC)."""
    return datetime.now(UTC) + timedelta(seconds=seconds)
