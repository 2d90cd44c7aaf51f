"""The FHIR source against a real FHIR implementation: Medplum's FHIR router
(npm `@medplum/fhir-router`, the search engine of the Medplum server) with its in-memory
repository, behind a few lines of node:http (`tests/fhir_medplum/server.cjs`).

Chosen because it installs from npm in seconds and runs without a database, unlike HAPI
FHIR (a Spring Boot JPA server, hundreds of MB of Maven artifacts) or node-fhir-server-core
(an empty framework: storage is left to the user, MongoDB in its reference server). It
checks what the fixture server cannot: that a real implementation accepts our
`_lastUpdated=ge<instant>` and `_count`, stamps `meta.lastUpdated` itself, and answers bad
input with its own OperationOutcome. It does not page (no `next` links): the source must
then not call a short read complete.

Needs `node` and `npm` (npm's registry is reachable from CI): skipped with the reason when
they are missing, a failure under CI=true like a missing service.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine
from structlog.testing import capture_logs

from syncd.exceptions import SourceError
from syncd.sources.fhir import FhirPatientSource
from syncd.sources.fhir_cursor import CursorStore
from tests.conftest import IN_CI
from tests.fhir_examples import SYSTEM, example, examples

HERE = Path(__file__).resolve().parents[1] / "fhir_medplum"


@pytest.fixture(scope="module")
def medplum(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Medplum's router installed from npm and served on a free port; its FHIR base URL."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        reason = "node and npm are needed for the Medplum FHIR server"
        if IN_CI:
            pytest.fail(f"{reason} (CI=true)")
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("medplum")
    for name in ("package.json", "server.cjs"):
        shutil.copy(HERE / name, folder / name)
    subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=folder,
        check=True,
        capture_output=True,
        timeout=600,
    )
    server = subprocess.Popen(
        [node, "server.cjs", "0"], cwd=folder, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline().strip()
        assert line.startswith("listening "), line
        base = line.removeprefix("listening ") + "/fhir"
        with httpx.Client(timeout=60) as client:
            for resource in examples():
                answer = client.post(f"{base}/Patient", json=resource)
                assert answer.status_code == 201, answer.text
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)
        if server.stdout is not None:
            server.stdout.close()


def _source(base: str, **options: object) -> FhirPatientSource:
    return FhirPatientSource("medplum", base, identifier_system=SYSTEM, **options)  # type: ignore[arg-type]


def test_full_read_maps_the_examples(medplum: str) -> None:
    """Every example read and mapped; xcda is the one problem; the read is complete."""
    read = _source(medplum, page_size=100).rows()
    rows = {row.origin: row for row in read}
    assert set(rows) == {f"Patient/{r['id']}" for r in examples()}
    assert read.complete is True
    assert rows["Patient/example"].fields["firstName"] == "Peter"
    assert rows["Patient/pat3"].active is False
    assert rows["Patient/xcda"].problem_field == "providerId"
    assert [o for o, r in rows.items() if r.problem is not None] == ["Patient/xcda"]


def test_incremental_read_gets_only_the_update(medplum: str, state_engine: Engine) -> None:
    """After a saved cursor (the server's Date header), `_lastUpdated=ge` on the real
    server returns the one patient updated since."""
    cursors = CursorStore(state_engine, "medplum", medplum)
    source = _source(medplum, page_size=100, cursors=cursors, overlap=timedelta(0))
    time.sleep(1.1)  # the Date header has whole seconds: start the read in a later one
    first = source.rows()
    list(first)
    assert first.on_pushed is not None
    first.on_pushed()
    time.sleep(1.1)
    with httpx.Client(timeout=60) as client:
        changed = {**example("pat1"), "gender": "female"}
        answer = client.put(f"{medplum}/Patient/pat1", json=changed)
        assert answer.status_code == 200, answer.text
    second = source.rows()
    rows = list(second)
    assert [row.origin for row in rows] == ["Patient/pat1"]
    assert second.incremental is True
    assert second.complete is False


def test_the_servers_operation_outcome_is_shown(medplum: str) -> None:
    """A bad `_lastUpdated` is refused by the server; its OperationOutcome text is shown."""
    source = _source(medplum)
    with httpx.Client(timeout=60) as client, pytest.raises(SourceError) as caught:
        source.get(client, f"{medplum}/Patient", {"_lastUpdated": "gebad"})
    assert str(caught.value) == (
        "source medplum: the FHIR server answered 400: OperationOutcome error invalid: "
        "Invalid format for date search parameter: bad"
    )


def test_a_server_that_does_not_page_gives_no_complete_read(medplum: str) -> None:
    """Two per page and no next link: six in `total`, two read, not complete."""
    with capture_logs() as logs:
        read = _source(medplum, page_size=2).rows()
        assert len(list(read)) == 2
    assert read.complete is False
    assert read.on_pushed is None
    assert any(e["event"] == "fhir.read_short" and e["total"] == 6 for e in logs)
