"""The `syncd` command line as an operator uses it: a subprocess per command, a served
sandbox on a loopback port, the API key in SYNCD_VOXARES__API_KEY."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from syncd.demo_data import BROKEN_ROWS, write_sample_export
from syncd.sandbox.faults import FaultConfig, FaultRule
from tests.acceptance.conftest import Workspace, clean_env, syncd_command

EX_CONFIG = 78
PATIENTS = 30
WIDE = "250"  # COLUMNS: rich tables unwrapped, one row per line


def assert_no_key(result: subprocess.CompletedProcess[str], key: str) -> None:
    """Neither stdout nor stderr carries the API key or its secret part."""
    secret = key.rsplit("-", 1)[-1]
    for text in (result.stdout, result.stderr):
        assert key not in text
        assert secret not in text


def table_rows(stdout: str) -> list[list[str]]:
    """The cells of every body row of rich tables in `stdout`."""
    rows = []
    for line in stdout.splitlines():
        if line.startswith("│"):
            rows.append([c.strip() for c in line.strip("│").split("│")])
    return rows


def row_counts(path: Path) -> dict[str, int]:
    """Rows per table of the SQLite state file (alembic's own table left out)."""
    with sqlite3.connect(path) as db:
        tables = [
            r[0]
            for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if r[0] != "alembic_version" and not r[0].startswith("sqlite_")
        ]
        return {t: db.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}


@pytest.fixture
def migrated(workspace: Workspace) -> Workspace:
    """A workspace with a sample export and a migrated state database."""
    write_sample_export(workspace.export, PATIENTS)
    result = workspace.run("db", "upgrade")
    assert result.returncode == 0, result.stderr
    return workspace


# --- configuration errors -----------------------------------------------------------------

BAD_CONFIGS = {
    "unknown key": ("[voxares]\nrequest_per_second = 5\n", {}, "voxares.request_per_second"),
    "wrong type": ("[patients]\nbatch_size = 'lots'\n", {}, "patients.batch_size"),
    "out of range": ("[voxares]\nmax_concurrency = 0\n", {}, "voxares.max_concurrency"),
    "clear-text url": (
        "[voxares]\nbase_url = 'http://api.example.com/api/v1/integration'\n",
        {},
        "voxares.base_url",
    ),
    "unsupported database": ("[database]\nurl = 'mysql://db/x'\n", {}, "database.url"),
    "source missing": ("[patients]\nenabled = true\n", {}, "patients.source"),
    "no api key": (
        "[voxares]\napi_key_file = ''\n",
        {"SYNCD_VOXARES__API_KEY": ""},
        "voxares.api_key",
    ),
    "bad environment override": (
        "",
        {"SYNCD_VOXARES__REQUESTS_PER_SECOND": "fast"},
        "SYNCD_VOXARES__REQUESTS_PER_SECOND",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_CONFIGS))
def test_a_bad_config_stops_start_up_naming_the_key(tmp_path: Path, kind: str) -> None:
    """`syncd run` with a bad config exits 78 with one `config error: <key>: why` line."""
    text, env, key = BAD_CONFIGS[kind]
    config = tmp_path / "config.toml"
    config.write_text(f"[health]\nenabled = false\n{text}", encoding="utf-8")
    environment = clean_env(SYNCD_VOXARES__API_KEY="vox-test-k3y")
    environment.update(env)
    if not environment["SYNCD_VOXARES__API_KEY"]:
        del environment["SYNCD_VOXARES__API_KEY"]
    result = subprocess.run(
        syncd_command("run", "--config", str(config)),
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == EX_CONFIG
    lines = result.stderr.strip().splitlines()
    assert lines == [f"config error: {key}: {lines[0].split(': ', 2)[2]}"]
    assert result.stdout == ""
    # Values are never echoed back (they may be secrets).
    assert "fast" not in result.stderr
    assert "lots" not in result.stderr


def test_every_problem_gets_its_own_line(tmp_path: Path) -> None:
    """Several problems at once: one unwrapped line each, every one naming its key, exit 78."""
    config = tmp_path / "config.toml"
    config.write_text(
        "[voxares]\n"
        "base_url = 'http://api.example.com/api/v1/integration'\n"
        "requests_per_second = -1\n"
        "typo = 3\n"
        "[database]\nurl = 'mysql://x/y'\n"
        "[patients]\nbatch_size = 'lots'\n",
        encoding="utf-8",
    )
    result = subprocess.run(
        syncd_command("status", "--config", str(config)),
        env=clean_env(COLUMNS="40"),  # narrow: the lines must still not wrap
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == EX_CONFIG
    lines = result.stderr.strip().splitlines()
    keys = {line.removeprefix("config error: ").split(":")[0] for line in lines}
    assert all(line.startswith("config error: ") for line in lines)
    # `status` never calls Voxares: a missing API key is not one of its problems.
    assert keys == {
        "voxares.base_url",
        "voxares.requests_per_second",
        "voxares.typo",
        "database.url",
        "patients.batch_size",
    }
    assert len(lines) == len(keys)


# --- database and status ------------------------------------------------------------------


def test_db_upgrade_then_status(workspace: Workspace) -> None:
    """`db upgrade` creates the schema; `status` then reports an empty state, warning (exit
    1) that the push job has not run yet. Unmigrated, status is critical (exit 2)."""
    before = workspace.run("status")
    assert before.returncode == 2
    assert "syncd db upgrade" in before.stderr
    upgraded = workspace.run("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert "state database at revision" in upgraded.stdout
    status = workspace.run("status", env=workspace.env(COLUMNS=WIDE))
    assert status.returncode == 1, status.stderr
    assert "patients mirrored: 0 active, 0 inactive | quarantined rows: 0" in status.stdout
    assert "form polling lag: never polled" in status.stdout
    assert "SMS requests: none" in status.stdout
    assert "status: WARNING" in status.stdout
    assert "warning: job:push_patients: no run recorded yet" in status.stdout
    assert_no_key(status, workspace.practice.key)


# --- doctor -------------------------------------------------------------------------------


def test_doctor_with_a_good_key_is_all_ok(migrated: Workspace) -> None:
    """Against the served sandbox with a valid key, every check passes and doctor exits 0."""
    migrated.write_config(submissions=True)
    result = migrated.run("doctor", env=migrated.env(COLUMNS=WIDE))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert all(line.startswith("ok ") for line in lines)
    checks = {line.split()[1].rstrip(":") for line in lines}
    assert {"config", "database", "api:patients", "api:form-submissions", "source"} <= checks
    assert_no_key(result, migrated.practice.key)


def test_doctor_explains_a_wrong_key(migrated: Workspace) -> None:
    """A wrong key: doctor says the API answered 401 and what to check, and exits 1."""
    wrong = "vox-wrong-n0tTheRightSecret9"
    result = migrated.run("doctor", env=clean_env(SYNCD_VOXARES__API_KEY=wrong, COLUMNS=WIDE))
    assert result.returncode == 1
    [api] = [line for line in result.stdout.splitlines() if " api" in line]
    assert api.startswith("FAIL api: the API answered 401")
    assert "SYNCD_VOXARES__API_KEY" in api
    assert_no_key(result, wrong)


def test_doctor_explains_a_missing_scope(migrated: Workspace) -> None:
    """A key without the form-submissions scope: a 403 naming the scope; the rest is ok."""
    migrated.write_config(submissions=True)
    limited = migrated.practice.sandbox.admin.issue_key(
        migrated.practice.id, "patients-only", ["patients"]
    )
    result = migrated.run("doctor", env=clean_env(SYNCD_VOXARES__API_KEY=limited, COLUMNS=WIDE))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any(line.startswith("ok   api:patients") for line in lines)
    [failed] = [line for line in lines if line.startswith("FAIL")]
    assert failed.startswith("FAIL api:form-submissions: the API answered 403")
    assert "'form-submissions' scope" in failed
    assert_no_key(result, limited)


# --- sync and quarantine ------------------------------------------------------------------


def test_dry_run_writes_nothing_and_calls_nothing(migrated: Workspace) -> None:
    """`sync patients --dry-run` reports what it would do, with no request and no row written."""
    requests_before = migrated.practice.stats()["requests"]
    result = migrated.run("sync", "patients", "--dry-run", env=migrated.env(COLUMNS=WIDE))
    assert result.returncode == 0, result.stderr
    assert "nothing was sent or written" in result.stdout
    cells = {row[0]: row[1] for row in table_rows(result.stdout) if len(row) == 2}
    assert cells["create"] == str(PATIENTS - len(BROKEN_ROWS))
    assert cells["quarantine"] == str(len(BROKEN_ROWS))
    assert cells["drop landline number"] == str(PATIENTS // 10)  # every 10th row, none broken
    stats = migrated.practice.stats()
    assert stats["requests"] == requests_before
    assert stats["patients"] == 0
    assert set(row_counts(migrated.state_db).values()) == {0}
    assert_no_key(result, migrated.practice.key)


def test_sync_then_quarantine_list_names_row_field_and_reason(migrated: Workspace) -> None:
    """`sync patients` pushes the valid rows; `quarantine list` names each bad row's field."""
    synced = migrated.run("sync", "patients", env=migrated.env(COLUMNS=WIDE))
    assert synced.returncode == 0, synced.stderr
    counts = {row[0]: row[1] for row in table_rows(synced.stdout) if len(row) == 2}
    assert counts["created"] == str(PATIENTS - len(BROKEN_ROWS))
    assert counts["quarantined"] == str(len(BROKEN_ROWS))
    assert migrated.practice.stats()["patients"] == PATIENTS - len(BROKEN_ROWS)

    listed = migrated.run("quarantine", "list", env=migrated.env(COLUMNS=WIDE))
    assert listed.returncode == 0, listed.stderr
    rows = table_rows(listed.stdout)
    assert len(rows) == len(BROKEN_ROWS)
    assert f"{len(BROKEN_ROWS)} row(s)" in listed.stdout
    by_field: dict[str, list[list[str]]] = {}
    for source, row, line, field, reason, *_ in rows:
        assert source == "ehr-export"
        assert row.startswith(("EHR-", "line:"))
        assert int(line) > 1
        assert reason.startswith(f"{field}: ")
        by_field.setdefault(field, []).append([row, reason])
    assert sorted(by_field) == sorted({f for f, _ in BROKEN_ROWS})
    # The row without an id is named by its line in the file.
    [(no_id_row, _)] = by_field["providerId"]
    assert no_id_row.startswith("line:")
    assert no_id_row.endswith("@ehr-export.csv")

    status = migrated.run("status", env=migrated.env(COLUMNS=WIDE))
    assert status.returncode == 0, status.stderr
    valid = PATIENTS - len(BROKEN_ROWS)
    assert f"patients mirrored: {valid} active" in status.stdout
    assert f"quarantined rows: {len(BROKEN_ROWS)}" in status.stdout
    [push] = [r for r in table_rows(status.stdout) if r[0] == "push_patients"]
    assert push[2] == "ok"
    for result in (synced, listed, status):
        assert_no_key(result, migrated.practice.key)


# --- reconciliation sweep -----------------------------------------------------------------


def test_sync_reconcile_sweeps_by_hand_and_finds_nothing_twice(workspace: Workspace) -> None:
    """`sync reconcile --since` re-lists what polling covered: nothing new, no detail read;
    a bad --since is a usage error (exit 2)."""
    practice = workspace.practice
    practice.sandbox.admin.seed_patients(4, practice_id=practice.id)
    practice.sandbox.admin.seed_submissions(12, practice_id=practice.id, status="Completed")
    workspace.write_config(submissions=True)
    assert workspace.run("db", "upgrade").returncode == 0
    polled = workspace.run("sync", "submissions", env=workspace.env(COLUMNS=WIDE))
    assert polled.returncode == 0, polled.stderr
    before = practice.stats()
    swept = workspace.run(
        "sync", "reconcile", "--since", "2000-01-01T00:00:00Z", env=workspace.env(COLUMNS=WIDE)
    )
    assert swept.returncode == 0, swept.stderr
    counts = {row[0]: row[1] for row in table_rows(swept.stdout) if len(row) == 2}
    assert counts["sweeps"] == "1"
    assert counts["known_skipped"] == "12"
    assert counts["sweep_found"] == counts["details"] == "0"
    assert detail_reads(practice.stats()) == detail_reads(before)
    bad = workspace.run("sync", "reconcile", "--since", "yesterday")
    assert bad.returncode == 2
    assert "--since" in bad.stderr
    assert_no_key(swept, practice.key)


def detail_reads(stats: dict[str, Any]) -> int:
    """How many detail reads (`GET /form-submissions/<id>`) the sandbox answered."""
    return sum(
        n for label, n in stats["requests"].items() if label.startswith("GET /form-submissions/")
    )


def test_sync_patients_exits_non_zero_when_an_outage_stops_the_run(migrated: Workspace) -> None:
    """Every push answered 503: `sync patients` stops early after `outage_after` failures,
    exits 2 saying so, and `status --json` is critical (exit 2) naming the failed run;
    with Voxares back, the next run pushes every valid row and both exit 0."""
    admin = migrated.practice.sandbox.admin
    admin.set_faults(
        FaultConfig(
            retry_after_seconds=0,
            rules=[FaultRule(method="POST", path_prefix="/patients", error_rates={503: 1.0})],
        )
    )
    try:
        down = migrated.run(
            "sync",
            "patients",
            env=migrated.env(COLUMNS=WIDE, SYNCD_PATIENTS__OUTAGE_AFTER="3"),
        )
    finally:
        admin.set_faults(None)
    assert down.returncode == 2, down.stderr
    counts = {row[0]: row[1] for row in table_rows(down.stdout) if len(row) == 2}
    assert (counts["stopped_early"], counts["failed"], counts["created"]) == ("1", "3", "0")
    assert "failed" in down.stdout.split("┌")[0]  # the table's title: run 1: failed
    assert "error: stopped early: Voxares unreachable or failing" in down.stderr
    assert migrated.practice.stats()["patients"] == 0
    critical = migrated.run("status", "--json")
    assert critical.returncode == 2, critical.stderr
    body = json.loads(critical.stdout)
    assert body["status"] == "critical"
    [problem] = body["problems"]
    assert (problem["level"], problem["check"]) == ("critical", "job:push_patients")
    assert problem["reason"].startswith("last run failed: stopped early")
    [job] = body["jobs"]
    assert (job["run_id"], job["outcome"], job["counts"]["stopped_early"]) == (1, "failed", 1)

    back = migrated.run("sync", "patients", env=migrated.env(COLUMNS=WIDE))
    assert back.returncode == 0, back.stderr
    counts = {row[0]: row[1] for row in table_rows(back.stdout) if len(row) == 2}
    assert counts["created"] == str(PATIENTS - len(BROKEN_ROWS))
    assert counts["stopped_early"] == "0"
    ok = migrated.run("status", "--json")
    assert ok.returncode == 0, ok.stderr
    assert (json.loads(ok.stdout)["status"], json.loads(ok.stdout)["problems"]) == ("ok", [])
    for result in (down, critical, back, ok):
        assert_no_key(result, migrated.practice.key)
