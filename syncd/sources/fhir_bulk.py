"""Patients from a FHIR Bulk Data export: the `$export` operation's NDJSON output files.

The source reads a directory (every `*.ndjson` in it) or a glob, in sorted path order, one
line at a time: memory stays flat however large the export is. Each line is one resource;
`Patient` resources are mapped by `fhir_mapping` (validated with `fhir.resources`), lines of
other types are skipped (an export directory holds one file per type), and a line that is
not JSON, or a Patient that does not validate, becomes a row with a `problem` (line and
file named, never the content). `SourceRow.line` is the line in its file, `origin` the file.

A whole-system or group `$export` without `_since` is every patient, so the read is
`complete` once every file was read to its end (and `missing_rows = "mark_inactive"` may
act on it). An export made with `_since` holds only what changed: configure
`since_export = true` and the read is never complete.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from typing import Final

import structlog

from syncd.exceptions import SourceError
from syncd.hashing import row_hash
from syncd.sources.base import SourceRead, SourceRow
from syncd.sources.fhir_mapping import map_patient, patient_validator

log = structlog.get_logger(__name__)

_NDJSON_GLOB: Final = "*.ndjson"


class BulkNdjsonSource:
    """A `Source` reading a Bulk Data export's NDJSON files (see the module docstring)."""

    def __init__(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        identifier_system: str,
        since_export: bool = False,
        validate: bool = True,
    ) -> None:
        self._name = name
        self._path = os.fspath(path)
        self._system = identifier_system
        self._since_export = since_export
        self._validate = validate

    @property
    def name(self) -> str:
        """The source's configured name."""
        return self._name

    def __repr__(self) -> str:
        return f"BulkNdjsonSource(name={self._name!r}, path={self._path!r})"

    def files(self) -> list[str]:
        """The NDJSON files this source reads now, in the order it reads them."""
        pattern = (
            os.path.join(self._path, _NDJSON_GLOB) if os.path.isdir(self._path) else self._path
        )
        paths = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
        if not paths:
            raise SourceError(f"source {self._name}: no NDJSON file matches {pattern!r}")
        return paths

    def rows(self) -> SourceRead:
        """Start a read of every file, streaming."""
        read = SourceRead()
        read.incremental = self._since_export
        return read.of(self._rows(read))

    def _rows(self, read: SourceRead) -> Iterator[SourceRow]:
        validator = patient_validator() if self._validate else None
        patients = skipped = problems = partial = 0
        for path in self.files():
            try:
                handle = open(path, encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
            except OSError as exc:
                why = exc.strerror or type(exc).__name__
                raise SourceError(f"source {self._name}: cannot open {path} ({why})") from None
            with handle:
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        resource = json.loads(line)
                    except ValueError:
                        problems += 1
                        yield _bad_line(number, path, line)
                        continue
                    if isinstance(resource, dict) and resource.get("resourceType") != "Patient":
                        skipped += 1
                        continue
                    mapped = map_patient(
                        resource if isinstance(resource, dict) else {},
                        identifier_system=self._system,
                        line=number,
                        origin=path,
                        invalid=validator,
                    )
                    patients += 1
                    problems += mapped.row.problem is not None
                    partial += mapped.partial_birth_date
                    yield mapped.row
        read.complete = not self._since_export
        log.info(
            "fhir.bulk_read_finished",
            source=self._name,
            patients=patients,
            other_resources_skipped=skipped,
            problems=problems,
            partial_birth_dates=partial,
        )


def _bad_line(number: int, path: str, line: str) -> SourceRow:
    """A line that is not JSON (or not UTF-8): a problem row, hashed on its bytes."""
    reason = "not a JSON resource (or not UTF-8)"
    return SourceRow(number, {}, row_hash({"line": line}), reason, None, path)
