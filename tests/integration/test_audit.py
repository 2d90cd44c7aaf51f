"""The audit trail: id-only who/what/when entries for everything sent, received and delivered.

After push, content mirror, poll, deliver and send runs (with the canary patient of the
hygiene test), `audit_log` has one entry per pushed patient, received submission version,
delivered event (per sink), sent SMS and content change, each naming its job and run, the
object's id and a time, and no entry holds a canary value.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import select

from syncd.content.mirror import ContentMirror
from syncd.jobs import JobRunner
from syncd.messages.requests import submit_request
from syncd.messages.sender import MessageSender
from syncd.normalize import NormalizePolicy
from syncd.outbox.delivery import OutboxDeliveryJob
from syncd.outbox.routing import Route
from syncd.patients.push import PatientPush
from syncd.sandbox.app import create_app
from syncd.sandbox.state import Sandbox
from syncd.sinks.ndjson import NdjsonFileSink
from syncd.sources.csv import CsvSource
from syncd.state.db import make_engine, upgrade
from syncd.state.models import AuditEntry, MessageRequest, OutboxEvent
from syncd.voxares.client import VoxaresClient
from syncd.voxares.contract import API_PREFIX
from syncd.voxares.limits import ClientLimits
from syncd.voxares.retry import RetryPolicy
from tests.integration.test_hygiene import (
    CANARY_ANSWERS,
    COLUMNS,
    CSV_HEADER,
    canary_forms,
    canary_poller,
)

PROVIDER = "ehr"
ROWS = [
    "A1,Zephyrinus,Quillfeatherby,091 777 6655,Zeph.Quillfeather@Canary-Mail.example,1961-07-19",
    "A2,Ottoline,Brackenwhistle,,,",
    "A3,Bad,Row,,not-an-email,",  # quarantined: no audit entry
]


async def test_every_change_has_an_id_only_audit_entry(tmp_path: Path) -> None:
    """Pushed, received, delivered, sent and content entries exist, ids only, no canary."""
    sandbox = Sandbox()
    key = sandbox.issue_key(sandbox.demo_practice_id, "audit")
    url = f"sqlite:///{tmp_path}/state.db"
    upgrade(url)
    engine = make_engine(url)
    runner = JobRunner(engine)
    csv_path = tmp_path / "patients.csv"
    csv_path.write_text("\n".join([CSV_HEADER, *ROWS]) + "\n", encoding="utf-8")
    started = datetime.now(UTC) - timedelta(minutes=10)
    client = VoxaresClient(
        base_url="http://sandbox" + API_PREFIX,
        api_key=key,
        transport=httpx.ASGITransport(app=create_app(sandbox)),
        limits=ClientLimits(requests_per_second=None, max_concurrency=4),
        retry=RetryPolicy.no_wait(attempts=2),
    )
    files = NdjsonFileSink("archive", tmp_path / "events")
    async with client:
        push = PatientPush(
            engine,
            client,
            CsvSource("ehr-export", csv_path, columns=COLUMNS),
            NormalizePolicy(),
            provider=PROVIDER,
        )
        assert (await runner.run_once(push)).counts["created"] == 2
        content = await runner.run_once(ContentMirror(engine, client))
        assert content.outcome == "ok"

        practice = sandbox.practices[sandbox.demo_practice_id]
        patient = practice.by_external[(PROVIDER, "A1")]
        submissions = []
        for minute, form_id in enumerate(list(practice.forms)[:2], start=1):
            submission = sandbox.create_submission(
                practice.id, patient.id, form_id, at=started + timedelta(minutes=minute)
            )
            sandbox.set_submission_status(
                submission, "Completed", CANARY_ANSWERS, at=started + timedelta(minutes=minute)
            )
            submissions.append(submission)
        poller = canary_poller(engine, client, started)
        assert (await runner.run_once(poller)).counts["emitted"] == 2

        delivery = OutboxDeliveryJob(
            engine,
            {"archive": files},
            {"archive": Route("archive", patterns=("form_submission.*",), start="beginning")},
        )
        assert (await runner.run_once(delivery)).counts["delivered"] == 2

        for key_name in ("r1", "r2"):
            submit_request(
                engine,
                key=key_name,
                provider=PROVIDER,
                provider_id="A1",
                content=f"Dear Zephyrinus, reminder {key_name}",
                origin="test",
            )
        assert (await runner.run_once(MessageSender(engine, client, provider=PROVIDER))).counts[
            "sent"
        ] == 2
    await files.aclose()

    with engine.connect() as conn:
        entries = list(conn.execute(select(AuditEntry)))
        delivered_ids = set(
            conn.execute(
                select(OutboxEvent.event_id).where(OutboxEvent.event_type.like("form_submission.%"))
            ).scalars()
        )
        message_ids = {
            row.key: row.message_id
            for row in conn.execute(select(MessageRequest.key, MessageRequest.message_id))
        }
    engine.dispose()

    def objects(action: str) -> Counter[str]:
        return Counter(e.object_id for e in entries if e.action == action)

    assert objects("patient.pushed") == Counter({"A1": 1, "A2": 1})
    assert objects("submission.received") == Counter({s: 1 for s in submissions})
    assert objects("event.delivered") == Counter({e: 1 for e in delivered_ids})
    assert objects("message.sent") == Counter({"r1": 1, "r2": 1})
    content_changes = [e for e in entries if e.action.startswith("content.")]
    assert len(content_changes) == len(practice.templates) + len(practice.forms) + len(
        practice.documents
    )
    for entry in entries:
        assert entry.at is not None
        assert entry.actor
        assert entry.object_type
        if entry.action != "message.sent":
            continue
        assert entry.detail == f"message_id={message_ids[entry.object_id]}"
    by_actor = {e.action: e.actor for e in entries}
    assert by_actor["patient.pushed"] == "push_patients"
    assert by_actor["event.delivered"] == "deliver_outbox"
    assert all(e.run_id is not None for e in entries)
    text = "\n".join(
        " ".join(str(v) for v in (e.actor, e.action, e.object_type, e.object_id, e.detail))
        for e in entries
    )
    found = [form for form in canary_forms(key) if form in text]
    assert not found, found
    assert "Ottoline" not in text
    assert "Brackenwhistle" not in text
