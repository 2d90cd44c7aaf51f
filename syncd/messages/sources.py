"""SMS requests from a configured source (`[[messages.sources]]`), e.g. appointment reminders.

Each row of a CSV file or SQL query becomes one template SMS request with the key
`<source name>:<key column value>`, so reading the same source again (every run) never makes
a second request for a row: the request recorded first stands, whatever became of it.
Rows are streamed, checked by `plan_row` (pure) and recorded a batch per transaction.
A row failing a check is reported with its line (CSV: the physical line, header = 1; SQL:
the row ordinal) and the column at fault, never its value, and nothing is sent for it.
A row whose `send_at_column` lies in the future is left for a later run.

The source's template is checked against the content mirror once, before any row is read:
an unknown template fails the whole source with `MessageRequestError` naming it.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Any, Final

import structlog
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from syncd.config import CsvMessageSource, MessageSource, SqlMessageSource
from syncd.exceptions import MessageRequestError, SourceError, StateError
from syncd.messages.requests import (
    KEY_MAX,
    ORIGIN_MAX,
    PROVIDER_ID_MAX,
    RequestBody,
    body_of,
    insert_ignoring_existing,
    new_row,
    template_problem,
)
from syncd.messages.states import refresh_metrics
from syncd.normalize import provider_id_key, provider_id_problem, trim
from syncd.sources.sql import _READ_ONLY, as_text
from syncd.state.db import session_factory
from syncd.state.models import MessageRequest

log = structlog.get_logger(__name__)

JOB_NAME: Final = "message_sources"
BATCH_SIZE: Final = 500
# Problems kept in the result and logged one by one; the rest are only counted.
PROBLEMS_KEPT: Final = 100
_UNDECODABLE: Final = re.compile("[\udc80-\udcff]")


@dataclass(frozen=True, slots=True)
class MessageRow:
    """One raw row: where it is, and the values of the configured columns (None if empty).
    `send_at` is text from a CSV, or whatever the database driver returns (a datetime)."""

    line: int
    key: str | None
    provider_id: str | None
    send_at: Any = None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class RowProblem:
    """Why a row made no request: its line, the column at fault (None: the whole row)."""

    source: str
    line: int
    column: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Accepted:
    """A row that makes the request `key` for patient `provider_id`."""

    line: int
    key: str
    provider_id: str


@dataclass(frozen=True, slots=True)
class Deferred:
    """A row whose send time has not come yet."""

    line: int


@dataclass(slots=True)
class SourceImport:
    """What reading one source did. `existing`: rows whose request was recorded before."""

    source: str
    rows: int = 0
    created: int = 0
    existing: int = 0
    deferred: int = 0
    rejected: int = 0
    problems: list[RowProblem] = field(default_factory=list)

    def reject(self, problem: RowProblem) -> None:
        """Count and report a rejected row (its value is never logged)."""
        self.rejected += 1
        if len(self.problems) < PROBLEMS_KEPT:
            self.problems.append(problem)
            log.warning(
                "messages.source_row_rejected",
                source=problem.source,
                line=problem.line,
                column=problem.column,
                reason=problem.reason,
            )


def request_key(source_name: str, key_value: str) -> str:
    """The request key of a source row: `<source name>:<key column value>`."""
    return f"{source_name}:{key_value}"


def origin_of(source_name: str) -> str:
    """The `origin` recorded for requests of a source."""
    return f"source:{source_name}"[:ORIGIN_MAX]


def parse_send_at(value: Any) -> datetime:
    """A send time as an aware datetime: a datetime, or ISO 8601 text. Without an offset it
    is the host's local time (what an EHR export usually means). ValueError otherwise."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        moment = datetime.fromisoformat(value.strip())
    else:
        raise ValueError("not a timestamp")
    return moment.astimezone() if moment.tzinfo is None else moment


def plan_row(
    row: MessageRow, source: MessageSource, now: datetime
) -> Accepted | Deferred | RowProblem:
    """What one row makes: a request, nothing yet, or a problem naming the column. Pure."""

    def problem(column: str | None, reason: str) -> RowProblem:
        return RowProblem(source.name, row.line, column, reason)

    if row.problem is not None:
        return problem(None, row.problem)
    key_room = KEY_MAX - len(source.name) - 1
    if row.key is None:
        return problem(source.key_column, "is empty")
    if len(row.key) > key_room:
        return problem(source.key_column, f"is longer than {key_room} characters")
    # Keyed exactly as the patient source keys its rows (normalize.provider_id_key): an id
    # exported with an invisible character at its end still names the same patient.
    provider_id = provider_id_key(row.provider_id)
    if row.provider_id is None or not trim(row.provider_id):
        return problem(source.provider_id_column, "is empty")
    if len(trim(row.provider_id)) > PROVIDER_ID_MAX:
        return problem(source.provider_id_column, f"is longer than {PROVIDER_ID_MAX} characters")
    for column, value in (
        (source.key_column, row.key),
        (source.provider_id_column, row.provider_id),
    ):
        if _UNDECODABLE.search(value):
            return problem(column, "holds bytes that are not valid text in the file's encoding")
    if provider_id is None:
        return problem(source.provider_id_column, str(provider_id_problem(row.provider_id)))
    if source.send_at_column is not None and row.send_at is not None:
        try:
            send_at = parse_send_at(row.send_at)
        except (ValueError, TypeError):
            return problem(source.send_at_column, "is not an ISO 8601 date and time")
        if send_at > now:
            return Deferred(row.line)
    return Accepted(row.line, request_key(source.name, row.key), provider_id)


# --- reading ------------------------------------------------------------------------------


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    text_value = str(value).strip()
    return text_value or None


def _columns(source: MessageSource) -> list[str]:
    wanted = [source.key_column, source.provider_id_column]
    if source.send_at_column is not None:
        wanted.append(source.send_at_column)
    return wanted


def _indices(source: MessageSource, header: Sequence[str], where: str) -> list[int | None]:
    """Position of each configured column in `header` (case-insensitive); SourceError names
    the missing or doubled columns (configuration, never data)."""
    positions: dict[str, list[int]] = {}
    for index, cell in enumerate(header):
        positions.setdefault(str(cell).strip().casefold(), []).append(index)
    found: list[int | None] = []
    missing, doubled = [], []
    for column in _columns(source):
        hits = positions.get(column.strip().casefold(), [])
        if not hits:
            missing.append(column)
        elif len(hits) > 1:
            doubled.append(column)
        found.append(hits[0] if hits else None)
    if missing or doubled:
        parts = []
        if missing:
            parts.append(f"missing column(s) {', '.join(map(repr, missing))}")
        if doubled:
            parts.append(f"column(s) appearing twice {', '.join(map(repr, doubled))}")
        raise SourceError(f"message source {source.name}: {where} has {'; '.join(parts)}")
    found.extend([None] * (3 - len(found)))
    return found


def _row(line: int, values: Sequence[Any], indices: list[int | None]) -> MessageRow:
    key_at, provider_at, send_at_index = indices
    assert key_at is not None
    assert provider_at is not None
    send_at = None if send_at_index is None else values[send_at_index]
    if isinstance(send_at, str):
        send_at = _clean(send_at)
    return MessageRow(line, _clean(values[key_at]), _clean(values[provider_at]), send_at)


def read_csv(source: CsvMessageSource) -> Iterator[MessageRow]:
    """Stream the rows of a CSV message source; `line` is the physical line a row starts on."""
    try:
        codecs.lookup(source.encoding)
        handle = open(  # noqa: SIM115 - closed by the `with` below
            source.path, encoding=source.encoding, errors="surrogateescape", newline=""
        )
    except (OSError, LookupError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise SourceError(
            f"message source {source.name}: cannot open {source.path} ({reason})"
        ) from None
    with handle:
        reader = csv.reader(handle, delimiter=source.delimiter)
        try:
            header = next(reader, None)
            if header is None:
                raise SourceError(f"message source {source.name}: {source.path} is empty")
            indices = _indices(source, header, source.path)
            line = reader.line_num
            for record in reader:
                start, line = line + 1, reader.line_num
                if not "".join(record).strip():
                    continue  # a blank line or a spreadsheet's empty trailing row
                if len(record) != len(header):
                    problem = f"row has {len(record)} columns, the header has {len(header)}"
                    yield MessageRow(start, None, None, None, problem)
                    continue
                yield _row(start, record, indices)
        except csv.Error as exc:
            raise SourceError(
                f"message source {source.name}: unreadable CSV at line {reader.line_num} ({exc})"
            ) from None
        except OSError as exc:
            raise SourceError(
                f"message source {source.name}: read failed near line {reader.line_num} "
                f"({exc.strerror or type(exc).__name__})"
            ) from None


def read_sql(source: SqlMessageSource) -> Iterator[MessageRow]:
    """Stream the rows of a SQL message source (server-side cursor, read-only transaction,
    always rolled back, as `syncd.sources.sql` does); `line` is the row's ordinal, from 1."""
    try:
        engine = create_engine(source.url, poolclass=NullPool, hide_parameters=True)
    except (SQLAlchemyError, ImportError) as exc:
        raise SourceError(
            f"message source {source.name}: cannot open the database ({type(exc).__name__})"
        ) from None
    try:
        with engine.connect() as conn:
            read_only = _READ_ONLY.get(conn.dialect.name)
            if read_only is not None:
                conn.exec_driver_sql(read_only)
            result = conn.execution_options(yield_per=BATCH_SIZE).execute(text(source.query))
            try:
                indices = _indices(source, list(result.keys()), "the query's result")
                for ordinal, values in enumerate(result, start=1):
                    yield _sql_row(ordinal, tuple(values), indices)
            finally:
                result.close()
                conn.rollback()
    except SQLAlchemyError as exc:
        raise SourceError(
            f"message source {source.name}: the query failed ({type(exc).__name__})"
        ) from None
    finally:
        engine.dispose()


def _sql_row(line: int, values: Sequence[Any], indices: list[int | None]) -> MessageRow:
    """A database row: ids as text (numbers and dates as a CSV would hold them)."""
    try:
        texts = [None if i is None else as_text(values[i]) for i in indices[:2]]
    except Exception:  # a binary value that is not UTF-8 (`as_text` refuses it)
        return MessageRow(line, None, None, None, "holds a binary value that is not text")
    send_at = None if indices[2] is None else values[indices[2]]
    if isinstance(send_at, str):
        send_at = _clean(send_at)
    return MessageRow(line, texts[0], texts[1], send_at)


def read_rows(source: MessageSource) -> Iterator[MessageRow]:
    """Stream the rows of any configured message source."""
    if isinstance(source, CsvMessageSource):
        return read_csv(source)
    return read_sql(source)


# --- recording ----------------------------------------------------------------------------


def import_source(
    engine: Engine,
    source: MessageSource,
    *,
    provider: str,
    now: datetime | None = None,
) -> SourceImport:
    """Read `source` once and record a pending request for each new valid row (blocking).

    `provider` is the patients' source-system name the requests address. Raises
    `MessageRequestError` when the source's template is not in the content mirror,
    `SourceError` when the source cannot be read, `StateError` when the database fails.
    """
    moment = now or datetime.now(UTC)
    result = SourceImport(source.name)
    sessions = session_factory(engine)
    try:
        with sessions() as session:
            reason = template_problem(session, source.template_id)
        if reason is not None:
            raise MessageRequestError(f"message source {source.name}: {reason}")
        rows = read_rows(source)
        while batch := list(islice(rows, BATCH_SIZE)):
            result.rows += len(batch)
            accepted: dict[str, Accepted] = {}
            for row in batch:
                planned = plan_row(row, source, moment)
                if isinstance(planned, RowProblem):
                    result.reject(planned)
                elif isinstance(planned, Deferred):
                    result.deferred += 1
                elif planned.key in accepted:
                    _same_key_twice(result, source, planned, accepted[planned.key])
                else:
                    accepted[planned.key] = planned
            _record_batch(sessions, source, provider, accepted, result)
    except SQLAlchemyError as exc:
        raise StateError(
            f"message source {source.name}: the state database failed ({type(exc).__name__})"
        ) from exc
    log.info(
        "messages.source_read",
        source=source.name,
        rows=result.rows,
        created=result.created,
        existing=result.existing,
        deferred=result.deferred,
        rejected=result.rejected,
    )
    return result


def _same_key_twice(
    result: SourceImport, source: MessageSource, row: Accepted, first: Accepted
) -> None:
    if row.provider_id == first.provider_id:
        result.existing += 1
    else:
        result.reject(
            RowProblem(
                source.name,
                row.line,
                source.key_column,
                f"repeats the key of line {first.line} for another patient",
            )
        )


def _record_batch(
    sessions: Any,
    source: MessageSource,
    provider: str,
    accepted: dict[str, Accepted],
    result: SourceImport,
) -> None:
    """One transaction: insert the batch's new requests; a key recorded before with another
    body is a problem of its row, not a second request."""
    if not accepted:
        return
    with sessions.begin() as session:
        stored = {
            request.key: request
            for request in session.scalars(
                select(MessageRequest).where(MessageRequest.key.in_(list(accepted)))
            )
        }
        fresh = []
        for key, row in accepted.items():
            body = RequestBody(provider, row.provider_id, None, source.template_id)
            before = stored.get(key)
            if before is None:
                fresh.append(new_row(key, body, origin_of(source.name), datetime.now(UTC)))
            elif body_of(before) == body:
                result.existing += 1
            else:
                result.reject(
                    RowProblem(
                        source.name,
                        row.line,
                        source.key_column,
                        "its key is already used by a request with another patient or template",
                    )
                )
        insert_ignoring_existing(session, fresh)
        result.created += len(fresh)


class MessageSourcesJob:
    """The `message_sources` job: read every configured message source once.

    A source that fails (unreadable, unknown template) is logged and counted, and the others
    are still read; the run fails at the end when any source failed.
    """

    name = JOB_NAME

    def __init__(self, engine: Engine, sources: Sequence[MessageSource], *, provider: str) -> None:
        self._engine = engine
        self._sources = list(sources)
        self._provider = provider

    async def run(self, run_id: int | None) -> dict[str, int]:
        """Import each source in a worker thread; the summed counters."""
        totals = {"rows": 0, "created": 0, "existing": 0, "deferred": 0, "rejected": 0}
        totals["sources_failed"] = 0
        first_error: Exception | None = None
        for source in self._sources:
            try:
                done = await asyncio.to_thread(
                    import_source, self._engine, source, provider=self._provider
                )
            except (SourceError, MessageRequestError, StateError) as exc:
                totals["sources_failed"] += 1
                log.error("messages.source_failed", source=source.name, error=str(exc))
                first_error = first_error or exc
                continue
            for name in ("rows", "created", "existing", "deferred", "rejected"):
                totals[name] += getattr(done, name)
        try:
            await asyncio.to_thread(refresh_metrics, self._engine)
        except StateError:
            log.warning("messages.metrics_refresh_failed")
        if first_error is not None:
            raise first_error
        return totals
