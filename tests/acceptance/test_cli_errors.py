"""What the CLI says when something is wrong: one plain line, the right exit code, and never
a traceback, a password, the API key or a patient's data (issue 11)."""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.acceptance.conftest import Workspace, clean_env, config_text, syncd_command

EX_CONFIG = 78
KEY = "vox-live-Q2FuYXJ5QXBpS2V5U2VjcmV0"
FIRST, LAST = "CANARY\u017dFN", "Quillfeatherby"  # CANARYŽFN: JSON escapes it as \u017d
PHONE_LOCAL, PHONE_E164 = "091 777 6655", "+385917776655"


def run_syncd(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`syncd ARGS` as a subprocess, to completion."""
    return subprocess.run(
        syncd_command(*args),
        cwd=cwd,
        env=clean_env(SYNCD_VOXARES__API_KEY=KEY, COLUMNS="250") if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# --- an API that quotes what it was sent (item 15) ---------------------------------------


class EchoingApi:
    """A Voxares stand-in whose errors quote the request: a 422 with the names JSON-escaped
    and raw, or a 401 quoting the bearer token. `mode` picks which."""

    def __init__(self) -> None:
        self.mode = "reject"
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if api.mode == "reject":
                    status, message = (
                        422,
                        [
                            f"firstName {json.dumps(body.get('firstName'))} is not allowed",
                            f"in {json.dumps(body)}",
                        ],
                    )
                else:
                    status, message = 401, f"the key {self.headers['Authorization']} is revoked"
                answer = json.dumps({"statusCode": status, "message": message}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_port}/api/v1/integration"

    def __enter__(self) -> EchoingApi:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def echoing_api() -> Iterator[EchoingApi]:
    """An echoing API on a loopback port, for this test only."""
    with EchoingApi() as api:
        yield api


def leaks(text: str) -> list[str]:
    """The canary values and key spellings found in `text`."""
    forms = [
        FIRST,
        json.dumps(FIRST)[1:-1],  # CANARY\u017dFN
        LAST,
        PHONE_E164,
        PHONE_E164[4:],
        KEY,
        KEY.rsplit("-", 1)[-1],
    ]
    return [form for form in forms if form.lower() in text.lower()]


def test_api_errors_echoing_the_key_or_patient_data_leave_no_trace(
    tmp_path: Path, echoing_api: EchoingApi
) -> None:
    """Echoed values (raw or JSON-escaped) and the key stay out of the CLI's `error:` line,
    `job_runs.error` and `quarantine.reason`."""
    (tmp_path / "config.toml").write_text(
        config_text(base_url=echoing_api.base_url, directory=tmp_path, submissions=False),
        encoding="utf-8",
    )
    export = tmp_path / "ehr-export.csv"
    header = "PatientID,FirstName,LastName,MobilePhone,Email,BirthDate\n"
    export.write_text(f"{header}C1,{FIRST},{LAST},{PHONE_LOCAL},,1961-07-19\n", encoding="utf-8")
    config = ["--config", str(tmp_path / "config.toml")]
    assert run_syncd("db", "upgrade", *config, cwd=tmp_path).returncode == 0

    rejected = run_syncd("sync", "patients", *config, cwd=tmp_path)
    assert rejected.returncode == 0, rejected.stderr
    listed = run_syncd("quarantine", "list", *config, cwd=tmp_path)
    assert "rejected by Voxares (422)" in listed.stdout

    echoing_api.mode = "deny"
    export.write_text(
        f"{header}C1,{FIRST},{LAST},{PHONE_LOCAL},,1961-07-19\n"
        f"C2,{FIRST},{LAST}-Two,{PHONE_LOCAL},,1961-07-19\n",
        encoding="utf-8",
    )
    denied = run_syncd("sync", "patients", *config, cwd=tmp_path)
    assert denied.returncode == 2  # a failed run (README: exit codes and monitoring)
    [error_line] = [line for line in denied.stderr.splitlines() if line.startswith("error:")]
    assert "status=401" in error_line

    with sqlite3.connect(tmp_path / "state.db") as db:
        reasons = [r for (r,) in db.execute("SELECT reason FROM quarantine")]
        errors = [e for (e,) in db.execute("SELECT error FROM job_runs") if e]
    assert errors, "the failed run recorded its error"
    for where, text in {
        "CLI output": "\n".join(r.stdout + r.stderr for r in (rejected, listed, denied)),
        "quarantine.reason": "\n".join(reasons),
        "job_runs.error": "\n".join(errors),
    }.items():
        assert not leaks(text), f"{where} holds {leaks(text)}"


# --- a busy health port (item 5) ---------------------------------------------------------


def test_a_busy_health_port_stops_start_up_naming_key_and_port(workspace: Workspace) -> None:
    """`syncd run` with health.port taken exits 78 at once with a line naming key and port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        workspace.write_config(
            extra=f'\n[health]\nenabled = true\nhost = "127.0.0.1"\nport = {port}\n'
        )
        text = workspace.config.read_text(encoding="utf-8")
        # write_config's own [health] table says enabled = false: keep only ours.
        workspace.config.write_text(
            text.replace("[health]\nenabled = false\n", "", 1), encoding="utf-8"
        )
        assert workspace.run("db", "upgrade").returncode == 0
        result = workspace.run("run", timeout=60)
    assert result.returncode == EX_CONFIG, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("config error:")]
    assert errors == [
        f"config error: health.port: cannot listen on 127.0.0.1:{port} (Address already in use)"
    ]
    assert "Traceback" not in result.stderr


# --- the state database (items 6 and 7) --------------------------------------------------

LOCAL_COMMANDS = [
    ["quarantine", "list"],
    ["outbox", "list"],
    ["outbox", "show", "0b4f2a9e-6f1c-4d8e-9a43-2f8e1c7d5b10"],
    ["outbox", "retry"],
    ["outbox", "replay", "--since", "2024-01-01"],
    ["messages", "list"],
    ["messages", "send", "--provider-id", "EHR-1", "--content", "hello"],
    ["messages", "resolve", "cli:1", "--cancel"],
    ["content", "list"],
    ["status"],
]


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The `error:` lines a command printed on stderr."""
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("command", LOCAL_COMMANDS, ids=" ".join)
def test_an_unmigrated_database_says_run_db_upgrade(
    workspace: Workspace, command: list[str]
) -> None:
    """Every local command on a database without schema: one line, `run syncd db upgrade`
    (`status` exits 2 for it, a critical check)."""
    workspace.write_config(extra="\n[messages]\nenabled = true\n")
    with contextlib.closing(sqlite3.connect(workspace.state_db)) as db:
        db.execute("CREATE TABLE unrelated (x INTEGER)")  # a database file, but no schema
    result = workspace.run(*command)
    assert result.returncode == (2 if command == ["status"] else 1)
    assert error_lines(result) == [
        "error: the state database has no schema: run `syncd db upgrade`"
    ]
    assert "Traceback" not in result.stderr
    assert "no such table" not in result.stderr


def pg_config(tmp_path: Path, url: str) -> list[str]:
    """A config whose state database is `url`; the `--config` arguments for it."""
    config = tmp_path / "config.toml"
    config.write_text(f'[database]\nurl = "{url}"\n[health]\nenabled = false\n', encoding="utf-8")
    return ["--config", str(config)]


PASSWORD = "Pa55-w0rd-C4nary"


@pytest.mark.parametrize("command", [["db", "upgrade"], ["status"], ["quarantine", "list"]])
def test_postgresql_errors_show_the_drivers_reason_without_the_password(
    tmp_path: Path, command: list[str], postgres_server: str
) -> None:
    """A missing database and a refused connection are named as the driver says, no password."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        closed_port = free.getsockname()[1]
    server = make_url(postgres_server)
    missing = server.set(password=PASSWORD, database="syncd_missing_db_x")
    cases = {
        'database "syncd_missing_db_x" does not exist': missing.render_as_string(
            hide_password=False
        ),
        "connection refused": (
            f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:{closed_port}/syncd"
        ),
    }
    for reason, url in cases.items():
        result = run_syncd(*command, *pg_config(tmp_path, url), cwd=tmp_path)
        # `status` is a monitoring check: an unreachable database is critical (2).
        assert result.returncode == (2 if command == ["status"] else 1), result.stderr
        [line] = error_lines(result)
        assert reason in line.lower(), line
        assert PASSWORD not in result.stdout + result.stderr
        assert "Traceback" not in result.stderr


def test_a_state_directory_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    """database.url under a path that cannot be a directory: one `error:` line naming it
    (a command that creates the database), or saying there is none (a read-only command)."""
    (tmp_path / "not-a-dir").write_text("a file", encoding="utf-8")
    url = f"sqlite:///{tmp_path}/not-a-dir/state/state.db"
    cannot_create = (
        f"error: cannot create the state database's directory {tmp_path}/not-a-dir/state: "
    )
    expected = {
        ("db", "upgrade"): (1, cannot_create),
        ("sync", "patients"): (2, "error: there is no state database at "),  # could not start
        ("quarantine", "list"): (1, f"error: there is no state database at {tmp_path}/not-a-dir"),
    }
    for command, (code, start) in expected.items():
        result = run_syncd(*command, *pg_config(tmp_path, url), cwd=tmp_path)
        assert result.returncode == code, result.stderr
        [line] = error_lines(result)
        assert line.startswith(start), line
        assert "Traceback" not in result.stderr
