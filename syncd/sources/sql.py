"""Patient rows from any database SQLAlchemy can reach, by a configured SELECT.

The query runs with a server-side cursor (`yield_per`), so rows stream in chunks and memory
stays flat however large the EHR table is. The source never writes: the transaction is
made read-only where the database supports it (PostgreSQL, MySQL/MariaDB, SQLite) and is
always rolled back. Database errors are translated to `SourceError` carrying the error
class and SQLSTATE only: driver messages can quote parameters and row values. The read is
`complete` once the cursor is exhausted, and not before.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, Final

from sqlalchemy import Executable, create_engine, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from syncd.exceptions import ConfigError, SourceError
from syncd.hashing import row_hash
from syncd.sources import REQUIRED_SOURCE_FIELDS, SOURCE_FIELDS
from syncd.sources.base import SourceRead, SourceRow

# Per dialect, the statement that makes the coming transaction read-only.
_READ_ONLY: Final[dict[str, str]] = {
    "postgresql": "SET TRANSACTION READ ONLY",
    "mysql": "SET TRANSACTION READ ONLY",
    "mariadb": "SET TRANSACTION READ ONLY",
    "sqlite": "PRAGMA query_only = ON",
}


class _NotText(Exception):
    """Internal: a binary value that is not UTF-8."""


def as_text(value: Any) -> str | None:
    """A database value as the text a CSV would hold: dates ISO, NULL and blanks None."""
    if value is None:
        return None
    if isinstance(value, str):
        result = value
    elif isinstance(value, datetime | date | time):
        result = value.isoformat()
    elif isinstance(value, bool):
        result = "true" if value else "false"
    elif isinstance(value, Decimal):
        result = format(value, "f")  # 123, not 1.23E+2
    elif isinstance(value, bytes | bytearray | memoryview):
        try:
            result = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise _NotText from None
    else:
        result = str(value)
    return result.strip() or None


class SqlSource:
    """A `Source` streaming the result of one SELECT.

    `columns` maps contract field names to result column names, matched case-insensitively
    (PostgreSQL folds unquoted aliases to lower case); without it, result columns named
    like contract fields (`providerId`, `firstName`, ...) are used. `SourceRow.line` is the
    row's 1-based ordinal in the result. A `str` query is SQL text, where `:name` would be a
    bind parameter (write `\\:` for a literal colon).
    """

    def __init__(
        self,
        name: str,
        url: str | URL,
        query: str | Executable,
        *,
        columns: Mapping[str, str] | None = None,
        chunk_size: int = 1000,
    ) -> None:
        problems: list[str] = []
        try:
            self._url = make_url(url)
        except ArgumentError:
            # The URL text is not echoed: it may hold a password.
            problems.append(f"sources.{name}.url: not a valid SQLAlchemy URL")
        if columns is not None:
            problems += [
                f"sources.{name}.columns: unknown field {field!r}"
                for field in columns
                if field not in SOURCE_FIELDS
            ]
            problems += [
                f"sources.{name}.columns: required field {field!r} is not mapped"
                for field in REQUIRED_SOURCE_FIELDS
                if not (columns.get(field) or "").strip()
            ]
        if chunk_size < 1:
            problems.append(f"sources.{name}.chunk_size: must be at least 1")
        if problems:
            raise ConfigError(problems)
        self._name = name
        self._query = text(query) if isinstance(query, str) else query
        self._columns = (
            {field: column.strip() for field, column in columns.items()}
            if columns is not None
            else None
        )
        self._chunk_size = chunk_size

    @property
    def name(self) -> str:
        """The source's configured name."""
        return self._name

    def __repr__(self) -> str:
        url = self._url.render_as_string(hide_password=True)
        return f"SqlSource(name={self._name!r}, url={url!r})"

    def rows(self) -> SourceRead:
        """Run the query and read its rows, streaming; `SourceError` if it cannot be read."""
        read = SourceRead()
        return read.of(self._rows(read))

    def _rows(self, read: SourceRead) -> Iterator[SourceRow]:
        try:
            engine = create_engine(self._url, poolclass=NullPool)
        except ImportError as exc:
            raise SourceError(
                f"source {self._name}: database driver not installed ({exc.name or exc})"
            ) from None
        except SQLAlchemyError as exc:
            raise self._error(exc) from None
        try:
            with engine.connect() as conn:
                yield from self._read(conn, read)
        except SQLAlchemyError as exc:
            raise self._error(exc) from None
        finally:
            engine.dispose()

    def _read(self, conn: Connection, read: SourceRead) -> Iterator[SourceRow]:
        read_only = _READ_ONLY.get(conn.dialect.name)
        if read_only is not None:
            conn.exec_driver_sql(read_only)
        result = conn.execution_options(yield_per=self._chunk_size).execute(self._query)
        try:
            indices = self._column_indices(list(result.keys()))
            names = tuple(indices)
            positions = tuple(indices.values())
            for ordinal, record in enumerate(result, start=1):
                try:
                    values = [as_text(record[i]) for i in positions]
                except _NotText:
                    yield self._binary_row(ordinal, names, positions, record)
                    continue
                fields = dict(zip(names, values, strict=True))
                yield SourceRow(ordinal, fields, row_hash(fields))
        finally:
            # The server-side cursor is closed before the transaction ends; nothing is
            # ever committed.
            result.close()
            conn.rollback()
        read.complete = True  # the cursor was exhausted (and closed without an error)

    def _column_indices(self, keys: Sequence[str]) -> dict[str, int]:
        """Contract field -> result column index, or `SourceError` naming what is missing."""
        positions: dict[str, list[int]] = {}
        for index, key in enumerate(keys):
            positions.setdefault(key.casefold(), []).append(index)
        wanted = self._columns or {field: field for field in SOURCE_FIELDS}
        indices: dict[str, int] = {}
        missing: list[str] = []
        ambiguous: list[str] = []
        for field, column in wanted.items():
            found = positions.get(column.casefold(), [])
            if len(found) > 1:
                ambiguous.append(column)
            elif found:
                indices[field] = found[0]
            elif self._columns is not None or field in REQUIRED_SOURCE_FIELDS:
                missing.append(column)
        if missing or ambiguous:
            parts = []
            if missing:
                parts.append(f"missing column(s) {', '.join(map(repr, missing))}")
            if ambiguous:
                parts.append(f"column(s) appearing twice {', '.join(map(repr, ambiguous))}")
            raise SourceError(f"source {self._name}: query result has {'; '.join(parts)}")
        return indices

    def _binary_row(
        self, ordinal: int, names: tuple[str, ...], positions: tuple[int, ...], record: Any
    ) -> SourceRow:
        """A row with a binary value that is not UTF-8: a problem naming that field."""
        fields: dict[str, str | None] = {}
        hashed: dict[str, str | None] = {}  # the raw bytes, as hex, decide "unchanged"
        bad = ""
        for name, position in zip(names, positions, strict=True):
            value = record[position]
            try:
                fields[name] = hashed[name] = as_text(value)
            except _NotText:
                bad = bad or name
                fields[name] = bytes(value).decode("utf-8", "replace").strip() or None
                hashed[name] = "bytes:" + bytes(value).hex()
        return SourceRow(
            ordinal, fields, row_hash(hashed), f"{bad}: bytes that are not valid UTF-8", bad
        )

    def _error(self, exc: SQLAlchemyError) -> SourceError:
        """A SourceError naming the error class and SQLSTATE, never the driver's message."""
        detail = type(exc).__name__
        if isinstance(exc, DBAPIError) and exc.orig is not None:
            orig = exc.orig
            detail = type(orig).__name__
            code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
            if code is None and orig.args and isinstance(orig.args[0], int):
                code = orig.args[0]  # MySQL/MariaDB error number
            if code is not None:
                detail += f", code {code}"
        return SourceError(f"source {self._name}: database error ({detail})")
