"""The FHIR Bulk Data export source: NDJSON files read line by line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from syncd.exceptions import SourceError
from syncd.sources.fhir_bulk import BulkNdjsonSource
from tests.fhir_examples import SYSTEM, examples, synthetic


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def test_directory_export_reads_patients_skips_other_types_and_is_complete(
    tmp_path: Path,
) -> None:
    """Every *.ndjson in the directory, sorted; other resource types skipped; complete."""
    _write(tmp_path / "Patient.000.ndjson", [json.dumps(r) for r in examples()])
    _write(tmp_path / "Patient.001.ndjson", ["", json.dumps(synthetic(7))])
    _write(tmp_path / "Observation.000.ndjson", ['{"resourceType": "Observation", "id": "o"}'])
    (tmp_path / "manifest.json").write_text("{}", encoding="utf-8")
    read = BulkNdjsonSource("bulk", tmp_path, identifier_system=SYSTEM).rows()
    rows = list(read)
    assert [(Path(r.origin or "").name, r.line) for r in rows] == [
        *(("Patient.000.ndjson", n) for n in range(1, 7)),
        ("Patient.001.ndjson", 2),
    ]
    assert read.complete is True
    assert [r.fields["providerId"] for r in rows if r.problem is None][-1] == "MRN-7"


def test_bad_lines_are_problem_rows_naming_the_line_never_the_content(tmp_path: Path) -> None:
    """Not JSON, not UTF-8, not a valid Patient: one problem row each, reading goes on."""
    path = tmp_path / "Patient.ndjson"
    path.write_bytes(
        b'{"resourceType": "Patient", "id": "x", "birthDate": "secret-1974"}\n'
        b"{not json Chalmers\n"
        b'{"resourceType": "Patient", "name": [{"family": "Caf\xe9"}]}\n'
        + json.dumps(synthetic(1)).encode()
        + b"\n"
    )
    rows = list(BulkNdjsonSource("bulk", path, identifier_system=SYSTEM).rows())
    problems = [(r.line, r.problem_field, r.problem) for r in rows]
    assert problems[0][:2] == (1, "Patient.birthDate")
    assert problems[1] == (2, None, "not a JSON resource (or not UTF-8)")
    assert problems[2][0] == 3
    assert problems[2][2] is not None
    assert problems[3] == (4, None, None)
    assert not any("secret" in (p or "") or "Chalmers" in (p or "") for _, _, p in problems)


def test_since_export_is_incremental(tmp_path: Path) -> None:
    """An export made with _since is never a complete read."""
    _write(tmp_path / "Patient.ndjson", [json.dumps(synthetic(1))])
    read = BulkNdjsonSource(
        "bulk", tmp_path / "*.ndjson", identifier_system=SYSTEM, since_export=True
    ).rows()
    assert len(list(read)) == 1
    assert (read.complete, read.incremental) == (False, True)


def test_no_files_is_a_source_error(tmp_path: Path) -> None:
    """An empty directory fails the read, naming the pattern."""
    with pytest.raises(SourceError, match=r"no NDJSON file matches"):
        list(BulkNdjsonSource("bulk", tmp_path, identifier_system=SYSTEM).rows())
