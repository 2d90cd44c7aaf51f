"""`syncd demo` end to end: the real command in a subprocess, against its embedded sandbox."""

from __future__ import annotations

import csv
import re
import subprocess
from pathlib import Path

import pytest

from syncd.demo_data import BROKEN_ROWS
from tests.acceptance.conftest import clean_env, syncd_command

PATIENTS = 40


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One run of `syncd demo` (it takes a while: it lets simulated patients fill in forms)."""
    directory = tmp_path_factory.mktemp("demo") / "syncd-demo"
    result = subprocess.run(
        syncd_command("demo", "--dir", str(directory), "--patients", str(PATIENTS)),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    return result, directory


def _row(stdout: str, label: str) -> list[str]:
    """The cells of the table row starting with `label` (rich box drawing stripped)."""
    for line in stdout.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]
        if cells and cells[0] == label:
            return cells
    raise AssertionError(f"no row {label!r} in the demo's output")


def test_demo_exits_zero_with_every_job_ok(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """The demo succeeds, and every job it ran reports ok."""
    result, _ = demo
    assert result.returncode == 0, result.stderr[-2000:]
    job_lines = [
        line for line in result.stdout.splitlines() if line.startswith("  ") and " ok " in line
    ]
    assert len(job_lines) >= 9
    assert " failed" not in result.stdout
    assert "locked" not in result.stdout


def test_demo_summary_counts_patients(demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    """The patients table shows created/updated/unchanged/quarantined for both syncs."""
    result, _ = demo
    broken = len(BROKEN_ROWS)
    header = _row(result.stdout, "created")  # the header row has an empty first cell
    assert header == ["created", "updated", "unchanged", "quarantined"]
    first = _row(result.stdout, "first sync")
    assert first[1:] == [str(PATIENTS - broken), "0", "0", str(broken)]
    resync = _row(result.stdout, "re-sync")
    created, updated, unchanged, quarantined = (int(c) for c in resync[1:])
    # Overnight one broken birth date is fixed (a new patient) and a few mobiles change.
    assert created == 1
    assert updated >= 1
    assert quarantined == broken - 1
    assert created + updated + unchanged + quarantined == PATIENTS


def test_demo_lists_quarantined_rows_with_field_and_reason(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """Each row still broken at the end is listed by row key, field and a reason."""
    result, _ = demo
    out = result.stdout
    assert "quarantined rows" in out
    for field, reason in [
        ("lastName", "lastName: required"),
        ("email", "email: not a valid"),
        ("mobileNumber", "mobileNumber: not a valid"),
        ("dateOfBirth", "dateOfBirth: in the future"),
        ("providerId", "providerId: required"),
    ]:
        assert field in out
        assert reason in out
    assert re.search(r"EHR-0000\d\d", out)
    assert "line:" in out  # the row without an id is named by its line


def test_demo_says_how_many_broken_rows_it_shows(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """The counts the demo states match the quarantined rows it lists: 6 broken on purpose,
    one fixed overnight, 5 listed (it used to say 6 and show 5 without a word)."""
    result, _ = demo
    out = result.stdout
    broken = int(re.search(r"(\d+) broken on purpose\n", out).group(1))  # type: ignore[union-attr]
    assert broken == len(BROKEN_ROWS)
    stated = re.search(r"(\d+) row\(s\) still quarantined .*; (\d+) of the (\d+) broken", out)
    assert stated is not None, out[-3000:]
    still, fixed, of = (int(n) for n in stated.groups())
    assert (fixed, of) == (1, broken)
    listed = out.split("quarantined rows", 1)[1].split("outbox (", 1)[0]
    # A wrapped reason continues on a line whose first cell is empty.
    rows = [line for line in listed.splitlines() if re.match(r"│ \S", line)]
    assert still == len(rows) == broken - fixed


def test_demo_reports_outbox_events(demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    """The outbox table counts the events written, and the file sink received them."""
    result, directory = demo
    submissions = int(_row(result.stdout, "form_submission.updated")[1])
    assert submissions > 0
    assert int(_row(result.stdout, "content.added")[1]) > 0
    delivered = 0
    for path in (directory / "outbox").glob("*.ndjson"):
        delivered += sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line)
    assert delivered >= submissions


def test_demo_never_prints_patient_data(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """No name, phone or email from the generated export appears in stderr (or the summary)."""
    result, directory = demo
    with (directory / "ehr-export.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    secrets: set[str] = set()
    for row in rows:
        secrets.add(row["LastName"])
        if row["Email"]:
            secrets.add(row["Email"])
        digits = re.sub(r"\D", "", row["MobilePhone"])
        if len(digits) >= 7:
            secrets.add(digits.lstrip("0"))  # as written, or inside +385...
        secrets.add(f"{row['FirstName'].strip()} {row['LastName']}")
    secrets.discard("")
    assert len(secrets) > PATIENTS
    for text, where in ((result.stderr, "stderr"), (result.stdout, "stdout")):
        compact = re.sub(r"[\s-]", "", text)
        leaked = sorted(s for s in secrets if s in text or s in compact)
        assert not leaked, f"patient data in {where}: {len(leaked)} values"


def test_demo_exits_by_itself_and_ends_naming_demo_serve(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """The quickstart exits by itself; its last line says how to keep it running."""
    result, directory = demo
    assert result.returncode == 0
    last = result.stdout.rstrip().splitlines()[-1]
    assert f"demo --serve --dir {directory}" in re.sub(r"\s+", " ", last)
    assert "Ctrl-C" in last
