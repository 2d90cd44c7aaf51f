"""The HL7 v2 feed end to end: a real MLLP client over a socket, a real state database
(SQLite and PostgreSQL), the in-process sandbox as Voxares."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select
from structlog.testing import capture_logs

from syncd.config_hl7 import Hl7Settings
from syncd.hl7.apply import Hl7Apply
from syncd.hl7.feed import Hl7Feed
from syncd.hl7.inbound import counts_by_status
from syncd.hl7.mapping import Hl7Mapping
from syncd.hl7.mllp import MllpClient, ack_code
from syncd.jobs import JobRunner
from syncd.normalize import NormalizePolicy
from syncd.sandbox import DEMO_API_KEY
from syncd.sandbox.app import create_app
from syncd.sandbox.state import Sandbox
from syncd.state.models import Hl7Inbound, OutboxEvent, PatientMirror, QuarantinedRow
from syncd.voxares.client import VoxaresClient
from syncd.voxares.contract import API_PREFIX
from syncd.voxares.limits import ClientLimits
from syncd.voxares.retry import RetryPolicy
from tests.hl7_messages import EXAMPLE_A01, EXAMPLE_A40, adt
from tests.refusing_transport import RefusingTransport
from tests.waiting import async_wait_until

PROVIDER = "ehr"


@dataclass
class Feed:
    engine: Engine
    sandbox: Sandbox
    transport: RefusingTransport
    feed: Hl7Feed
    apply: Hl7Apply
    port: int

    def patients(self) -> dict[str, Any]:
        practice = self.sandbox.practices[self.sandbox.demo_practice_id]
        return {pid: p for (prov, pid), p in practice.by_external.items() if prov == PROVIDER}

    def rows(self, model: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(model)).all())

    def inbound(self) -> list[Any]:
        return sorted(self.rows(Hl7Inbound), key=lambda r: r.id)

    async def send(self, *messages: str | bytes) -> list[str]:
        client = await MllpClient.connect("127.0.0.1", self.port)
        try:
            codes = []
            for message in messages:
                raw = message.encode("utf-8") if isinstance(message, str) else message
                codes.append(ack_code(await client.send(raw)))
            return codes
        finally:
            await client.close()

    async def applied(self) -> None:
        """Wait until no message is pending."""
        await async_wait_until(
            lambda: counts_by_status(self.engine).get("pending", 0) == 0, "no pending message"
        )


def _settings(**overrides: Any) -> Hl7Settings:
    base: dict[str, Any] = {"port": 0, "apply_interval_seconds": 30.0}
    return Hl7Settings.model_validate({**base, **overrides})


@pytest.fixture
async def world(state_engine: Engine, tmp_path: Path) -> AsyncIterator[Feed]:
    sandbox = Sandbox()
    transport = RefusingTransport(create_app(sandbox), status=503)
    client = VoxaresClient(
        base_url="http://sandbox" + API_PREFIX,
        api_key=DEMO_API_KEY,
        transport=transport,
        limits=ClientLimits(requests_per_second=None, max_concurrency=4),
        retry=RetryPolicy.no_wait(attempts=1),
    )
    apply = Hl7Apply(
        state_engine, client, NormalizePolicy(), Hl7Mapping(), provider=PROVIDER, batch_size=3
    )
    feed = Hl7Feed(state_engine, apply, _settings(files_directory=str(tmp_path / "drop")))
    (tmp_path / "drop").mkdir()
    await feed.start(JobRunner(state_engine))
    assert feed.listener is not None
    try:
        yield Feed(state_engine, sandbox, transport, feed, apply, feed.listener.port)
    finally:
        await feed.stop()
        await client.aclose()


async def test_register_then_update_reaches_voxares_in_order(world: Feed) -> None:
    """A01 then A08 for one patient: both AA, and Voxares ends with the A08's data."""
    codes = await world.send(
        adt("c1", "P1", event="A01", family="Horvat"),
        adt("c2", "P1", event="A08", family="Kovač", email="ana@example.com"),
        adt("c3", "P2", event="A04", given="Ivo", mobile=""),
    )
    assert codes == ["AA", "AA", "AA"]
    await world.applied()
    patients = world.patients()
    assert patients["P1"].last_name == "Kovač"
    assert patients["P1"].email == "ana@example.com"
    assert patients["P1"].mobile_number == "+385912345678"
    assert patients["P2"].first_name == "Ivo"
    inbound = world.inbound()
    assert [r.status for r in inbound] == ["applied"] * 3
    assert all(r.raw is None for r in inbound), "an applied message keeps no patient data"


async def test_published_example_is_applied(world: Feed) -> None:
    """HL7's ADT^A01 example (Adam Everyman) becomes patient PATID1234 with his birth date."""
    assert await world.send(EXAMPLE_A01) == ["AA"]
    await world.applied()
    adam = world.patients()["PATID1234"]
    assert (adam.first_name, adam.last_name) == ("ADAM", "EVERYMAN")
    assert str(adam.date_of_birth) == "1961-06-15"


async def test_duplicate_control_id_is_acknowledged_and_applied_once(world: Feed) -> None:
    """A message resent with the same MSH-10 is AA again and stored once."""
    first = adt("dup-1", "P1", family="First")
    assert await world.send(first) == ["AA"]
    assert await world.send(first, adt("dup-1", "P1", family="Other")) == ["AA", "AA"]
    await world.applied()
    assert len(world.inbound()) == 1
    assert world.patients()["P1"].last_name == "First"
    assert world.feed.receiver.counts.duplicates == 2


async def test_unparseable_message_is_refused_kept_and_not_logged(world: Feed) -> None:
    """No MSH-10: AR with a reason; the raw message is kept as rejected, its data unlogged."""
    broken = "MSH|^~\\&|EHR|CLINIC|||20261204||ADT^A08||P|2.5.1\rPID|1||SECRET1^^^CLINIC^MR||Zz"
    with capture_logs() as logs:
        codes = await world.send(broken)
    assert codes == ["AR"]
    (row,) = world.inbound()
    assert row.status == "rejected"
    assert "MSH-10" in row.reason
    assert row.raw == broken.encode()
    assert "SECRET1" not in repr(logs)


async def test_bad_charset_bytes_get_ae(world: Feed) -> None:
    """Bytes invalid in the named character set are answered AE, not guessed at."""
    latin = adt("cs-1", "P9", family="Müller").encode("latin-1")
    assert await world.send(latin) == ["AE"]
    named = adt("cs-2", "P9", family="Müller", charset="8859/1").encode("latin-1")
    assert await world.send(named) == ["AA"]
    await world.applied()
    assert world.patients()["P9"].last_name == "Müller"


async def test_other_messages_are_acknowledged_and_ignored(world: Feed) -> None:
    """An ORU and an ADT^A03 are AA, counted as ignored, and push nothing."""
    oru = "MSH|^~\\&|LAB|CLINIC|||20261204||ORU^R01|lab-1|P|2.5.1\rPID|1||P5^^^CLINIC^MR||X^Y"
    discharge = adt("a03", "P6", event="A03")
    assert await world.send(oru, discharge) == ["AA", "AA"]
    await world.applied()
    assert [r.status for r in world.inbound()] == ["ignored", "ignored"]
    assert world.patients() == {}


async def test_bad_field_is_quarantined_naming_it(world: Feed) -> None:
    """A bad email quarantines the patient naming the field, never the value."""
    assert await world.send(adt("q1", "P7", email="not-an-email")) == ["AA"]
    await world.applied()
    (entry,) = world.rows(QuarantinedRow)
    assert (entry.row_key, entry.field) == ("P7", "email")
    assert "not-an-email" not in entry.reason
    (row,) = world.inbound()
    assert row.status == "quarantined"
    # Fixed by the next message: pushed, quarantine cleared.
    assert await world.send(adt("q2", "P7", email="p7@example.com")) == ["AA"]
    await world.applied()
    assert world.rows(QuarantinedRow) == []
    assert world.patients()["P7"].email == "p7@example.com"


async def test_merge_marks_the_merged_id_and_emits_an_event(world: Feed) -> None:
    """A40: the survivor is pushed; the merged id is marked merged with a patient.merged event."""
    await world.send(
        adt("m1", "OLD", family="Old"),
        adt("m2", "NEW", family="New"),
        adt("m3", "NEW", event="A40", family="Merged", merged_id="OLD"),
    )
    await world.applied()
    mirror = {r.provider_id: r for r in world.rows(PatientMirror)}
    assert mirror["OLD"].state == "merged"
    assert mirror["OLD"].merged_into == "NEW"
    assert mirror["NEW"].state == "active"
    assert world.patients()["NEW"].last_name == "Merged"
    (event,) = [e for e in world.rows(OutboxEvent) if e.event_type == "patient.merged"]
    payload = json.loads(event.payload)
    assert payload["providerId"] == "NEW"
    assert payload["mergedProviderId"] == "OLD"
    assert payload["mergedVoxaresPatientId"] == mirror["OLD"].voxares_patient_id


async def test_published_merge_example(world: Feed) -> None:
    """Chapter 3's A40 example: MR1 survives, MR2 is announced as merged."""
    assert await world.send(EXAMPLE_A40) == ["AA"]
    await world.applied()
    assert "MR1" in world.patients()
    (event,) = [e for e in world.rows(OutboxEvent) if e.event_type == "patient.merged"]
    assert json.loads(event.payload)["mergedProviderId"] == "MR2"


async def test_failed_push_keeps_the_patients_messages_pending_in_order(world: Feed) -> None:
    """A 503 for one patient leaves all its messages pending; others apply; a later run
    applies them in order."""
    world.transport.refused.add("P1")
    await world.send(adt("f1", "P1", family="One"), adt("f2", "P2"), adt("f3", "P1", family="Two"))
    await async_wait_until(lambda: "P2" in world.patients(), "the condition")
    await async_wait_until(
        lambda: [r.status for r in world.inbound()] == ["pending", "applied", "pending"],
        "P1 pending, P2 applied",
    )
    assert "P1" not in world.patients()
    world.transport.refused.clear()
    world.feed.wake()
    await world.applied()
    assert world.patients()["P1"].last_name == "Two"


async def test_file_drop_batch_is_applied_and_moved(world: Feed, tmp_path: Path) -> None:
    """An FHS/BHS batch file: every message recorded, applied, the file moved to processed/."""
    body = adt("b1", "F1").replace("\r", "\n") + adt("b2", "F2", given="Eva").replace("\r", "\n")
    batch = f"FHS|^~\\&|EHR\nBHS|^~\\&|EHR\n{body}BTS|2\nFTS|1\n"
    drop = tmp_path / "drop"
    (drop / "batch.hl7").write_text(batch, encoding="utf-8")
    world.feed.wake()
    await async_wait_until(lambda: (drop / "processed" / "batch.hl7").exists(), "the condition")
    await world.applied()
    assert world.patients()["F2"].first_name == "Eva"
    assert len(world.inbound()) == 2


async def test_refused_peer_gets_no_ack(state_engine: Engine) -> None:
    """A peer outside allowed_peers is disconnected without an answer."""
    apply = Hl7Apply(state_engine, None, NormalizePolicy(), Hl7Mapping(), provider=PROVIDER)  # type: ignore[arg-type]
    feed = Hl7Feed(state_engine, apply, _settings(allowed_peers=["10.9.8.0/24"]))
    await feed.start(JobRunner(state_engine))
    try:
        assert feed.listener is not None
        client = await MllpClient.connect("127.0.0.1", feed.listener.port)
        with pytest.raises(ConnectionError):
            await client.send(adt("x1", "P1").encode())
        await client.close()
    finally:
        await feed.stop()
    assert counts_by_status(state_engine) == {}


def test_file_drop_killed_before_the_move_records_nothing_twice(
    state_engine: Engine, tmp_path: Path
) -> None:
    """A crash after recording a file's messages but before moving it: the next scan reads
    the file again, its messages are duplicates (not stored twice), and the file moves."""
    from syncd import testing_hooks
    from syncd.hl7.files import Hl7FileDrop
    from syncd.hl7.receiver import Receiver

    drop = tmp_path / "in"
    drop.mkdir()
    (drop / "two.hl7").write_text(adt("k1", "K1") + adt("k2", "K2"), encoding="utf-8")
    receiver = Receiver(state_engine)

    def crash(name: str) -> None:
        if name == "hl7.file_before_move":
            raise RuntimeError("killed")

    testing_hooks.set_callback(crash)
    try:
        with pytest.raises(RuntimeError):
            Hl7FileDrop(drop, "*.hl7", receiver).scan_once()
    finally:
        testing_hooks.set_callback(None)
    assert (drop / "two.hl7").exists()
    assert Hl7FileDrop(drop, "*.hl7", receiver).scan_once() == 1
    receiver.close()
    assert (drop / "processed" / "two.hl7").exists()
    assert counts_by_status(state_engine) == {"pending": 2}
    assert receiver.counts.duplicates == 2


async def test_a_refused_key_stops_the_run_and_keeps_every_message_pending(
    state_engine: Engine,
) -> None:
    """401 from Voxares: the apply run raises, nothing of the batch is recorded, and the
    messages stay pending for a run with a good key."""
    from syncd.exceptions import Unauthorized
    from syncd.hl7.receiver import Receiver
    from syncd.state.runs import start_run

    receiver = Receiver(state_engine)
    for n in range(3):
        receiver.receive(adt(f"u{n}", f"U{n}").encode())
    receiver.close()
    sandbox = Sandbox()
    client = VoxaresClient(
        base_url="http://sandbox" + API_PREFIX,
        api_key="not-the-key",
        transport=httpx.ASGITransport(app=create_app(sandbox)),
        retry=RetryPolicy.no_wait(attempts=1),
    )
    apply = Hl7Apply(state_engine, client, NormalizePolicy(), Hl7Mapping(), provider=PROVIDER)
    try:
        with pytest.raises(Unauthorized):
            await apply.run(start_run(state_engine, "apply_hl7"))
    finally:
        await client.aclose()
    assert counts_by_status(state_engine) == {"pending": 3}
    assert _mirror_count(state_engine) == 0


def _mirror_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return len(conn.execute(select(PatientMirror.id)).all())
