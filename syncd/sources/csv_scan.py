"""Reading one CSV record by hand, where the csv module's reading of it cannot be trusted.

The csv module, non-strict as `CsvSource` uses it, accepts any text. A quote that opens a
field and is never closed takes in the rest of the file (or every line up to the next quote
character) as the text of one cell: the rows in it are silently lost, and the run would
look complete. And one cell longer than `csv.field_size_limit()` stops the module in the
middle of a line. `CsvSource` hands such records here: `scan_record` follows the csv
module's grammar (quotes are special only at the start of a field, `""` is a quote inside a
quoted field, no escape character, `\\r`, `\\n` or `\\r\\n` ends a record) over the
record's physical lines, measures each cell, and judges its quotes.

A multi-line quoted field is legal CSV (a note, an address), so the rule is narrow. A
quoted field that runs over a line break is *unbalanced* when

1. it is never closed: the file ends inside it;
2. its closing quote is followed by text instead of a delimiter or the end of the line
   (strict CSV forbids it; the csv module glues the text on); or
3. it takes in a line that reads as a record of its own: a line after the one the quote
   opened on holds, up to the field's closing quote (or its end), exactly as many
   delimiters as a record (the header's column count minus one).

Rule 1 also holds for a quote opened on the last line. Rule 3 is the only judgement: a legal
note with a line of exactly that many delimiters is refused too, which costs a loud failure
(fix or re-export the file) instead of the silent loss of rows that it guards against.
Problems name lines, never text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final

_START: Final = 0  # at the start of a field
_QUOTED: Final = 1  # inside a quoted field
_CLOSED: Final = 2  # just after a quoted field's closing quote
_PLAIN: Final = 3  # inside an unquoted field (or text glued after a closing quote)


@dataclass(frozen=True, slots=True)
class ScannedRecord:
    """One record as the csv module reads it, with the cells cut short for memory.

    `cells[i]` is the i-th cell's text cut at the scan's `cap` characters, `lengths[i]` its
    full length. `problem` (unbalanced quotes, see the module docstring) names lines only.
    `lines` is how many physical lines the scan consumed.
    """

    lines: int
    cells: list[str] = field(repr=False)
    lengths: list[int]
    problem: str | None = None


@lru_cache(maxsize=8)
def _plain_text(delimiter: str) -> re.Pattern[str]:
    """An unquoted cell's text: up to the delimiter or the end of the line."""
    return re.compile(f"[^{re.escape(delimiter)}\r\n]*")


def _inside_part(line: str) -> str:
    """The part of a line that starts inside a quoted field: up to its closing quote."""
    quote = line.find('"')
    while quote >= 0 and line.startswith('"', quote + 1):  # `""` is a quote in the text
        quote = line.find('"', quote + 2)
    return line if quote < 0 else line[:quote]


def scan_record(
    lines: Iterable[str], first_line: int, *, delimiter: str, width: int, cap: int
) -> ScannedRecord:
    """Read one record from `lines` (the record's first physical line first).

    Stops at the line where the record ends, at the end of `lines`, or at the first
    unbalanced quote; it never takes a line beyond the record's last. `first_line` is the
    record's line number in the file, `width` the header's column count, `cap` how many
    characters of each cell are kept.
    """
    plain = _plain_text(delimiter)
    cells: list[str] = []
    lengths: list[int] = []
    pieces: list[str] = []
    kept = size = 0
    state = _START
    opened = number = first_line - 1

    def add(text: str) -> None:
        nonlocal kept, size
        if kept < cap:
            pieces.append(text[: cap - kept])
            kept += min(len(text), cap - kept)
        size += len(text)

    def end_cell() -> None:
        nonlocal kept, size
        cells.append("".join(pieces))
        lengths.append(size)
        pieces.clear()
        kept = size = 0

    def result(problem: str | None = None) -> ScannedRecord:
        return ScannedRecord(number - first_line + 1, cells, lengths, problem)

    for line in lines:
        number += 1
        if state == _QUOTED and _inside_part(line).count(delimiter) == width - 1:
            return result(
                f"the quoted field opened at line {opened} takes in line {number}, "
                "which reads as a record of its own"
            )
        pos, end = 0, len(line)
        while True:
            if state == _QUOTED:
                quote = line.find('"', pos)
                if quote < 0:
                    add(line[pos:])  # the line break is part of the cell
                    break
                add(line[pos:quote])
                pos = quote + 1
                if line.startswith('"', pos):
                    add('"')
                    pos += 1
                else:
                    state = _CLOSED
            elif state == _START and line.startswith('"', pos):
                state, opened = _QUOTED, number
                pos += 1
            elif state == _CLOSED and pos < end and line[pos] not in f"{delimiter}\r\n":
                if number > opened:
                    return result(
                        f"the quoted field opened at line {opened} closes at line {number} "
                        "with text after its closing quote"
                    )
                state = _PLAIN  # the csv module glues the text on, as in `"a"b`
            else:
                if state != _CLOSED:
                    match = plain.match(line, pos)
                    assert match is not None  # `*` matches at least the empty string
                    add(match.group())
                    pos = match.end()
                end_cell()
                if pos < end and line[pos] == delimiter:
                    state = _START
                    pos += 1
                    continue
                return result()  # the record ends with this line
    if state == _QUOTED:
        return result(f"the quoted field opened at line {opened} is never closed (end of file)")
    return result()
