"""The patient push job reading the FHIR source: the fixture FHIR server on a real port,
the Voxares sandbox over ASGI, a real state database (SQLite, then PostgreSQL).

Proves the issue's guarantees for FHIR: normalised, quarantined with row/field/reason,
hash-diffed, pushed once, `active = false` inactive in the mirror, and the cursor saved only
after the rows it covers were pushed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select

from syncd.normalize import NormalizePolicy
from syncd.patients.counts import PushCounts
from syncd.patients.push import PatientPush
from syncd.sandbox import DEMO_API_KEY
from syncd.sandbox.app import create_app
from syncd.sandbox.fhir_server import FhirFixture, serve_in_thread
from syncd.sandbox.state import Sandbox
from syncd.sources.fhir import FhirPatientSource
from syncd.sources.fhir_cursor import CursorStore
from syncd.state.models import PatientMirror, QuarantinedRow
from syncd.state.runs import start_run
from syncd.voxares.client import VoxaresClient
from syncd.voxares.contract import API_PREFIX
from syncd.voxares.limits import ClientLimits
from syncd.voxares.retry import RetryPolicy
from tests.fhir_examples import SYSTEM, example, examples
from tests.refusing_transport import RefusingTransport

PROVIDER = "ehr"


@dataclass
class World:
    engine: Engine
    fhir: FhirFixture
    base_url: str
    sandbox: Sandbox
    transport: RefusingTransport
    client: VoxaresClient
    http: httpx.Client
    cursors: CursorStore = field(init=False)

    def __post_init__(self) -> None:
        self.cursors = CursorStore(self.engine, "fhir", self.base_url)

    async def run(self, *, dry_run: bool = False, **options: Any) -> PushCounts:
        full_read_every = options.pop("full_read_every", timedelta(days=1))
        source = FhirPatientSource(
            "fhir",
            self.base_url,
            identifier_system=SYSTEM,
            http=self.http,
            page_size=2,
            cursors=self.cursors,
            full_read_every=full_read_every,
            attempts=1,
        )
        job = PatientPush(
            self.engine,
            self.client,
            source,
            NormalizePolicy(default_region="AU"),
            provider=PROVIDER,
            batch_size=2,
            **options,
        )
        return await job.run(start_run(self.engine, "push_patients"), dry_run=dry_run)

    def mirror(self) -> dict[str, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(PatientMirror.provider_id, PatientMirror.state)).all()
        return {row.provider_id: row.state for row in rows}

    def quarantine(self) -> list[tuple[str, str | None, str]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(QuarantinedRow.row_key, QuarantinedRow.field, QuarantinedRow.reason)
            ).all()
        return sorted((r.row_key, r.field, r.reason) for r in rows)

    def sandbox_ids(self) -> set[str]:
        practice = self.sandbox.practices[self.sandbox.demo_practice_id]
        return {pid for (prov, pid) in practice.by_external if prov == PROVIDER}


@pytest.fixture
def fhir() -> Iterator[tuple[FhirFixture, str]]:
    server = FhirFixture()
    for resource in examples():
        server.put(resource, at=server.server_now() - timedelta(days=1))
    with serve_in_thread(server) as root:
        yield server, f"{root}/fhir"


@pytest.fixture
async def world(state_engine: Engine, fhir: tuple[FhirFixture, str]) -> AsyncIterator[World]:
    sandbox = Sandbox()
    transport = RefusingTransport(create_app(sandbox))
    client = VoxaresClient(
        base_url="http://sandbox" + API_PREFIX,
        api_key=DEMO_API_KEY,
        transport=transport,
        limits=ClientLimits(requests_per_second=None, max_concurrency=4),
        retry=RetryPolicy.no_wait(attempts=1),
    )
    with httpx.Client(timeout=60) as http:
        yield World(state_engine, fhir[0], fhir[1], sandbox, transport, client, http)
    await client.aclose()


async def test_examples_are_pushed_once_quarantined_and_inactive_in_the_mirror(
    world: World,
) -> None:
    """First run: five pushed, xcda (no identifier of the system) quarantined by line and
    resource, pat3 (active=false) inactive in the mirror; a rerun pushes nothing."""
    counts = await world.run()
    assert (counts.created, counts.quarantined, counts.failed) == (5, 1, 0)
    assert world.sandbox_ids() == {"12345", "654321", "123456", "123457", "123458"}
    assert world.mirror() == {
        "12345": "active",
        "654321": "active",
        "123456": "active",
        "123457": "inactive",
        "123458": "active",
    }
    assert world.quarantine() == [
        ("line:6@xcda", "providerId", f"no identifier with system {SYSTEM}")
    ]
    assert world.cursors.load() is not None

    upserts = world.transport.upserts
    counts = await world.run()
    assert world.transport.upserts == upserts  # incremental and unchanged: no push
    assert counts.created + counts.updated == 0
    assert world.mirror()["123457"] == "inactive"


async def test_reactivation_and_a_change_are_read_incrementally(world: World) -> None:
    """pat3 made active and example's family name changed: the next (incremental) run
    pushes the change and makes pat3 active again."""
    await world.run()
    world.fhir.put({**example("pat3"), "active": True})
    changed = example("example")
    changed["name"][0]["family"] = "Chalmers-Smith"
    world.fhir.put(changed)
    counts = await world.run()
    assert counts.rows == 2
    assert counts.updated == 1  # example; pat3's payload did not change
    assert world.mirror()["123457"] == "active"
    practice = world.sandbox.practices[world.sandbox.demo_practice_id]
    assert practice.by_external[(PROVIDER, "12345")].last_name == "Chalmers-Smith"


async def test_cursor_does_not_move_when_a_push_failed_or_in_a_dry_run(world: World) -> None:
    """A failed push leaves the cursor where it was (the next read asks again and pushes
    it); a dry run never moves it."""
    await world.run(dry_run=True)
    assert world.cursors.load() is None
    world.transport.refused = {"654321"}
    counts = await world.run()
    assert counts.failed == 1
    assert world.cursors.load() is None  # the first read's rows are not all pushed
    world.transport.refused = set()
    counts = await world.run()
    assert counts.created == 1  # pat1, read again by a full read
    saved = world.cursors.load()
    assert saved is not None

    world.fhir.put({**example("pat1"), "gender": "female"})  # a new version, same payload
    world.transport.refused = {"654321"}
    changed = example("pat1")
    changed["telecom"] = [{"system": "email", "value": "donald@example.org"}]
    world.fhir.put(changed)
    counts = await world.run()
    assert counts.failed == 1
    assert world.cursors.load() == saved
    world.transport.refused = set()
    counts = await world.run()
    assert counts.updated == 1
    assert world.cursors.load() != saved


async def test_full_read_marks_a_deleted_patient_inactive_but_keeps_pat3_inactive(
    world: World,
) -> None:
    """With mark_inactive, a full (complete) read makes a patient the server no longer has
    inactive, and does not reactivate pat3, which the server says is inactive."""
    await world.run(missing_rows="mark_inactive", full_read_every=timedelta(0))
    world.fhir.delete("pat4")
    counts = await world.run(missing_rows="mark_inactive", full_read_every=timedelta(0))
    assert counts.inactivated == 1
    assert world.mirror()["123458"] == "inactive"
    assert world.mirror()["123457"] == "inactive"
    assert world.mirror()["12345"] == "active"
