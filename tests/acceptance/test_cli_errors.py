"""What the CLI says when something is wrong: one plain line, the right exit code, and never
a traceback, a password, the API key or a patient's data (issue 11)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import clean_env, config_text, syncd_command

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
    assert denied.returncode == 1
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
