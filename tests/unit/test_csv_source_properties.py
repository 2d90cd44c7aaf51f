"""Round-trip property of CsvSource: whatever csv.writer writes is read back as written,
unless a multi-line cell holds a line that reads as a record (the unbalanced-quote rule)."""

from __future__ import annotations

import csv
import io
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.exceptions import SourceError
from syncd.sources.csv import CsvSource

HEADER = ["id", "first", "last", "mobile", "email", "dob", "notes"]
COLUMNS = dict(
    zip(
        ["providerId", "firstName", "lastName", "mobileNumber", "email", "dateOfBirth"],
        HEADER,
        strict=False,
    )
)
# What a text file's reader counts as a line break (newline="" mode).
LINE_BREAK = re.compile("\r\n|\r|\n")

cell = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
records = st.lists(st.lists(cell, min_size=7, max_size=7), max_size=12)


@settings(max_examples=150, deadline=None)
@given(records, st.sampled_from(["\n", "\r\n"]), st.sampled_from([",", ";", "\t"]))
def test_written_records_read_back_with_their_start_lines(
    rows: list[list[str]], terminator: str, delimiter: str
) -> None:
    """Every non-blank record comes back trimmed (empty -> None), at the physical line where
    it starts, whatever quotes, delimiters and line breaks its cells contain; a file whose
    multi-line cell has a line with a record's number of delimiters fails instead."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator=terminator)
    writer.writerow(HEADER)
    expected = []
    record_like = False
    for row in rows:
        if terminator == "\n":
            # csv.writer (3.11) leaves a lone CR unquoted unless it is in the terminator.
            row = [value.replace("\r", "\n") for value in row]
        line = len(LINE_BREAK.findall(buffer.getvalue())) + 1
        writer.writerow(row)
        record_like = record_like or any(
            part.count(delimiter) == len(HEADER) - 1
            for value in row
            for part in LINE_BREAK.split(value)[1:]
        )
        if "".join(row).strip():
            values = [value.strip() or None for value in row[:6]]
            expected.append((line, dict(zip(COLUMNS, values, strict=True))))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "p.csv"
        path.write_text(buffer.getvalue(), encoding="utf-8", newline="")
        source = CsvSource("ehr", path, columns=COLUMNS, delimiter=delimiter)
        read = source.rows()
        if record_like:
            with pytest.raises(SourceError, match="reads as a record of its own"):
                list(read)
            return
        got = [(row.line, dict(row.fields)) for row in read]
    assert got == expected
    assert read.complete
