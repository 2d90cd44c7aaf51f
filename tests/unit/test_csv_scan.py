"""scan_record: reads a record as the csv module does, and judges its quotes by the rule."""

from __future__ import annotations

import csv
import io
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.sources.csv_scan import scan_record

WIDTH = 4
LINE_BREAK = re.compile("\r\n|\r|\n")
cell = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
rows = st.lists(cell, min_size=WIDTH, max_size=WIDTH)


def physical_lines(text: str) -> list[str]:
    """The lines a file opened with newline="" yields for `text`."""
    return io.StringIO(text, newline="").readlines()


def written(row: list[str], delimiter: str, terminator: str) -> str:
    buffer = io.StringIO(newline="")
    csv.writer(buffer, delimiter=delimiter, lineterminator=terminator).writerow(row)
    return buffer.getvalue()


def takes_in_a_record(row: list[str], delimiter: str) -> bool:
    """Rule 3: a cell has a line after a line break with a record's number of delimiters."""
    return any(
        part.count(delimiter) == WIDTH - 1 for value in row for part in LINE_BREAK.split(value)[1:]
    )


@settings(max_examples=300, deadline=None)
@given(rows, rows, st.sampled_from(["\n", "\r\n"]), st.sampled_from([",", ";", "\t"]))
def test_written_records_scan_as_the_csv_module_reads_them(
    row: list[str], following: list[str], terminator: str, delimiter: str
) -> None:
    """Whatever csv.writer writes scans to the cells csv.reader reads, takes only the
    record's own lines, and is refused only by rule 3 (a line that reads as a record)."""
    if terminator == "\n":
        # csv.writer (3.11) leaves a lone CR unquoted unless it is in the terminator.
        row = [value.replace("\r", "\n") for value in row]
    text = written(row, delimiter, terminator)
    lines = physical_lines(text)
    after = physical_lines(written(following, delimiter, terminator))
    feed = iter(lines + after)
    scan = scan_record(feed, 7, delimiter=delimiter, width=WIDTH, cap=1000)
    if takes_in_a_record(row, delimiter):
        assert scan.problem is not None
        assert "opened at line 7 takes in line" in scan.problem
        return
    assert scan.problem is None
    assert scan.cells == next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    assert scan.lengths == [len(value) for value in scan.cells]
    assert scan.lines == len(lines)
    assert list(feed) == after  # the next record's lines were not taken


def test_cells_are_cut_at_the_cap_but_measured_in_full() -> None:
    """`cap` bounds what is kept of each cell; `lengths` are the full lengths."""
    scan = scan_record(
        ['a,"' + "x" * 50 + '",' + "y" * 30 + ",b\n"], 2, delimiter=",", width=4, cap=10
    )
    assert scan.cells == ["a", "x" * 10, "y" * 10, "b"]
    assert scan.lengths == [1, 50, 30, 1]


def test_text_glued_after_a_closing_quote_on_one_line_is_kept() -> None:
    """`"a"b` on one line is read as the csv module reads it (`ab`), not refused."""
    scan = scan_record(['"a"b,c\n'], 2, delimiter=",", width=2, cap=10)
    assert (scan.cells, scan.problem) == (["ab", "c"], None)


def test_problems_name_lines_never_text() -> None:
    """Each rule's problem names the lines and none of the cells' text."""
    never_closed = scan_record(['P1,"Secret\n', "more Secret\n"], 5, delimiter=",", width=3, cap=9)
    assert never_closed.problem == "the quoted field opened at line 5 is never closed (end of file)"
    text_after = scan_record(['P1,"Secret\n', 'x"Secret\n'], 5, delimiter=",", width=3, cap=9)
    assert text_after.problem == (
        "the quoted field opened at line 5 closes at line 6 with text after its closing quote"
    )
    record = scan_record(['P1,"Secret\n', "P2,Secret,x\n"], 5, delimiter=",", width=3, cap=9)
    assert record.problem == (
        "the quoted field opened at line 5 takes in line 6, which reads as a record of its own"
    )
