"""The port every patient source implements.

A source streams rows one at a time (memory flat in the number of rows). It maps its own
columns onto the contract's field names (`providerId`, `firstName`, ...) but does not
validate or normalise values: that is `syncd.normalize`, pure and shared by every source.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
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


class Source(Protocol):
    """A stream of patient rows from the EHR/CRM."""

    @property
    def name(self) -> str:
        """The source's configured name, used in quarantine and logs."""
        ...

    def rows(self) -> Iterator[SourceRow]:
        """Yield every row, streaming. Raises `SourceError` if the source cannot be read."""
        ...
