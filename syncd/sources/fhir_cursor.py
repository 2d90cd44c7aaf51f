"""Where a FHIR search source stands, and what its next read asks for.

The pure part (`plan_read`, `next_cursor`) applies the form-submission poller's lessons
(`syncd.submissions.window`) to `_lastUpdated`:

* the position is on the *server's* clock (the first page's `Bundle.meta.lastUpdated`, or
  its `Date` header), never ours, taken when the read *began*: whatever changed after that
  is asked for again next time;
* the next read asks for `_lastUpdated=ge(position - overlap)`, an inclusive bound floored
  to the millisecond, so ties on the boundary and a sub-millisecond tail are read again
  rather than lost, and a change the server stamped before the position but made visible
  after it (a slow transaction) is still found within the overlap. There is no upper
  bound, so nothing can fall past the end of a read;
* what is read twice costs a hash comparison, not a push.

A *full* read (no `_lastUpdated`) happens when there is no cursor (the first read, or a new
base URL) and whenever the last full read is `full_read_every` old on the server's clock;
only a full read that reached the last page is `complete` (and so may mark patients that
disappeared as inactive).

`CursorStore` keeps the cursor in the state database (`source_cursors`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from syncd.exceptions import StateError
from syncd.state.models import SourceCursor
from syncd.submissions.window import floor_ms


@dataclass(frozen=True, slots=True)
class Cursor:
    """The server's clock when the last fully pushed read began, and its last full read."""

    position: datetime
    full_read_at: datetime | None


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """What one read asks for: everything (`since` None, `full`) or `_lastUpdated >= since`."""

    since: datetime | None

    @property
    def full(self) -> bool:
        return self.since is None


def plan_read(
    cursor: Cursor | None, *, overlap: timedelta, full_read_every: timedelta | None
) -> ReadPlan:
    """The next read (see the module docstring); `full_read_every` None: never again."""
    if cursor is None:
        return ReadPlan(None)
    if full_read_every is not None and (
        cursor.full_read_at is None or cursor.position - cursor.full_read_at >= full_read_every
    ):
        return ReadPlan(None)
    return ReadPlan(floor_ms(cursor.position - overlap))


def next_cursor(previous: Cursor | None, plan: ReadPlan, began: datetime | None) -> Cursor | None:
    """The cursor after a read that began at `began` (server clock) was fully pushed.

    Without a server clock (no `Bundle.meta.lastUpdated`, no `Date` header) the cursor
    stays where it was: the next read asks for the same range again.
    """
    if began is None:
        return previous
    full_read_at = began if plan.full else (previous.full_read_at if previous else None)
    return Cursor(began, full_read_at)


def format_instant(moment: datetime) -> str:
    """A FHIR `instant` in UTC with milliseconds (`2026-12-04T10:00:00.123Z`)."""
    utc = floor_ms(moment).astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


class CursorStore:
    """Load and save one source's cursor in the state database."""

    def __init__(self, engine: Engine, source: str, endpoint: str) -> None:
        self._engine = engine
        self._source = source
        self._endpoint = endpoint

    def load(self) -> Cursor | None:
        """The saved cursor, or None (never saved, or saved for another endpoint)."""
        try:
            with self._engine.connect() as conn:
                row = conn.execute(
                    select(SourceCursor).where(SourceCursor.source == self._source)
                ).first()
        except SQLAlchemyError as exc:
            raise StateError(
                f"source {self._source}: cannot read its cursor ({type(exc).__name__})"
            ) from None
        if row is None or row.endpoint != self._endpoint:
            return None
        return Cursor(row.position, row.full_read_at)

    def save(self, cursor: Cursor) -> None:
        """Save the cursor (one transaction)."""
        try:
            with self._engine.begin() as conn:
                values = {
                    "endpoint": self._endpoint,
                    "position": cursor.position,
                    "full_read_at": cursor.full_read_at,
                    "updated_at": datetime.now(UTC),
                }
                updated = conn.execute(
                    update(SourceCursor).where(SourceCursor.source == self._source).values(**values)
                )
                if updated.rowcount == 0:
                    conn.execute(insert(SourceCursor).values(source=self._source, **values))
        except SQLAlchemyError as exc:
            raise StateError(
                f"source {self._source}: cannot save its cursor ({type(exc).__name__})"
            ) from None
