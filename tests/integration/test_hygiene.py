"""PHI and secret hygiene: a canary patient through every path leaves no trace outside its data.

One distinctive patient (name, phone, email, birth date, form answers) and a known API key
go through push (a 5xx retried, a 422 whose message echoes the values, a quarantined row),
the poller (the detail carries the answers), delivery to a webhook (failing, then
succeeding) and to NDJSON, and SMS sends (sent, ambiguous, refused), all at DEBUG through
the real logging pipeline; then `syncd sync patients`, `syncd status` and `syncd doctor`
run as subprocesses at DEBUG. The logs, the subprocesses' output, the text of every
exception raised, the /metrics text and the error/reason columns must hold none of the
canary values, in any usual spelling, nor the key.

Also: the state database (and its -wal/-shm) and NDJSON files are 0600 in 0700
directories, and plain http to a non-local host is refused by the client, the webhook sink
and the configuration.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import Engine, select

from syncd import metrics
from syncd.config import load_settings
from syncd.exceptions import ConfigError, Invalid, SendOutcomeUnknown
from syncd.jobs import JobRunner
from syncd.logging import configure_logging
from syncd.messages.requests import submit_request
from syncd.messages.sender import MessageSender
from syncd.normalize import NormalizePolicy
from syncd.outbox.delivery import OutboxDeliveryJob
from syncd.outbox.routing import Route
from syncd.patients.push import PatientPush
from syncd.sandbox.app import create_app
from syncd.sandbox.state import Sandbox
from syncd.sinks.ndjson import NdjsonFileSink
from syncd.sinks.webhook import WebhookSink
from syncd.sources.csv import CsvSource
from syncd.state.db import make_engine, upgrade
from syncd.state.models import JobRun, MessageRequest, QuarantinedRow
from syncd.state_metrics import StateCollector
from syncd.submissions.poller import SubmissionPoller
from syncd.voxares.client import VoxaresClient
from syncd.voxares.contract import API_PREFIX
from syncd.voxares.limits import ClientLimits
from syncd.voxares.models import PatientUpsert, SendMessage
from syncd.voxares.retry import RetryPolicy
from tests.config_files import SHORT_COLUMNS

PROVIDER = "ehr"
FIRST, LAST = "Zephyrinus", "Quillfeatherby"
PHONE_E164, PHONE_LOCAL = "+385917776655", "091 777 6655"
EMAIL = "Zeph.Quillfeather@Canary-Mail.example"
BORN, BORN_LOCAL = "1961-07-19", "19.07.1961"
ANSWER = "Canarium pollen allergy 88X"
CANARY_ANSWERS = {"allergies": ANSWER, "signature": "data:image/png;base64,Q2FuYXJ5U2ln"}
WEBHOOK_SECRET = "whsec_Q2FuYXJ5V2ViaG9va1NlY3JldDAwMDE="


def canary_forms(api_key: str) -> list[str]:
    """Every spelling of a canary value that must not show up anywhere."""
    digits = PHONE_E164.lstrip("+")
    forms = [
        FIRST,
        LAST,
        PHONE_E164,
        PHONE_LOCAL,
        PHONE_LOCAL.replace(" ", ""),
        digits,
        digits[3:],  # the national number
        "+385 91 777 6655",
        EMAIL,
        EMAIL.lower(),
        BORN,
        BORN_LOCAL,
        ANSWER,
        "Q2FuYXJ5U2ln",
        api_key,
        api_key.rsplit("-", 1)[-1],  # the key's secret part
        WEBHOOK_SECRET,
    ]
    return forms


def assert_clean(where: str, text: str, api_key: str) -> None:
    found = [form for form in canary_forms(api_key) if form in text]
    lines = [line[:300] for line in text.splitlines() if any(f in line for f in found)][:3]
    assert not found, f"{where} holds canary values: {found} in {lines}"


CSV_HEADER = "id,first,last,mobile,email,dob"
CSV_ROWS = [
    f"C1,{FIRST},{LAST},{PHONE_LOCAL},{EMAIL},{BORN_LOCAL}",  # pushed after a 503
    f"C2,{FIRST},{LAST}-Two,{PHONE_LOCAL},{EMAIL},{BORN}",  # refused (422) echoing values
    f"C3,{FIRST},{LAST},{PHONE_LOCAL},{EMAIL}@@,{BORN}",  # quarantined locally (email)
]
COLUMNS = SHORT_COLUMNS


def echo_422(body: dict[str, Any]) -> httpx.Response:
    """A validation error that quotes what it was sent (some APIs do)."""
    quoted = ", ".join(str(v) for k, v in body.items() if k != "provider" and v)
    message = [f"mobileNumber {body.get('mobileNumber')} is invalid for: {quoted}"]
    return httpx.Response(
        422, json={"statusCode": 422, "message": message, "error": "Unprocessable Entity"}
    )


class Spoiler(httpx.AsyncBaseTransport):
    """The sandbox, with a few answers spoiled on purpose (see the module docstring)."""

    def __init__(self, app: Any) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.failed_once: set[str] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        path = request.url.path.removeprefix(API_PREFIX)
        if request.method == "POST" and path == "/patients":
            if body.get("providerId") == "C1" and "C1" not in self.failed_once:
                self.failed_once.add("C1")
                return httpx.Response(503, json={"statusCode": 503, "message": "busy"})
            if body.get("providerId") == "C2":
                return echo_422(body)
        if request.method == "POST" and path == "/messages/send":
            text = str(body.get("content", ""))
            if "ambiguous" in text:
                raise httpx.ReadTimeout("the answer never came", request=request)
            if "refused" in text:
                return echo_422(body)
        return await self.inner.handle_async_request(request)


class Receiver:
    """A webhook receiver: 500 to the first delivery, 200 afterwards."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        # A streamed body, as a network transport gives (the sink reads it raw).
        return httpx.Response(500 if self.calls == 1 else 200, stream=httpx.ByteStream(b"{}"))


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """Every log line at DEBUG, through the real pipeline (JSON), into a buffer."""
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream=stream)
    try:
        yield stream
    finally:
        configure_logging("WARNING", "json", stream=sys.stderr)


def client_for(transport: httpx.AsyncBaseTransport, key: str) -> VoxaresClient:
    return VoxaresClient(
        base_url="http://sandbox" + API_PREFIX,
        api_key=key,
        transport=transport,
        limits=ClientLimits(requests_per_second=None, max_concurrency=4),
        retry=RetryPolicy.no_wait(attempts=3),
    )


def canary_poller(engine: Engine, client: VoxaresClient, started: datetime) -> SubmissionPoller:
    """A poller of the canary's submissions from `started`, named as the daemon names it."""
    poller = SubmissionPoller(
        engine,
        client,
        overlap=1,
        settle=0,
        page_size=20,
        max_window_seconds=3600,
        max_window_items=100,
        detail_concurrency=2,
        start_from=started,
        provider=PROVIDER,
    )
    poller.name = "poll_submissions"  # type: ignore[attr-defined]
    return poller


def text_columns(engine: Engine) -> str:
    """The error and reason columns (shown by `status`, `quarantine list`, `messages list`)."""
    with engine.connect() as conn:
        parts = list(conn.execute(select(QuarantinedRow.reason)).scalars())
        parts += [e or "" for e in conn.execute(select(JobRun.error)).scalars()]
        parts += [e or "" for e in conn.execute(select(MessageRequest.error)).scalars()]
    return "\n".join(parts)


async def test_canary_leaves_no_trace_in_logs_errors_or_metrics(
    tmp_path: Path, log_stream: io.StringIO
) -> None:
    """Push, poll, deliver and send the canary at DEBUG: no canary value or key anywhere."""
    sandbox = Sandbox()
    key = sandbox.issue_key(sandbox.demo_practice_id, "hygiene")
    spoiler = Spoiler(create_app(sandbox))
    url = f"sqlite:///{tmp_path}/state/state.db"
    (tmp_path / "state").mkdir(mode=0o700)
    upgrade(url)
    engine = make_engine(url)
    runner = JobRunner(engine)
    csv_path = tmp_path / "patients.csv"
    csv_path.write_text("\n".join([CSV_HEADER, *CSV_ROWS]) + "\n", encoding="utf-8")
    raised: list[str] = []
    async with client_for(spoiler, key) as client:
        # Push: C1 after a 503, C2 refused with an echoing 422, C3 quarantined.
        push = PatientPush(
            engine,
            client,
            CsvSource("ehr-export", csv_path, columns=COLUMNS),
            NormalizePolicy(invalid_phone="reject", date_formats=("%Y-%m-%d", "%d.%m.%Y")),
            provider=PROVIDER,
        )
        pushed = await runner.run_once(push)
        assert pushed.outcome == "ok"
        assert (pushed.counts["created"], pushed.counts["quarantined"]) == (1, 2)

        # Poll: a completed form for the canary, with answers.
        practice = sandbox.practices[sandbox.demo_practice_id]
        patient = practice.by_external[(PROVIDER, "C1")]
        form_id = next(iter(practice.forms))
        started = datetime.now(UTC) - timedelta(minutes=5)
        submission = sandbox.create_submission(
            practice.id, patient.id, form_id, at=started + timedelta(minutes=1)
        )
        sandbox.set_submission_status(
            submission, "Completed", CANARY_ANSWERS, at=started + timedelta(minutes=2)
        )
        poller = canary_poller(engine, client, started)
        polled = await runner.run_once(poller)
        assert (polled.outcome, polled.counts["emitted"]) == ("ok", 1)

        # Deliver: the webhook fails once, then takes it; NDJSON takes it at once.
        receiver = Receiver()
        now = [datetime.now(UTC)]
        webhook = WebhookSink(
            "crm",
            "https://crm.example.org/hook",
            WEBHOOK_SECRET,
            transport=httpx.MockTransport(receiver),
        )
        files = NdjsonFileSink("archive", tmp_path / "events")
        delivery = OutboxDeliveryJob(
            engine,
            {"crm": webhook, "archive": files},
            {
                "crm": Route("crm", start="beginning"),
                "archive": Route("archive", start="beginning"),
            },
            clock=lambda: now[0],
        )
        first = await runner.run_once(delivery)
        now[0] += timedelta(hours=1)
        second = await runner.run_once(delivery)
        assert (first.counts["retried"], first.counts["delivered"]) == (1, 1)
        assert second.counts["delivered"] == 1
        await webhook.aclose()
        await files.aclose()

        # SMS: one sent, one ambiguous (unknown), one refused with an echoing 422.
        for name in ("plain", "ambiguous", "refused"):
            submit_request(
                engine,
                key=f"sms-{name}",
                provider=PROVIDER,
                provider_id="C1",
                content=f"Dear {FIRST} {LAST}, {name} reminder for {BORN}",
                origin="test",
            )
        sent = await runner.run_once(MessageSender(engine, client, provider=PROVIDER))
        assert (sent.counts["sent"], sent.counts["unknown"], sent.counts["failed"]) == (1, 1, 1)

        # Exceptions raised straight at a caller.
        canary = PatientUpsert(
            provider_id="C2",
            first_name=FIRST,
            last_name=LAST,
            mobile_number=PHONE_E164,
            email=EMAIL,
            date_of_birth=BORN,
        )
        with pytest.raises(Invalid) as invalid:
            await client.upsert_patient(canary)
        raised += [str(invalid.value), repr(invalid.value), str(invalid.value.args)]
        message = SendMessage(provider_id="C1", content=f"{FIRST} ambiguous {PHONE_E164}")
        with pytest.raises(SendOutcomeUnknown) as unknown:
            await client.send_message(message)
        raised += [str(unknown.value), repr(unknown.value)]
        raised += [repr(client), repr(canary), repr(message), repr(push)]
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text(f'[voxares]\nprovider = ""\nbase_url = "{EMAIL}"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as config_error:
        load_settings(bad_config, {"SYNCD_VOXARES__API_KEY": key})
    raised.append(str(config_error.value))
    engine.dispose()

    logs = log_stream.getvalue()
    assert '"level": "debug"' in logs  # the DEBUG lines were really captured
    assert "patients.rejected_by_api" in logs
    assert_clean("the logs", logs, key)
    assert_clean("exception texts", "\n".join(raised), key)
    assert_clean("/metrics", generate_latest(metrics.REGISTRY).decode(), key)
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(StateCollector(make_engine(url), {"push_patients": timedelta(hours=1)}, []))
    from_state = generate_latest(scrape).decode()
    assert 'syncd_quarantined_rows{source="ehr-export"} 2.0' in from_state
    assert_clean("/metrics read from the state database", from_state, key)
    assert_clean("error and reason columns", text_columns(make_engine(url)), key)

    # File modes: the state database and its WAL files, the NDJSON files and directories.
    state_files = [p for p in (tmp_path / "state").iterdir() if p.name.startswith("state.db")]
    assert {p.name for p in state_files} >= {"state.db"}
    for path in [*state_files, *(tmp_path / "events").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    assert stat.S_IMODE((tmp_path / "events").stat().st_mode) == 0o700


def test_cli_at_debug_prints_no_canary_value(tmp_path: Path) -> None:
    """`syncd sync patients`, `status` and `doctor` at DEBUG: nothing of the canary or key."""
    from syncd.sandbox.seed import DEMO_API_KEY

    csv_path = tmp_path / "patients.csv"
    csv_path.write_text("\n".join([CSV_HEADER, *CSV_ROWS]) + "\n", encoding="utf-8")
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[voxares]
base_url = "sandbox"
[database]
url = "sqlite:///{tmp_path}/state.db"
auto_migrate = true
[logging]
level = "DEBUG"
format = "json"
[health]
enabled = false
[patients.source]
type = "csv"
path = "{csv_path}"
[patients.source.columns]
providerId = "id"
firstName = "first"
lastName = "last"
mobileNumber = "mobile"
email = "email"
dateOfBirth = "dob"
""",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    output = []
    for command in (["db", "upgrade"], ["sync", "patients"], ["status"], ["doctor"]):
        done = subprocess.run(
            [sys.executable, "-m", "syncd.cli", *command, "--config", str(config)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
            check=False,
        )
        output.append(f"$ {command}\n{done.stdout}\n{done.stderr}")
    text = "\n".join(output)
    assert '"level": "debug"' in text
    assert_clean("CLI output", text, DEMO_API_KEY)


def test_plain_http_to_a_remote_host_is_refused_everywhere(tmp_path: Path) -> None:
    """The client, the webhook sink and the configuration refuse http:// to a non-local host."""
    with pytest.raises(ConfigError):
        VoxaresClient(base_url="http://api.voxares.com/api/v1/integration", api_key="vox-a-b")
    with pytest.raises(ConfigError):
        WebhookSink("crm", "http://crm.example.org/hook", WEBHOOK_SECRET)
    config = tmp_path / "config.toml"
    config.write_text(
        '[voxares]\nbase_url = "http://api.voxares.com/api/v1/integration"\n'
        '[outbox.sinks.crm]\ntype = "webhook"\nurl = "http://crm.example.org/hook"\n'
        f'secret = "{WEBHOOK_SECRET}"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(config, {"SYNCD_VOXARES__API_KEY": "vox-a-b"})
    assert {line.split(":")[0] for line in caught.value.problems} == {
        "voxares.base_url",
        "outbox.sinks.crm.url",
    }
    # Loopback stays allowed (local receivers, the served sandbox).
    VoxaresClient(base_url="http://127.0.0.1:8765/api/v1/integration", api_key="vox-a-b")
