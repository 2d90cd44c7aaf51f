"""The patient push job end to end: a CSV, a real state database, the in-process sandbox.

Every scenario runs on SQLite and on PostgreSQL (the job's SQL differs per dialect). API
calls are counted at the transport, in front of the sandbox; the sandbox's own patient
table is the proof of what Voxares holds.
"""

from __future__ import annotations

import asyncio
import csv
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url
from structlog.testing import capture_logs

from syncd import testing_hooks
from syncd.exceptions import SourceError, Unauthorized
from syncd.jobs import JobRunner
from syncd.normalize import NormalizePolicy
from syncd.patients.counts import PushCounts
from syncd.patients.push import PatientPush
from syncd.patients.store import PushStore
from syncd.sandbox import DEMO_API_KEY
from syncd.sandbox.app import create_app
from syncd.sandbox.faults import FaultConfig, FaultRule
from syncd.sandbox.state import Sandbox
from syncd.sources.base import SourceRow
from syncd.sources.csv import CsvSource
from syncd.state.db import make_engine, upgrade
from syncd.state.models import AuditEntry, Base, PatientMirror, QuarantinedRow
from syncd.state.runs import start_run
from syncd.status import gather_status
from syncd.voxares.client import VoxaresClient
from syncd.voxares.contract import API_PREFIX
from syncd.voxares.limits import ClientLimits
from syncd.voxares.retry import RetryPolicy
from tests.config_files import SHORT_COLUMNS
from tests.waiting import async_wait_until

PROVIDER = "ehr"
HEADER = "id,first,last,mobile,email,dob"
COLUMNS = SHORT_COLUMNS
VALID = [
    "P1,Ana,Horvat,091 234 5678,ana@example.com,1990-01-15",
    "P2,Ivo,Kovač,,ivo@example.com,",
    "P3,Marko,Babić,+385 98 765 4321,,1985-03-02",
    "P8,Ena,Novak,,,",
]
INVALID = [
    "P4,Bad,Email,,not-an-email,",  # email
    "P5,,Nofirst,,,",  # firstName
    ",No,Id,,,",  # providerId (keyed by line)
    "P6,Lana,Perić,12,,",  # mobileNumber (policy: reject invalid numbers)
    "P7,Tea,Jurić,,,2999-01-01",  # dateOfBirth in the future
]
DUPLICATE = "P1,Ana,Again,,,"


class CountingTransport(httpx.AsyncBaseTransport):
    """The sandbox over ASGI, counting requests; `refuse` answers chosen providerIds itself."""

    def __init__(self, app: Any) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.calls = 0
        self.refuse: dict[str, tuple[int, Any]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if request.method == "POST" and self.refuse:
            provider_id = json.loads(request.content).get("providerId")
            if provider_id in self.refuse:
                status, message = self.refuse[provider_id]
                body = {"statusCode": status, "message": message, "error": "Bad Request"}
                return httpx.Response(status, json=body)
        return await self.inner.handle_async_request(request)


@dataclass
class World:
    """One database, one sandbox, one CSV file, and the clients made for them."""

    engine: Engine
    sandbox: Sandbox
    app: Any
    transport: CountingTransport
    csv: Path
    clients: list[VoxaresClient] = field(default_factory=list)

    def write(self, *lines: str) -> None:
        self.csv.write_text("\n".join([HEADER, *lines]) + "\n", encoding="utf-8")

    def client(self, api_key: str = DEMO_API_KEY) -> VoxaresClient:
        client = VoxaresClient(
            base_url="http://sandbox" + API_PREFIX,
            api_key=api_key,
            transport=self.transport,
            limits=ClientLimits(requests_per_second=None, max_concurrency=4),
            retry=RetryPolicy.no_wait(attempts=3),
        )
        self.clients.append(client)
        return client

    def job(self, client: VoxaresClient | None = None, **options: Any) -> PatientPush:
        options.setdefault("batch_size", 3)  # several batches even for a few rows
        return PatientPush(
            self.engine,
            client or self.client(),
            CsvSource("ehr-export", self.csv, columns=COLUMNS),
            NormalizePolicy(invalid_phone="reject"),
            provider=PROVIDER,
            **options,
        )

    async def run(self, **options: Any) -> PushCounts:
        dry_run = options.pop("dry_run", False)
        run_id = start_run(self.engine, "push_patients")
        return await self.job(**options).run(run_id, dry_run=dry_run)

    def patients(self) -> dict[str, Any]:
        """What the sandbox holds for our provider: providerId -> patient."""
        practice = self.sandbox.practices[self.sandbox.demo_practice_id]
        return {pid: p for (prov, pid), p in practice.by_external.items() if prov == PROVIDER}

    def mirror(self) -> dict[str, Any]:
        """The mirror's rows by providerId (column access by attribute)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(PatientMirror)).all()
        return {row.provider_id: row for row in rows}

    def quarantine(self) -> dict[str, Any]:
        """The quarantine's rows by row key."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(QuarantinedRow)).all()
        return {row.row_key: row for row in rows}

    def audit_count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(AuditEntry)).scalar_one())


@pytest.fixture(scope="module")
def migrated_postgres(postgres_server: str) -> Iterator[str]:
    """One migrated PostgreSQL database for this module (migrating per test is slow)."""
    name = f"syncd_test_push_{uuid.uuid4().hex[:8]}"
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, migrated state database: SQLite, then PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/state.db"
        upgrade(url)
        return url
    url = str(request.getfixturevalue("migrated_postgres"))
    engine = create_engine(url)
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()
    return url


@pytest.fixture
async def world(database_url: str, tmp_path: Path) -> AsyncIterator[World]:
    engine = make_engine(database_url)
    sandbox = Sandbox()
    app = create_app(sandbox)
    w = World(engine, sandbox, app, CountingTransport(app), tmp_path / "patients.csv")
    try:
        yield w
    finally:
        for client in w.clients:
            await client.aclose()
        engine.dispose()


@pytest.fixture
def no_crash_hook() -> Iterator[None]:
    yield
    testing_hooks.set_callback(None)


async def test_first_run_pushes_exactly_the_valid_rows(world: World) -> None:
    """Valid rows reach Voxares (and the mirror); invalid ones are quarantined, field named."""
    world.write(*VALID, *INVALID)
    counts = await world.run()

    assert (counts.created, counts.updated, counts.quarantined, counts.failed) == (4, 0, 5, 0)
    assert counts.rows == 9
    held = world.patients()
    assert set(held) == {"P1", "P2", "P3", "P8"}
    assert (held["P1"].first_name, held["P1"].mobile_number) == ("Ana", "+385912345678")
    assert held["P1"].date_of_birth == "1990-01-15"
    mirror = world.mirror()
    assert set(mirror) == set(held)
    assert mirror["P1"].voxares_patient_id == held["P1"].id
    assert json.loads(mirror["P2"].payload)["lastName"] == "Kovač"
    fields = {key: row.field for key, row in world.quarantine().items()}
    assert fields == {
        "P4": "email",
        "P5": "firstName",
        "line:8@patients.csv": "providerId",
        "P6": "mobileNumber",
        "P7": "dateOfBirth",
    }
    assert world.audit_count() == 4
    assert world.transport.calls == 4


async def test_second_run_makes_no_api_calls(world: World) -> None:
    """Re-reading an unchanged export calls nothing and re-logs no known quarantine."""
    world.write(*VALID, *INVALID)
    await world.run()
    calls = world.transport.calls

    with capture_logs() as logs:
        counts = await world.run()

    assert world.transport.calls == calls
    assert (counts.created, counts.updated, counts.unchanged, counts.quarantined) == (0, 0, 4, 5)
    assert not [e for e in logs if e["event"] == "patients.quarantined"]
    assert {row.seen_count for row in world.quarantine().values()} == {2}


async def test_the_lookup_of_a_batch_returns_only_rows_that_need_a_decision(
    world: World,
) -> None:
    """`lookup_unsettled` leaves out exactly the rows the mirror holds with the same raw hash,
    claimed first by this batch, with no quarantine entry; every other kind comes back."""
    world.write(*VALID, *INVALID)
    await world.run()
    held = {key: row.source_row_hash for key, row in world.mirror().items()}
    quarantined_hash = world.quarantine()["P4"].row_hash
    store = PushStore.open(
        world.engine, provider=PROVIDER, source="ehr-export", run_id=start_run(world.engine, "x")
    )
    try:
        first = store.lookup_unsettled(
            [
                ("P1", 10, 2, held["P1"]),  # unchanged: left out
                ("P2", 11, 3, "0" * 64),  # raw text changed
                ("P4", 12, 4, quarantined_hash),  # quarantined
                ("P99", 13, 5, "1" * 64),  # new
                ("P3", 14, 6, held["P3"]),  # unchanged: left out
                ('P"9\\,{x}', 15, 7, "2" * 64),  # new, with what array literals escape
            ]
        )
        assert set(first) == {"P2", "P4", "P99", 'P"9\\,{x}'}
        assert first["P2"].mirror is not None
        assert first["P2"].mirror.source_row_hash == held["P2"]
        assert first["P4"].quarantined is not None
        assert first["P4"].mirror is None
        assert (first["P99"].first_seq, first["P99"].first_line) == (13, 5)
        # Claimed by the batch before: a repeat, returned with the first row's ordinal.
        again = store.lookup_unsettled([("P1", 20, 9, held["P1"]), ("P8", 21, 10, held["P8"])])
        assert set(again) == {"P1"}
        assert (again["P1"].first_seq, again["P1"].first_line) == (10, 2)
    finally:
        store.close()


async def test_one_changed_row_makes_exactly_one_call(world: World) -> None:
    """Changing one row's email pushes that patient only, and the mirror follows."""
    world.write(*VALID)
    await world.run()
    calls = world.transport.calls
    before = world.mirror()["P2"].payload_hash

    world.write(*[row.replace("ivo@example.com", "ivo.k@example.com") for row in VALID])
    counts = await world.run()

    assert world.transport.calls == calls + 1
    assert (counts.updated, counts.unchanged) == (1, 3)
    assert world.patients()["P2"].email == "ivo.k@example.com"
    assert world.mirror()["P2"].payload_hash != before


async def test_a_value_removed_in_the_source_is_removed_in_voxares(world: World) -> None:
    """An email and a birth date deleted in the EHR are cleared in Voxares (sent as null:
    the API keeps a field an upsert omits)."""
    world.write(*VALID)
    await world.run()
    assert world.patients()["P1"].email == "ana@example.com"

    world.write(*[row.replace("ana@example.com,1990-01-15", ",") for row in VALID])
    counts = await world.run()

    assert (counts.updated, counts.unchanged) == (1, 3)
    assert world.patients()["P1"].email is None
    assert world.patients()["P1"].date_of_birth is None


async def test_cosmetic_change_makes_no_call_and_refreshes_the_row_hash(world: World) -> None:
    """A reformatted phone number normalises to the same payload: no call, hash refreshed."""
    world.write(*VALID)
    await world.run()
    calls = world.transport.calls
    reformatted = [row.replace("091 234 5678", "+385912345678") for row in VALID]
    world.write(*reformatted)

    counts = await world.run()
    again = await world.run()

    assert world.transport.calls == calls
    assert counts.unchanged == again.unchanged == 4
    assert world.mirror()["P1"].source_row_hash is not None


async def test_fixed_quarantined_row_is_pushed_and_leaves_quarantine(world: World) -> None:
    """Fixing a quarantined row in the source pushes it next run and clears its entry."""
    world.write(*VALID, "P4,Bad,Email,,not-an-email,")
    await world.run()
    assert "P4" in world.quarantine()

    world.write(*VALID, "P4,Bad,Email,,fixed@example.com,")
    counts = await world.run()

    assert (counts.created, counts.quarantined) == (1, 0)
    assert world.patients()["P4"].email == "fixed@example.com"
    assert "P4" not in world.quarantine()


async def test_duplicates_are_reported_and_pushed_once(world: World) -> None:
    """A repeated providerId (same batch or a later one) is quarantined, the first pushed."""
    world.write(*VALID, DUPLICATE, "P8,Ena,Twice,,,")  # batches of 3: both cases
    counts = await world.run()

    assert (counts.created, counts.duplicates) == (4, 2)
    assert world.transport.calls == 4
    assert world.patients()["P1"].last_name == "Horvat"
    assert world.patients()["P8"].last_name == "Novak"
    entries = world.quarantine()
    assert (
        entries["P1@line:6@patients.csv"].reason
        == "duplicate providerId in source (first at line 2)"
    )
    assert (
        entries["P8@line:7@patients.csv"].reason
        == "duplicate providerId in source (first at line 5)"
    )
    assert entries["P1@line:6@patients.csv"].field == "providerId"

    again = await world.run()
    assert (again.duplicates, again.unchanged) == (2, 4)
    assert world.transport.calls == 4


async def test_invisible_characters_never_make_a_second_patient_or_an_empty_name(
    world: World,
) -> None:
    """An id differing from another only by a BOM or zero-width space at its end is the same
    patient (the repeat is a duplicate); an inner one and an invisible-only name quarantine."""
    world.write(
        VALID[0],
        "\ufeff" + VALID[0].replace("Ana,", "Anna,"),  # a BOM of a concatenated export
        VALID[1].replace("P2", "P2\u200b"),
        "P9\u200b9,Ena,Novak,,,",
        "P10,\u200b\u2060,Kos,,,",
    )
    counts = await world.run()

    assert set(world.patients()) == {"P1", "P2"}
    assert world.patients()["P1"].first_name == "Ana"
    assert (counts.created, counts.duplicates, counts.quarantined) == (2, 1, 2)
    entries = world.quarantine()
    assert entries["P1@line:3@patients.csv"].reason.startswith("duplicate providerId")
    assert entries["line:5@patients.csv"].field == "providerId"
    assert entries["P10"].reason == "firstName: required (only invisible characters)"


async def test_duplicate_of_a_quarantined_row_is_not_pushed(world: World) -> None:
    """A later valid row does not sneak past an invalid first row with the same providerId."""
    world.write("P4,Bad,Email,,not-an-email,", "P4,Good,Email,,good@example.com,")
    counts = await world.run(batch_size=1)

    assert (counts.quarantined, counts.duplicates, counts.created) == (1, 1, 0)
    assert world.transport.calls == 0


async def test_missing_rows_are_marked_inactive_and_come_back(world: World) -> None:
    """mark_inactive: a row gone from a complete run turns inactive, active again on return."""
    world.write(*VALID)
    await world.run(missing_rows="mark_inactive")

    world.write(*VALID[:3])
    counts = await world.run(missing_rows="mark_inactive")
    assert counts.inactivated == 1
    states = {key: row.state for key, row in world.mirror().items()}
    assert states == {"P1": "active", "P2": "active", "P3": "active", "P8": "inactive"}

    world.write(*VALID)
    counts = await world.run(missing_rows="mark_inactive")
    assert counts.inactivated == 0
    assert world.mirror()["P8"].state == "active"
    assert counts.unchanged == 4


async def test_missing_rows_ignored_by_default(world: World) -> None:
    """missing_rows="ignore" leaves mirror rows of vanished patients active."""
    world.write(*VALID)
    await world.run()
    world.write(*VALID[:1])
    counts = await world.run()
    assert counts.inactivated == 0
    assert {row.state for row in world.mirror().values()} == {"active"}


async def test_unbalanced_quote_fails_the_run_and_marks_nobody_inactive(world: World) -> None:
    """A quote that swallows the rest of the CSV fails the run naming its line; with
    mark_inactive, no patient still in the file turns inactive."""
    world.write(*VALID, *INVALID)
    await world.run(missing_rows="mark_inactive")
    broken = VALID[1].replace("Ivo,", '"Ivo,')  # P2's quote is never closed
    world.write(VALID[0], broken, *VALID[2:], INVALID[0])

    with pytest.raises(SourceError, match="quoted field opened at line 3") as caught:
        await world.run(missing_rows="mark_inactive")

    assert "Ivo" not in str(caught.value)
    assert {row.state for row in world.mirror().values()} == {"active"}
    assert len(world.quarantine()) == len(INVALID)  # stale entries are not dropped either


async def test_oversized_cell_quarantines_its_row_and_pushes_the_rest(world: World) -> None:
    """A cell over csv's field limit quarantines that row (line and field, no value) under
    its providerId; every other row is pushed and nobody is marked inactive."""
    world.write(*VALID)
    await world.run(missing_rows="mark_inactive")
    huge = "Secret" + "x" * csv.field_size_limit()
    world.write(VALID[0], VALID[1].replace("Kovač", huge), *VALID[2:], "P9,Lea,Kos,,,")

    counts = await world.run(missing_rows="mark_inactive")

    assert (counts.created, counts.quarantined, counts.inactivated) == (1, 1, 0)
    assert set(world.patients()) == {"P1", "P2", "P3", "P8", "P9"}
    entry = world.quarantine()["P2"]
    assert (entry.line_number, entry.field) == (3, "lastName")
    assert entry.reason.startswith("lastName: longer than")
    assert "Secret" not in entry.reason
    assert {row.state for row in world.mirror().values()} == {"active"}


class PlainIteratorSource:
    """A source whose read never says it is complete (a plain iterator of the CSV's rows)."""

    def __init__(self, inner: CsvSource) -> None:
        self.inner = inner
        self.name = inner.name

    def rows(self) -> Iterator[SourceRow]:
        return iter(list(self.inner.rows()))


async def test_read_not_known_complete_never_marks_inactive(world: World) -> None:
    """A source that does not report a complete read: rows are pushed, but nobody is marked
    inactive and no quarantine entry is dropped."""
    world.write(*VALID, *INVALID)
    await world.run(missing_rows="mark_inactive")
    world.write(VALID[0].replace("Ana", "Anna"))
    job = PatientPush(
        world.engine,
        world.client(),
        PlainIteratorSource(CsvSource("ehr-export", world.csv, columns=COLUMNS)),  # type: ignore[arg-type]
        NormalizePolicy(invalid_phone="reject"),
        provider=PROVIDER,
        batch_size=3,
        missing_rows="mark_inactive",
    )

    with capture_logs() as logs:
        counts = await job.run(start_run(world.engine, "push_patients"))

    assert (counts.updated, counts.inactivated) == (1, 0)
    assert world.patients()["P1"].first_name == "Anna"
    assert {row.state for row in world.mirror().values()} == {"active"}
    assert len(world.quarantine()) == len(INVALID)
    assert any(entry["event"] == "patients.read_incomplete" for entry in logs)


async def test_stale_quarantine_entries_are_dropped_after_a_complete_run(world: World) -> None:
    """A quarantined row that left the source leaves quarantine at the next complete run."""
    world.write(*VALID, *INVALID)
    await world.run()
    world.write(*VALID, INVALID[0])
    counts = await world.run()
    assert counts.quarantined == 1
    assert set(world.quarantine()) == {"P4"}


async def test_dry_run_writes_nothing_and_calls_nothing(world: World) -> None:
    """A dry run counts what would happen and lists the quarantine, touching nothing."""
    world.write(*VALID, *INVALID, DUPLICATE)
    counts = await world.run(dry_run=True)

    assert world.transport.calls == 0
    assert (counts.created, counts.quarantined, counts.duplicates) == (4, 5, 1)
    assert ("P4", "email", "email: not a valid address") in counts.quarantined_rows
    assert len(counts.quarantined_rows) == 6
    assert world.mirror() == {}
    assert world.quarantine() == {}
    assert world.audit_count() == 0
    assert world.patients() == {}

    await world.run()
    world.write(*[row.replace("Ana,", "Anna,") for row in VALID])
    counts = await world.run(dry_run=True)
    assert (counts.created, counts.updated, counts.unchanged) == (0, 1, 3)
    assert world.patients()["P1"].first_name == "Ana"


async def test_dropped_numbers_are_counted_in_the_dry_run_the_run_and_status(
    world: World,
) -> None:
    """Under the "drop" policies, patients pushed without their landline or invalid number
    are counted: in a dry run, in the run's counts, and in what `status` shows."""
    world.write(
        VALID[0],  # a mobile: kept
        "P2,Ivo,Kovač,01 2345 678,,",  # a landline
        "P3,Marko,Babić,0800 123 456,,",  # toll-free: no SMS either
        "P4,Ena,Novak,12,,",  # not a number
        "P5,Lana,Perić,091-CALL-NOW,,",  # letters
        "P6,Tea,Jurić,,,",  # none
    )

    def job() -> PatientPush:
        policy = NormalizePolicy(landline="drop", invalid_phone="drop")
        source = CsvSource("ehr-export", world.csv, columns=COLUMNS)
        return PatientPush(world.engine, world.client(), source, policy, provider=PROVIDER)

    dry = await job().run(start_run(world.engine, "push_patients"), dry_run=True)
    assert (dry.landlines_dropped, dry.invalid_phones_dropped) == (2, 2)

    result = await JobRunner(world.engine).run_once(job())
    assert result.counts["landlines_dropped"] == 2
    assert result.counts["invalid_phones_dropped"] == 2
    assert world.patients()["P2"].mobile_number is None
    [run] = [r for r in gather_status(world.engine).runs if r.job == "push_patients"]
    assert (run.counts["landlines_dropped"], run.counts["invalid_phones_dropped"]) == (2, 2)


async def test_api_validation_error_quarantines_that_row_only(world: World) -> None:
    """A 422 for one patient quarantines it (field named, value not kept); the rest go on."""
    world.transport.refuse["P3"] = (422, ["mobileNumber must be a mobile, got +385987654321"])
    world.write(*VALID)
    counts = await world.run()

    assert (counts.created, counts.quarantined, counts.failed) == (3, 1, 0)
    assert set(world.patients()) == {"P1", "P2", "P8"}
    entry = world.quarantine()["P3"]
    assert entry.field == "mobileNumber"
    assert "+385987654321" not in entry.reason
    assert "422" in entry.reason

    calls = world.transport.calls
    counts = await world.run()
    assert world.transport.calls == calls  # the same row is not sent again unchanged
    assert counts.quarantined == 1


async def test_server_errors_beyond_retries_leave_rows_for_the_next_run(world: World) -> None:
    """503s past the client's retries count as failed, record nothing, and are retried."""
    world.write(*VALID)
    world.app.state.faults.configure(
        FaultConfig(
            rules=[FaultRule(method="POST", path_prefix="/patients", error_rates={503: 1.0})]
        )
    )
    counts = await world.run()
    assert (counts.failed, counts.created) == (4, 0)
    assert world.transport.calls == 12  # three attempts each
    assert world.mirror() == {}
    assert world.quarantine() == {}
    # Fewer failures than `outage_after`: no early stop, but nothing got through.
    assert (counts.outcome, counts.stopped_early) == ("failed", False)
    assert counts.problem == "4 of 4 pushes failed (tried again next run)"

    world.app.state.faults.configure(FaultConfig())
    counts = await world.run()
    assert (counts.created, counts.failed) == (4, 0)
    assert set(world.mirror()) == {"P1", "P2", "P3", "P8"}
    assert (counts.outcome, counts.problem) == ("ok", None)


async def test_some_rows_failing_make_a_partial_run(world: World) -> None:
    """One row answered 503 past its retries while the others are pushed: the run is
    `partial`, says how many pushes failed, and that row is pushed by the next run."""
    world.transport.refuse["P3"] = (503, "Service Unavailable")
    world.write(*VALID, *INVALID)
    counts = await world.run()
    assert (counts.created, counts.failed, counts.quarantined) == (3, 1, 5)
    assert (counts.outcome, counts.stopped_early) == ("partial", False)
    assert counts.problem == "1 of 4 pushes failed (tried again next run)"

    world.transport.refuse.clear()
    counts = await world.run()
    assert (counts.created, counts.failed, counts.outcome) == (1, 0, "ok")
    assert "P3" in world.mirror()


async def test_an_outage_stops_the_run_early_and_loses_nothing(world: World) -> None:
    """Every push answered 503: the run stops after `outage_after` consecutive failures
    instead of retrying every row in full, ends `failed` saying it stopped early, records
    nothing, leaves unread rows alone (none marked inactive); the next run without faults
    pushes every row."""
    world.write(*VALID)
    await world.run(missing_rows="mark_inactive")  # P1 P2 P3 P8 mirrored and active
    many = [f"Q{n:03d},Iva,Marić,,," for n in range(60)]
    world.write(*many, *VALID)  # the known rows come last: a stopped run never reads them
    world.app.state.faults.configure(
        FaultConfig(
            retry_after_seconds=0,
            rules=[FaultRule(method="POST", path_prefix="/patients", error_rates={503: 1.0})],
        )
    )
    calls = world.transport.calls

    with capture_logs() as logs:
        counts = await world.run(missing_rows="mark_inactive", outage_after=5)

    assert counts.stopped_early
    assert counts.outcome == "failed"
    assert counts.problem is not None
    assert counts.problem.startswith("stopped early: Voxares unreachable or failing")
    assert counts.failed == 5  # exactly the streak: every push still in flight is cancelled
    assert counts.created == counts.updated == counts.inactivated == 0
    assert counts.rows < len(many)  # the rest of the source was not read
    # Each failed row cost three attempts; in flight at the stop: at most two batches of 3.
    assert world.transport.calls - calls <= (5 + 6) * 3 < len(many) * 3
    [stop] = [e for e in logs if e["event"] == "patients.push_stopped_outage"]
    assert (stop["log_level"], stop["consecutive_failures"]) == ("warning", 5)
    assert set(world.mirror()) == {"P1", "P2", "P3", "P8"}
    assert {row.state for row in world.mirror().values()} == {"active"}
    assert world.quarantine() == {}

    world.app.state.faults.configure(FaultConfig())
    counts = await world.run(missing_rows="mark_inactive", outage_after=5)
    assert (counts.created, counts.unchanged, counts.failed) == (60, 4, 0)
    assert (counts.outcome, counts.stopped_early) == ("ok", False)
    assert len(world.mirror()) == 64


async def test_wrong_key_aborts_the_run(world: World) -> None:
    """401 stops the run with Unauthorized, records nothing, and marks nobody inactive."""
    world.write(*VALID)
    await world.run(missing_rows="mark_inactive")
    world.write(VALID[0].replace("Ana", "Anna"))

    job = world.job(world.client("vox-nope-wrongsecret"), missing_rows="mark_inactive")
    with pytest.raises(Unauthorized):
        await job.run(start_run(world.engine, "push_patients"))

    assert {row.state for row in world.mirror().values()} == {"active"}
    assert world.patients()["P1"].first_name == "Ana"


async def test_crash_after_http_is_pushed_again_next_run(world: World, no_crash_hook: None) -> None:
    """A push whose record was never committed is simply pushed again (an upsert)."""
    world.write(*VALID)

    def crash(step: str) -> None:
        if step == "push.after_http":
            raise RuntimeError("simulated crash")

    testing_hooks.set_callback(crash)
    with pytest.raises(RuntimeError):
        await world.run()
    testing_hooks.set_callback(None)
    assert len(world.patients()) >= 1
    assert world.mirror() == {}

    counts = await world.run()
    assert counts.created + counts.updated == 4
    assert set(world.mirror()) == set(world.patients()) == {"P1", "P2", "P3", "P8"}


async def test_logs_hold_ids_and_counts_only(world: World) -> None:
    """No name, phone, email or birth date reaches the log, whatever happens to a row."""
    world.transport.refuse["P3"] = (422, "lastName Babić is not allowed")
    world.write(*VALID, *INVALID, DUPLICATE)
    with capture_logs() as logs:
        await world.run()

    text = json.dumps(logs, default=str)
    for secret in ("Horvat", "Babić", "ivo@example.com", "091 234", "+38591", "1990-01-15"):
        assert secret not in text
    summary = [e for e in logs if e["event"] == "patients.pushed"]
    assert summary[0]["created"] == 3


async def test_progress_reports_rows_done(world: World) -> None:
    """The progress callback sees the running total of rows handled."""
    world.write(*VALID, *INVALID)
    seen: list[int] = []
    job = world.job()
    await job.run(start_run(world.engine, "push_patients"), progress=seen.append)
    assert seen == [3, 6, 9]


async def test_repeats_across_files_of_a_glob_are_each_reported(world: World) -> None:
    """The same providerId at the same line of three files: pushed once, two reports."""
    for name in ("a", "b", "c"):
        (world.csv.parent / f"day-{name}.csv").write_text(
            f"{HEADER}\nP1,Ana,Horvat,,,\n", encoding="utf-8"
        )
    job = PatientPush(
        world.engine,
        world.client(),
        CsvSource("ehr-export", world.csv.parent / "day-*.csv", columns=COLUMNS),
        NormalizePolicy(),
        provider=PROVIDER,
    )
    counts = await job.run(start_run(world.engine, "push_patients"))
    assert (counts.created, counts.duplicates) == (1, 2)
    assert set(world.quarantine()) == {"P1@line:2@day-b.csv", "P1@line:2@day-c.csv"}


class PeakCountingClient:
    """A client wrapper recording how many upserts have started and not yet returned."""

    def __init__(self, inner: VoxaresClient) -> None:
        self.inner = inner
        self.max_concurrency = inner.max_concurrency
        self.running = 0
        self.peak = 0

    async def upsert_patient(self, body: Any) -> Any:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            # The first pushes wait for each other, however slowly the others start, so the
            # bound is reached; then each lingers, so one more starting at once would show.
            bound = 2 * self.max_concurrency
            await async_wait_until(lambda: self.peak >= bound, f"{bound} pushes at once")
            await asyncio.sleep(0.01)  # long enough for every waiting push to try to start
            return await self.inner.upsert_patient(body)
        finally:
            self.running -= 1


async def test_only_twice_the_client_concurrency_of_pushes_start_at_once(world: World) -> None:
    """A batch's pushes wait before starting: at most 2 x max_concurrency run at once."""
    world.write(*(f"Q{n},Ana,Horvat,,,1990-01-{1 + n % 28:02d}" for n in range(40)))
    client = PeakCountingClient(world.client())  # max_concurrency=4
    counts = await world.job(client, batch_size=20).run(start_run(world.engine, "push_patients"))  # type: ignore[arg-type]
    assert counts.created == 40
    assert client.peak == 8
