"""SMS requests from configured CSV and SQL sources, on a real state database and the
in-process sandbox: one request per row key however often the source is read, rejected rows
reported by line and column (never by value), and nothing sent for them."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from syncd.config import CsvMessageSource, SqlMessageSource
from syncd.content.mirror import ContentMirror
from syncd.exceptions import MessageRequestError, SourceError
from syncd.messages import MessageSourcesJob, counts_by_state, import_source
from syncd.messages.sources import RowProblem
from tests.integration.test_messages_support import (
    PROVIDER,
    World,
    add_patient,
    make_world,
    migrated_sqlite,
    request,
)

CSV = """appt_id,patient,remind_at
A1,P-1,2020-01-01T09:00:00
A2,P-2,
,P-3,
A4,,
A5,P-5,2999-01-01T09:00:00
A6,P-6,next tuesday
A1,P-1,
A2,P-9,
A9,P-9
"A10","P-10",""
"""


@pytest.fixture
async def world(tmp_path: Any) -> AsyncIterator[World]:
    w = make_world(migrated_sqlite(tmp_path))
    await ContentMirror(w.engine, w.client()).run(None)
    try:
        yield w
    finally:
        await w.close()


def csv_source(world: World, path: Path, **overrides: Any) -> CsvMessageSource:
    path.write_text(CSV, encoding="utf-8")
    fields: dict[str, Any] = {
        "type": "csv",
        "name": "reminders",
        "path": str(path),
        "template_id": world.template_ids()[0],
        "key_column": "appt_id",
        "provider_id_column": "patient",
        "send_at_column": "remind_at",
    }
    fields.update(overrides)
    return CsvMessageSource.model_validate(fields)


async def test_csv_rows_become_requests_once_with_problems_named(
    world: World, tmp_path: Path
) -> None:
    """Valid rows make one request each; bad rows are reported with line and column."""
    source = csv_source(world, tmp_path / "appointments.csv")
    with capture_logs() as logs:
        first = import_source(world.engine, source, provider=PROVIDER)
    assert (first.rows, first.created, first.existing, first.deferred, first.rejected) == (
        10,
        3,
        1,
        1,
        5,
    )
    assert sorted(first.problems, key=lambda p: p.line) == [
        RowProblem("reminders", 4, "appt_id", "is empty"),
        RowProblem("reminders", 5, "patient", "is empty"),
        RowProblem("reminders", 7, "remind_at", "is not an ISO 8601 date and time"),
        RowProblem("reminders", 9, "appt_id", "repeats the key of line 3 for another patient"),
        RowProblem("reminders", 10, None, "row has 2 columns, the header has 3"),
    ]
    logged = repr([e for e in logs if e["event"] == "messages.source_row_rejected"])
    for value in ("P-9", "P-6", "next tuesday", "A9"):
        assert value not in logged
    stored = request(world.engine, "reminders:A1")
    assert (stored.origin, stored.provider, stored.provider_id) == (
        "source:reminders",
        "ehr",
        "P-1",
    )
    assert stored.template_id == source.template_id
    assert stored.content is None

    again = import_source(world.engine, source, provider=PROVIDER)
    assert (again.created, again.existing, again.rejected) == (0, 4, 5)
    assert counts_by_state(world.engine)["pending"] == 3


async def test_a_reread_source_never_sends_a_row_twice(world: World, tmp_path: Path) -> None:
    """Read, send, read again, send again: each valid row was sent exactly once."""
    source = csv_source(world, tmp_path / "appointments.csv")
    for provider_id in ("P-1", "P-2", "P-10"):
        add_patient(world.engine, provider_id)
    for _ in range(2):
        import_source(world.engine, source, provider=PROVIDER)
        await world.sender().run(None)
    what = f"template:{source.template_id}"
    assert [world.sends(p, what) for p in ("P-1", "P-2", "P-10", "P-5", "P-9")] == [1, 1, 1, 0, 0]
    assert counts_by_state(world.engine)["sent"] == 3


async def test_an_unknown_template_fails_the_source_before_reading_it(world: World) -> None:
    """The template is checked first: the (missing) file is never opened."""
    source = CsvMessageSource.model_validate(
        {
            "type": "csv",
            "name": "reminders",
            "path": "/nonexistent/appointments.csv",
            "template_id": "no-such-template",
            "key_column": "appt_id",
            "provider_id_column": "patient",
        }
    )
    with pytest.raises(MessageRequestError, match="no-such-template"):
        import_source(world.engine, source, provider=PROVIDER)


async def test_a_missing_column_names_the_column(world: World, tmp_path: Path) -> None:
    """A configured column the header lacks is a SourceError naming it."""
    source = csv_source(world, tmp_path / "a.csv", provider_id_column="patient_no")
    with pytest.raises(SourceError, match=r"missing column.*'patient_no'"):
        import_source(world.engine, source, provider=PROVIDER)


async def test_sql_rows_become_requests(world: World, tmp_path: Path) -> None:
    """A SELECT on the EHR database: integer keys become text, one request per row."""
    ehr = tmp_path / "ehr.db"
    with sqlite3.connect(ehr) as conn:
        conn.execute("CREATE TABLE appointments (id INTEGER, patient_id TEXT, at TEXT)")
        conn.executemany(
            "INSERT INTO appointments VALUES (?, ?, ?)",
            [(1, "P-1", "2020-05-01 10:00"), (2, "P-2", None), (3, None, None)],
        )
    source = SqlMessageSource.model_validate(
        {
            "type": "sql",
            "name": "reminders-sql",
            "url": f"sqlite:///{ehr}",
            "query": "SELECT id AS appt, patient_id, at FROM appointments ORDER BY id",
            "template_id": world.template_ids()[1],
            "key_column": "appt",
            "provider_id_column": "patient_id",
            "send_at_column": "at",
        }
    )
    done = import_source(world.engine, source, provider=PROVIDER)
    assert (done.created, done.rejected) == (2, 1)
    assert done.problems == [RowProblem("reminders-sql", 3, "patient_id", "is empty")]
    assert request(world.engine, "reminders-sql:1").provider_id == "P-1"


async def test_the_job_reads_every_source_and_fails_if_one_did(
    world: World, tmp_path: Path
) -> None:
    """One broken source does not stop the others; the run fails at the end."""
    good = csv_source(world, tmp_path / "good.csv")
    broken = csv_source(world, tmp_path / "broken.csv", name="broken", key_column="nope")
    job = MessageSourcesJob(world.engine, [broken, good], provider=PROVIDER)
    with pytest.raises(SourceError, match="broken"):
        await job.run(None)
    assert counts_by_state(world.engine)["pending"] == 3
