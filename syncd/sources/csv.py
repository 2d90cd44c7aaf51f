"""Patient rows from CSV exports: one file, or several matched by a glob.

Files are streamed (memory stays flat in the number of rows) and read in sorted path order.
Each file has its own header, checked before any row is yielded. A row that cannot be
trusted (wrong column count, undecodable bytes, a cell longer than the csv module's field
limit) becomes a `SourceRow` with `problem` set, so that one bad line quarantines one row
instead of stopping the whole sync.

An unbalanced quote is different: it hides the rows after it inside one cell, so it fails
the file (`SourceError` naming the line where the quote opened). Every record that spans
lines or runs into the end of the file is re-read by `csv_scan.scan_record`, whose
docstring states the rule. The read is `complete` only when every file reached its end.

This is the hot path of a first sync (a benchmark reads 1,000,000 rows), hence the
precomputed column getter and the ASCII fast path in `_parsed_records`; the lines of the
record being read are kept (`_tap`) so that a doubtful record can be re-read by hand.
"""

from __future__ import annotations

import codecs
import csv
import glob
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from itertools import chain
from operator import itemgetter
from typing import TYPE_CHECKING, Final

from syncd.exceptions import ConfigError, SourceError
from syncd.hashing import canonical_json, row_hash, row_hasher, sha256_hex
from syncd.sources import REQUIRED_SOURCE_FIELDS, SOURCE_FIELDS
from syncd.sources.base import SourceRead, SourceRow
from syncd.sources.csv_scan import scan_record

if TYPE_CHECKING:
    from _csv import Reader

# Undecodable bytes are read with the `surrogateescape` handler, which turns each one into
# a lone surrogate U+DC80..U+DCFF; finding one in a value means the value was not text.
_UNDECODABLE: Final = re.compile("[\udc80-\udcff]")
# What the csv module says when a cell outgrows `csv.field_size_limit()`.
_FIELD_LIMIT: Final = "field larger than field limit"
# Never a line of a file (every line has at least one character): marks the end of file.
_END_OF_FILE: Final = ""


def _tap(lines: Iterable[str], seen: list[str]) -> Iterator[str]:
    """Pass a file's lines to the csv reader, keeping each in `seen` (emptied per record)
    and `_END_OF_FILE` once the file is exhausted, so that the record being read can be
    re-read by hand and a record that ran into the end of the file can be told."""
    for line in lines:
        seen.append(line)
        yield line
    seen.append(_END_OF_FILE)


def _replace_undecodable(value: str | None) -> str | None:
    """The value with undecodable bytes shown as U+FFFD, so that it can be stored as text."""
    return None if value is None else _UNDECODABLE.sub("\ufffd", value)


class CsvSource:
    """A `Source` reading CSV files whose header names the columns.

    `columns` maps contract field names (`providerId`, `firstName`, ...) to the CSV's column
    names (matched after trimming, case-insensitively). `SourceRow.line` is the physical line
    where the record starts (header = line 1), counting lines inside quoted fields, and
    `SourceRow.origin` is the file's path.
    """

    def __init__(
        self,
        name: str,
        path_or_glob: str | os.PathLike[str],
        *,
        columns: Mapping[str, str],
        delimiter: str = ",",
        encoding: str = "utf-8-sig",
    ) -> None:
        problems = [
            f"sources.{name}.columns: unknown field {field!r}"
            for field in columns
            if field not in SOURCE_FIELDS
        ]
        problems += [
            f"sources.{name}.columns: required field {field!r} is not mapped"
            for field in REQUIRED_SOURCE_FIELDS
            if not (columns.get(field) or "").strip()
        ]
        if len(delimiter) != 1:
            problems.append(f"sources.{name}.delimiter: must be one character")
        try:
            codecs.lookup(encoding)
        except LookupError:
            problems.append(f"sources.{name}.encoding: unknown encoding {encoding!r}")
        if problems:
            raise ConfigError(problems)
        self._name = name
        self._pattern = os.fspath(path_or_glob)
        self._columns = {field: column.strip() for field, column in columns.items()}
        self._delimiter = delimiter
        self._encoding = encoding

    @property
    def name(self) -> str:
        """The source's configured name."""
        return self._name

    def __repr__(self) -> str:
        return f"CsvSource(name={self._name!r}, path={self._pattern!r})"

    def files(self) -> list[str]:
        """The files this source reads now, in the order it reads them."""
        paths = sorted(p for p in glob.glob(self._pattern) if os.path.isfile(p))
        if not paths:
            raise SourceError(f"source {self._name}: no file matches {self._pattern!r}")
        return paths

    def rows(self) -> SourceRead:
        """Read every row of every file, streaming; `SourceError` on an unreadable file."""
        read = SourceRead()
        return read.of(self._read_all(read))

    def _read_all(self, read: SourceRead) -> Iterator[SourceRow]:
        for path in self.files():
            yield from self._read_file(path)
        read.complete = True

    def _column_indices(self, header: list[str], path: str) -> dict[str, int]:
        """Contract field -> column index in this file's header, or `SourceError`.

        The error names the missing or ambiguous column names (configuration, never data):
        a file without a header has patient data in its first line.
        """
        positions: dict[str, list[int]] = {}
        for index, cell in enumerate(header):
            positions.setdefault(cell.strip().casefold(), []).append(index)
        indices: dict[str, int] = {}
        missing: list[str] = []
        ambiguous: list[str] = []
        for field, column in self._columns.items():
            found = positions.get(column.casefold(), [])
            if not found:
                missing.append(column)
            elif len(found) > 1:
                ambiguous.append(column)
            else:
                indices[field] = found[0]
        if missing or ambiguous:
            parts = []
            if missing:
                parts.append(f"missing column(s) {', '.join(map(repr, missing))}")
            if ambiguous:
                parts.append(f"column(s) appearing twice {', '.join(map(repr, ambiguous))}")
            raise SourceError(f"source {self._name}: {path}: header has {'; '.join(parts)}")
        return indices

    def _read_file(self, path: str) -> Iterator[SourceRow]:
        """Stream one file's rows (see the class docstring for what `line` means)."""
        try:
            handle = open(  # noqa: SIM115 - `with handle:` below closes it
                path, encoding=self._encoding, errors="surrogateescape", newline=""
            )
        except OSError as exc:
            raise SourceError(
                f"source {self._name}: cannot open {path} ({exc.strerror or type(exc).__name__})"
            ) from None
        with handle:
            seen: list[str] = []
            lines = _tap(handle, seen)
            reader = csv.reader(lines, delimiter=self._delimiter)
            try:
                try:
                    header = next(reader)
                except StopIteration:
                    raise SourceError(
                        f"source {self._name}: {path} is empty (no header line)"
                    ) from None
                indices = self._column_indices(header, path)
                seen.clear()
                yield from self._records(reader, _File(path, header, indices, lines, seen))
            except csv.Error as exc:
                # The parser cannot go on (e.g. a quoted field running past the size limit).
                # csv's messages name characters and limits, never cell contents.
                raise SourceError(
                    f"source {self._name}: {path}: unreadable CSV at line {reader.line_num} ({exc})"
                ) from None
            except UnicodeError as exc:
                raise SourceError(
                    f"source {self._name}: {path}: cannot decode as {self._encoding} near line "
                    f"{reader.line_num} ({type(exc).__name__})"
                ) from None
            except OSError as exc:
                raise SourceError(
                    f"source {self._name}: {path}: read failed near line {reader.line_num} "
                    f"({exc.strerror or type(exc).__name__})"
                ) from None

    def _records(self, reader: Reader, file: _File) -> Iterator[SourceRow]:
        """The data rows after the header: the per-row loop, kept tight."""
        while True:
            try:
                yield from self._parsed_records(reader, file)
                return
            except csv.Error as exc:
                if not str(exc).startswith(_FIELD_LIMIT):
                    raise
            # The csv module dropped the rest of the line; the record is re-read by hand,
            # and the module goes on after it.
            yield self._oversized_row(file, reader.line_num)

    def _parsed_records(self, reader: Reader, file: _File) -> Iterator[SourceRow]:
        """Records as the csv module parses them, until the end or a cell over its limit."""
        indices, width, origin, seen = file.indices, len(file.header), file.path, file.seen
        names = tuple(indices)
        getter = itemgetter(*indices.values())
        hash_values = row_hasher(names)
        hand_read = file.hand_read
        line_num = reader.line_num + hand_read
        try:
            for record in reader:
                start = line_num + 1
                line_num = reader.line_num + hand_read
                if line_num != start or not seen[-1]:
                    # Over several lines, or into the end of the file: check its quotes.
                    self._check_quotes(file, start)
                seen.clear()
                if len(record) != width:
                    if not "".join(record).strip():
                        continue  # a blank line, or a spreadsheet's trailing empty row
                    yield SourceRow(
                        start,
                        {},
                        sha256_hex(canonical_json(record)),
                        f"row has {len(record)} columns, the header has {width}",
                        None,
                        origin,
                    )
                    continue
                raw = getter(record)
                joined = "".join(raw)
                values = [value.strip() or None for value in raw]
                fields = dict(zip(names, values, strict=True))
                if not joined.isascii() and _UNDECODABLE.search(joined):
                    yield self._undecodable_row(start, fields, origin)
                    continue
                if not joined.strip() and not "".join(record).strip():
                    continue  # a spreadsheet's trailing empty row
                yield SourceRow(start, fields, hash_values(values), None, None, origin)
        except csv.Error:
            file.line_num = line_num  # the last line of the last record read
            raise

    def _check_quotes(self, file: _File, start: int) -> None:
        """Fail the file if the record just read (in `file.seen`) has an unbalanced quote."""
        lines = [line for line in file.seen if line]
        scan = scan_record(lines, start, delimiter=self._delimiter, width=len(file.header), cap=0)
        if scan.problem is not None:
            raise self._unbalanced(file.path, scan.problem)

    def _unbalanced(self, path: str, problem: str) -> SourceError:
        return SourceError(
            f"source {self._name}: {path}: unbalanced quote: {problem}; the rows after it "
            "cannot be read (fix the quote or export the file again)"
        )

    def _oversized_row(self, file: _File, error_line: int) -> SourceRow:
        """A row with a cell over the csv module's limit, re-read by hand: a problem row
        naming the field (or column), keyed by its providerId when that cell is usable."""
        limit = csv.field_size_limit()
        start = file.line_num + 1
        # The lines the csv module took for this record, then the rest of the record.
        lines = chain([line for line in file.seen if line], file.lines)
        scan = scan_record(
            lines, start, delimiter=self._delimiter, width=len(file.header), cap=limit
        )
        file.seen.clear()
        if scan.problem is not None:
            raise self._unbalanced(file.path, scan.problem)
        file.line_num = start + scan.lines - 1
        file.hand_read = file.line_num - error_line
        by_column = {index: name for name, index in file.indices.items()}
        column = next((i for i, size in enumerate(scan.lengths) if size > limit), -1)
        field = by_column.get(column)
        if field is not None:
            where = field
        elif 0 <= column < len(file.header):
            where = f"column {file.header[column].strip()!r}"
        else:
            where = f"cell {column + 1}" if column >= 0 else "a cell"
        fields: dict[str, str | None] = {}
        if len(scan.cells) == len(file.header):
            fields = {
                name: None if scan.lengths[i] > limit else (scan.cells[i].strip() or None)
                for name, i in file.indices.items()
            }
        return SourceRow(
            start,
            fields,
            sha256_hex(canonical_json([scan.cells, scan.lengths])),
            f"{where}: longer than {limit} characters (the CSV field size limit)",
            field,
            file.path,
        )

    def _undecodable_row(self, line: int, fields: dict[str, str | None], origin: str) -> SourceRow:
        """A row with bytes the encoding cannot decode: a problem naming the first such field."""
        field = next(f for f, v in fields.items() if v is not None and _UNDECODABLE.search(v))
        return SourceRow(
            line,
            {f: _replace_undecodable(v) for f, v in fields.items()},
            row_hash(fields),
            f"{field}: bytes that are not valid {self._encoding}",
            field,
            origin,
        )


class _File:
    """One file being read: its header and mapping, its lines, and where the reading is."""

    __slots__ = ("hand_read", "header", "indices", "line_num", "lines", "path", "seen")

    def __init__(
        self,
        path: str,
        header: list[str],
        indices: dict[str, int],
        lines: Iterator[str],
        seen: list[str],
    ) -> None:
        self.path = path
        self.header = header
        self.indices = indices
        self.lines = lines  # the file's lines, as the csv reader takes them
        self.seen = seen  # the lines of the record being read (see `_tap`)
        self.line_num = 1  # the last line of the last record read (set at a csv.Error)
        # Lines read by hand past an oversized cell, which the csv reader did not count.
        self.hand_read = 0
