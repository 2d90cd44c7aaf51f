"""Round-trip property of CsvSource: whatever csv.writer writes is read back as written."""

from __future__ import annotations

import csv
import io
import re
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

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
    it starts, whatever quotes, delimiters and line breaks its cells contain."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator=terminator)
    writer.writerow(HEADER)
    expected = []
    for row in rows:
        if terminator == "\n":
            # csv.writer (3.11) leaves a lone CR unquoted unless it is in the terminator.
            row = [value.replace("\r", "\n") for value in row]
        line = len(LINE_BREAK.findall(buffer.getvalue())) + 1
        writer.writerow(row)
        if "".join(row).strip():
            values = [value.strip() or None for value in row[:6]]
            expected.append((line, dict(zip(COLUMNS, values, strict=True))))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "p.csv"
        path.write_text(buffer.getvalue(), encoding="utf-8", newline="")
        source = CsvSource("ehr", path, columns=COLUMNS, delimiter=delimiter)
        got = [(row.line, dict(row.fields)) for row in source.rows()]
    assert got == expected
