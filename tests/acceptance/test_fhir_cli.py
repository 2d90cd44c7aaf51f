"""The CLI with a FHIR patient source: `syncd doctor` checks the server's
CapabilityStatement, `syncd sync patients` pushes its patients (the fixture FHIR server on a
real port, the served sandbox as Voxares)."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, select

from syncd.sandbox.fhir_server import FhirFixture, serve_in_thread
from syncd.state.models import SourceCursor
from tests.acceptance.conftest import Workspace
from tests.fhir_examples import SYSTEM, examples


@pytest.fixture
def fhir() -> Iterator[tuple[FhirFixture, str]]:
    server = FhirFixture()
    for resource in examples():
        server.put(resource, at=server.server_now() - timedelta(days=1))
    with serve_in_thread(server) as root:
        yield server, f"{root}/fhir"


def use_fhir(ws: Workspace, base_url: str) -> None:
    """The workspace's config with its CSV source replaced by the FHIR server."""
    ws.write_config()
    text = ws.config.read_text(encoding="utf-8")
    text = re.sub(r"\[patients\.source\].*?(?=\n\[submissions\])", "", text, flags=re.S)
    text = text.replace('default_region = "HR"', 'default_region = "AU"')
    text += (
        f'\n[patients.source]\ntype = "fhir"\nbase_url = "{base_url}"\n'
        f'identifier_system = "{SYSTEM}"\npage_size = 2\n'
    )
    ws.config.write_text(text, encoding="utf-8")
    assert ws.run("db", "upgrade").returncode == 0


def test_doctor_checks_the_capability_statement(
    workspace: Workspace, fhir: tuple[FhirFixture, str]
) -> None:
    """ok when /metadata lists Patient search; FAIL (exit 1) when it does not."""
    server, base_url = fhir
    use_fhir(workspace, base_url)
    result = workspace.run("doctor")
    source = next(line for line in result.stdout.splitlines() if " source" in line)
    assert source.startswith("ok   source: "), result.stdout
    assert "CapabilityStatement lists Patient search" in source
    assert result.returncode == 0, result.stdout + result.stderr

    server.lists_patient_search = False
    result = workspace.run("doctor")
    source = next(line for line in result.stdout.splitlines() if " source" in line)
    assert source == (
        f"FAIL source: {base_url}: the CapabilityStatement lists Patient without the "
        "search-type interaction"
    )
    assert result.returncode == 1


def test_doctor_shows_the_servers_operation_outcome(
    workspace: Workspace, fhir: tuple[FhirFixture, str]
) -> None:
    """A refused search shows status and OperationOutcome in the doctor line."""
    server, base_url = fhir
    use_fhir(workspace, base_url)
    server.auth, server.bearer_token = "bearer", "not-configured"
    result = workspace.run("doctor")
    source = next(line for line in result.stdout.splitlines() if " source" in line)
    assert source.startswith("FAIL source: source fhir: the FHIR server answered 401: ")
    assert "OperationOutcome error login" in source


def test_sync_patients_from_fhir_then_an_incremental_rerun(
    workspace: Workspace, fhir: tuple[FhirFixture, str]
) -> None:
    """The first sync reads everything and pushes five patients (xcda quarantined); the
    second asks only for what changed since (server clock, overlap) and pushes nothing."""
    server, base_url = fhir
    use_fhir(workspace, base_url)
    first = workspace.run("sync", "patients")
    assert first.returncode == 0, first.stderr
    assert workspace.practice.stats()["patients"] == 5
    second = workspace.run("sync", "patients")
    assert second.returncode == 0, second.stderr
    searches = [r for r in server.requests if r.startswith("GET /fhir/Patient")]
    assert "_lastUpdated=ge" not in searches[0]
    assert "_lastUpdated=ge" in searches[-1]
    events = [json.loads(line) for line in second.stderr.splitlines() if line.startswith("{")]
    finished = [e for e in events if e.get("event") == "fhir.read_finished"]
    assert finished
    assert finished[-1]["full"] is False
    assert finished[-1]["patients"] == 0
    quarantine = workspace.run("quarantine", "list", "--json")
    assert [(q["row"], q["field"]) for q in json.loads(quarantine.stdout)] == [
        ("line:6@xcda", "providerId")
    ]


@pytest.mark.parametrize("crash_at", ["push.after_http:3", "push.after_batch_commit:1"])
def test_killed_mid_push_keeps_the_cursor_and_the_rerun_completes(
    workspace: Workspace, fhir: tuple[FhirFixture, str], crash_at: str
) -> None:
    """kill -9 in the middle of the first FHIR push: the cursor is not saved (the rows it
    covers are not all pushed), the rerun reads everything again, and Voxares ends with each
    patient once."""
    server, base_url = fhir
    use_fhir(workspace, base_url)
    small_batches = {"SYNCD_PATIENTS__BATCH_SIZE": "2"}
    killed = workspace.run(
        "sync", "patients", env=workspace.env(SYNCD_CRASH_AT=crash_at, **small_batches)
    )
    assert killed.returncode == -signal.SIGKILL
    assert _cursor(workspace) is None
    rerun = workspace.run("sync", "patients", env=workspace.env(**small_batches))
    assert rerun.returncode == 0, rerun.stderr
    searches = [r for r in server.requests if r.startswith("GET /fhir/Patient?_count")]
    assert all("_lastUpdated" not in s for s in searches)  # both reads were full reads
    assert _cursor(workspace) is not None
    assert workspace.practice.stats()["patients"] == 5


def _cursor(ws: Workspace) -> object:
    engine = create_engine(f"sqlite:///{ws.dir / 'state.db'}")
    try:
        with engine.connect() as conn:
            return conn.execute(select(SourceCursor.position)).scalar_one_or_none()
    finally:
        engine.dispose()
