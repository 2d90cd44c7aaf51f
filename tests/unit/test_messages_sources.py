"""Message source rows (pure checks and the CSV reader): keys, problems by column, send times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from syncd.config import CsvMessageSource
from syncd.exceptions import SourceError
from syncd.messages.sources import (
    Accepted,
    Deferred,
    MessageRow,
    RowProblem,
    origin_of,
    parse_send_at,
    plan_row,
    read_csv,
    request_key,
)
from syncd.normalize import provider_id_key

NOW = datetime(2025, 5, 20, 9, 0, tzinfo=UTC)


def source(path: str = "unused.csv", **overrides: Any) -> CsvMessageSource:
    fields: dict[str, Any] = {
        "type": "csv",
        "name": "reminders",
        "path": path,
        "template_id": "t-1",
        "key_column": "appt",
        "provider_id_column": "patient",
        "send_at_column": "at",
    }
    fields.update(overrides)
    return CsvMessageSource.model_validate(fields)


def test_a_row_makes_the_key_source_colon_value() -> None:
    """The request key is `<source>:<key value>`, so a re-read makes no second request."""
    planned = plan_row(MessageRow(2, "A1", "P-1"), source(), NOW)
    assert planned == Accepted(2, "reminders:A1", "P-1")
    assert request_key("s", "v") == "s:v"
    assert origin_of("reminders") == "source:reminders"
    assert len(origin_of("x" * 64)) == 64


@pytest.mark.parametrize(
    ("row", "column", "reason"),
    [
        (MessageRow(3, None, "P-1"), "appt", "is empty"),
        (MessageRow(3, "A1", None), "patient", "is empty"),
        (MessageRow(3, "A" * 250, "P-1"), "appt", "is longer than 246 characters"),
        (MessageRow(3, "A1", "P" * 129), "patient", "is longer than 128 characters"),
        (MessageRow(3, "A1", "P-1", "soon"), "at", "is not an ISO 8601 date and time"),
        (MessageRow(3, "A\udcff", "P-1"), "appt", "holds bytes that are not valid text"),
        (MessageRow(3, None, None, None, "row has 2 columns"), None, "row has 2 columns"),
        (MessageRow(3, "A1", " \u200b "), "patient", "is empty"),
        (MessageRow(3, "A1", "P\x00-1"), "patient", "contains control characters"),
        (MessageRow(3, "A1", "P\u200e-1"), "patient", "contains invisible formatting"),
    ],
)
def test_bad_rows_name_the_column(row: MessageRow, column: str | None, reason: str) -> None:
    """Each problem names the row's line and the column, never the value."""
    planned = plan_row(row, source(), NOW)
    assert isinstance(planned, RowProblem)
    assert (planned.source, planned.line, planned.column) == ("reminders", 3, column)
    assert planned.reason.startswith(reason)


def test_a_future_send_time_defers_the_row() -> None:
    """A row due later is left for a later run; a past or empty one is accepted."""
    later = (NOW + timedelta(hours=1)).isoformat()
    earlier = (NOW - timedelta(hours=1)).isoformat()
    assert plan_row(MessageRow(2, "A", "P", later), source(), NOW) == Deferred(2)
    assert isinstance(plan_row(MessageRow(2, "A", "P", earlier), source(), NOW), Accepted)
    assert isinstance(plan_row(MessageRow(2, "A", "P", None), source(), NOW), Accepted)
    no_column = source(send_at_column=None)
    assert isinstance(plan_row(MessageRow(2, "A", "P", later), no_column, NOW), Accepted)


def test_send_times_parse_from_text_or_datetime() -> None:
    """ISO text with or without offset (then local time), or a driver's datetime."""
    assert parse_send_at("2025-05-20T11:00:00+02:00") == NOW
    naive = parse_send_at("2025-05-20T09:00:00")
    assert naive.tzinfo is not None
    assert naive == datetime(2025, 5, 20, 9, 0).astimezone()
    assert parse_send_at(datetime(2025, 5, 20, 9, tzinfo=timezone.utc)) == NOW  # noqa: UP017
    with pytest.raises(ValueError, match="not a timestamp"):
        parse_send_at(42)


def test_csv_rows_carry_physical_line_numbers(tmp_path: Path) -> None:
    """Lines count from the header (1), across quoted newlines; blank lines are skipped."""
    path = tmp_path / "a.csv"
    path.write_text('Appt ,patient,at\nA1,P-1,\n\n"A\n2",P-2,2025-01-01\nA3\n', encoding="utf-8")
    rows = list(read_csv(source(str(path))))
    assert [(r.line, r.key, r.provider_id, r.send_at) for r in rows] == [
        (2, "A1", "P-1", None),
        (4, "A\n2", "P-2", "2025-01-01"),
        (6, None, None, None),
    ]
    assert rows[2].problem == "row has 1 columns, the header has 3"


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "is empty"), ("appt,appt,patient,at\n", "appearing twice 'appt'")],
)
def test_unusable_csv_files_are_source_errors(tmp_path: Path, text: str, message: str) -> None:
    """An empty file, or a header naming a column twice: SourceError naming the problem."""
    path = tmp_path / "a.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SourceError, match=message):
        list(read_csv(source(str(path))))


def test_a_missing_file_is_a_source_error() -> None:
    """The path is named; nothing else."""
    with pytest.raises(SourceError, match=r"cannot open /nonexistent\.csv"):
        list(read_csv(source("/nonexistent.csv")))


@pytest.mark.parametrize("raw", ["P-1", " P-1 ", "\ufeffP-1", "P-1\u200b", "\u2060P-1\u00a0"])
def test_a_request_names_the_patient_by_the_id_the_patient_source_keys_it_by(raw: str) -> None:
    """An export that pads the id, or ends it with an invisible character (a BOM, a zero
    width space from a spreadsheet), still names the patient the mirror knows as P-1."""
    planned = plan_row(MessageRow(2, "A1", raw), source(), NOW)
    assert isinstance(planned, Accepted)
    assert planned.provider_id == provider_id_key(raw) == "P-1"
