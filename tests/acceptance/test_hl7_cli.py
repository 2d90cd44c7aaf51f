"""The HL7 feed from the command line: `syncd demo --hl7`, and `syncd doctor`'s port check."""

from __future__ import annotations

import json
import re
import socket
import subprocess
from pathlib import Path

from syncd.demo_data import write_sample_export
from tests.acceptance.conftest import Workspace, clean_env, syncd_command
from tests.acceptance.daemon_process import free_port

WIDE = "200"


def _row(stdout: str, label: str) -> list[str]:
    for line in stdout.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]
        if cells and cells[0] == label:
            return cells
    raise AssertionError(f"no row {label!r} in the output")


def test_hl7_demo_turns_messages_into_patients(tmp_path: Path) -> None:
    """`syncd demo --hl7`: ADT messages over MLLP become sandbox patients, the A08's email
    wins, the duplicate and the ORU are acknowledged, the broken one refused."""
    directory = tmp_path / "hl7-demo"
    result = subprocess.run(
        syncd_command("demo", "--hl7", "--dir", str(directory)),
        env=clean_env(COLUMNS=WIDE),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert _row(out, "DEMO-1")[1:] == ["Ana Horvat", "ana@example.com"]
    assert _row(out, "DEMO-2")[1:] == ["Ivo Kovač", "ivo@example.com"]
    assert "ACK AR" in out
    assert out.count("ACK AA") == 5
    assert "inbound messages: applied 3, ignored 1, rejected 1" in out

    # The operator's view: the list names statuses and reasons, never content; `show`
    # prints a refused message as received, and an applied one no more.
    config = str(directory / "config.toml")
    listed = subprocess.run(
        syncd_command("hl7", "list", "--json", "--config", config),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = json.loads(listed.stdout)
    assert sorted(r["status"] for r in rows) == [
        "applied",
        "applied",
        "applied",
        "ignored",
        "rejected",
    ]
    assert "Horvat" not in listed.stdout
    (rejected,) = [r for r in rows if r["status"] == "rejected"]
    assert "MSH-10" in rejected["reason"]
    shown = subprocess.run(
        syncd_command("hl7", "show", str(rejected["id"]), "--config", config),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "PID|1||DEMO-9^^^CLINIC^MR||Nobody^No" in shown.stdout
    applied = subprocess.run(
        syncd_command("hl7", "show", "1", "--config", config),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "no longer kept" in applied.stdout
    status = subprocess.run(
        syncd_command("status", "--json", "--config", config),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert json.loads(status.stdout)["hl7"]["by_status"] == {
        "applied": 3,
        "ignored": 1,
        "rejected": 1,
    }
    text_status = subprocess.run(
        syncd_command("status", "--config", config),
        env=clean_env(COLUMNS=WIDE),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "HL7 messages: applied=3 ignored=1 rejected=1" in text_status.stdout
    assert "syncd hl7 list --status rejected" in text_status.stdout


def _doctor(ws: Workspace, port: int) -> tuple[int, str]:
    write_sample_export(ws.export, 20)
    assert ws.run("db", "upgrade").returncode == 0
    ws.write_config(extra=f"\n[hl7]\nport = {port}\n")
    result = ws.run("doctor", env=ws.env(COLUMNS=WIDE))
    line = next((ln for ln in result.stdout.splitlines() if " hl7" in ln), "")
    return result.returncode, line


def test_doctor_passes_a_free_listener_port(workspace: Workspace) -> None:
    """doctor reports the MLLP port free."""
    code, line = _doctor(workspace, free_port())
    assert "is free" in line, line
    assert code == 0


def test_doctor_fails_a_port_in_use(workspace: Workspace) -> None:
    """doctor fails, naming hl7.port, when something already listens on the MLLP port."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        code, line = _doctor(workspace, server.getsockname()[1])
    assert "hl7.port" in line, line
    assert code == 1
