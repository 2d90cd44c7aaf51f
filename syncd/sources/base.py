"""The port every patient source implements.

A source streams rows one at a time (memory flat in the number of rows). It maps its own
columns onto the contract's field names (`providerId`, `firstName`, ...) but does not
validate or normalise values: that is `syncd.normalize`, pure and shared by every source.

A read says whether it reached the end of the source (`SourceRead.complete`): only then may
the push job treat a patient it did not read as gone (`missing_rows = "mark_inactive"`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class SourceRow:
    """One raw row from a source, already mapped to contract field names."""

    # Where the row is: the CSV line number (header = line 1) or the SQL row ordinal.
    line: int
    # Contract field name -> raw text as read (None where the column is empty or NULL).
    # Patient data: kept out of the repr.
    fields: Mapping[str, str | None] = field(repr=False)
    # sha256 hex of the raw mapped values; equal hashes mean an unchanged row.
    raw_hash: str
    # A structural problem that makes the row unusable (e.g. wrong column count); the
    # row is quarantined with this reason. Never contains a field's value.
    problem: str | None = None
    # The field `problem` is about, when it is about one.
    problem_field: str | None = None
    # Which part of the source the row came from when there are several (the CSV file
    # name of a glob); `line` counts within it.
    origin: str | None = None
    # Whether the source says the patient is active (FHIR `Patient.active`); a source
    # without such a flag leaves True. An inactive row is inactive in the mirror.
    active: bool = True


class SourceRead(Iterator[SourceRow]):
    """One read of a source: iterate it for the rows; `complete` says whether it got to the end.

    `complete` turns True only when the source itself saw the clean end of its data (every
    CSV file read to its end of file with no quote left open, the SQL cursor exhausted). A
    read that stopped early, was closed, raised, or came from a source that never says, stays
    False: nothing may then be concluded from a patient's absence.

    Iterating the read hands out the source's own generator, so the per-row cost is that of
    the generator alone.
    """

    __slots__ = ("_rows", "complete", "incremental", "on_pushed")

    def __init__(self) -> None:
        self.complete = False
        # True for a read that asks only for what changed since the last one (a FHIR
        # `_lastUpdated` search): it is never complete, and that is not a warning.
        self.incremental = False
        # Called by the push job (in its worker thread) once every row of the read was
        # pushed or recorded: the run read to the end (`complete`, or an incremental read
        # exhausted), no push failed and it was not a dry run. A source that keeps a cursor
        # saves it here, so that a cursor never gets ahead of the rows it covers.
        self.on_pushed: Callable[[], None] | None = None
        self._rows: Iterator[SourceRow] = iter(())

    def of(self, rows: Iterator[SourceRow]) -> SourceRead:
        """Attach the source's row generator (which sets `complete` at its clean end)."""
        self._rows = rows
        return self

    def __iter__(self) -> Iterator[SourceRow]:
        return self._rows

    def __next__(self) -> SourceRow:
        return next(self._rows)

    def close(self) -> None:
        """Stop reading early (closes the file or cursor); the read stays incomplete."""
        close = getattr(self._rows, "close", None)
        if close is not None:
            close()


class Source(Protocol):
    """A stream of patient rows from the EHR/CRM."""

    @property
    def name(self) -> str:
        """The source's configured name, used in quarantine and logs."""
        ...

    def rows(self) -> SourceRead:
        """Start a read of every row, streaming. Raises `SourceError` (when iterated) if the
        source cannot be read; sets `complete` on the read at its clean end."""
        ...
