"""kill -9 at each step of the HL7 receive and apply paths, then a restart: nothing lost,
nothing applied twice, each patient ends with its last message's data.

The real `syncd run` with an `[hl7]` listener, a served sandbox, a SQLite state file. The
test is the sender, behaving like an interface engine: it sends each message and waits for
its ACK; when the connection breaks before the ACK it sends that message again (same
MSH-10) once the daemon is back.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from syncd.hl7.mllp import MllpClient, ack_code
from tests.acceptance.conftest import Practice, clean_env, syncd_command
from tests.acceptance.daemon_process import free_port
from tests.hl7_messages import adt

pytestmark = pytest.mark.slow

# Each named step of the HL7 paths, with the n-th time it is reached when killed there.
HL7_CRASH_STEPS = {
    "hl7.received": 4,  # read off the socket, not yet recorded: resent, recorded once
    "hl7.after_commit": 4,  # recorded, ACK not sent: resent, the duplicate is absorbed
    "hl7.apply_after_http": 2,  # Voxares has it, the mirror not: applied again (upsert)
    "hl7.apply_after_commit": 1,  # applied and recorded: nothing repeated
}
PATIENTS = 5
MESSAGES = 20


def _messages() -> list[bytes]:
    return [
        adt(f"ctl-{i}", f"P{i % PATIENTS}", family=f"Family{i}", event="A08").encode()
        for i in range(MESSAGES)
    ]


def _config(directory: Path, base_url: str, port: int) -> Path:
    path = directory / "config.toml"
    path.write_text(
        f"""\
[voxares]
base_url = "{base_url}"
requests_per_second = 2000
max_concurrency = 8
retry_initial_seconds = 0.05
retry_max_backoff_seconds = 0.5

[database]
url = "sqlite:///{directory.as_posix()}/state.db"

[logging]
level = "INFO"
format = "json"

[health]
enabled = false

[submissions]
enabled = false

[content]
enabled = false

[hl7]
port = {port}
apply_interval_seconds = 0.5
batch_size = 4
""",
        encoding="utf-8",
    )
    return path


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def _deliver(port: int, messages: list[bytes], acked: list[str]) -> None:
    """Send the messages not yet acknowledged, in order, until done or the link breaks."""
    try:
        client = await MllpClient.connect("127.0.0.1", port)
    except OSError:
        return
    try:
        for message in messages[len(acked) :]:
            code = ack_code(await client.send(message))
            assert code == "AA", code
            acked.append(code)
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        return
    finally:
        await client.close()


def _start(config: Path, directory: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with (directory / "daemon.log").open("ab") as log:
        return subprocess.Popen(
            syncd_command("run", "--config", str(config)),
            cwd=directory,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def _wait(condition: object, what: str, within: float = 90.0) -> None:
    deadline = time.monotonic() + within
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _statuses(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM hl7_inbound GROUP BY status"))


@pytest.mark.parametrize("step", list(HL7_CRASH_STEPS))
def test_kill_at_step_then_restart_loses_nothing(
    step: str, tmp_path: Path, practice: Practice
) -> None:
    """Killed at `step`, restarted: every message recorded once, applied, in order."""
    port = free_port()
    config = _config(tmp_path, practice.sandbox.base_url, port)
    env = clean_env(SYNCD_VOXARES__API_KEY=practice.key)
    messages = _messages()
    acked: list[str] = []
    subprocess.run(
        syncd_command("db", "upgrade", "--config", str(config)), env=env, check=True, timeout=120
    )

    crashing = _start(config, tmp_path, env | {"SYNCD_CRASH_AT": f"{step}:{HL7_CRASH_STEPS[step]}"})
    try:
        _wait(lambda: _listening(port) or crashing.poll() is not None, "the listener")
        asyncio.run(_deliver(port, messages, acked))
        crashing.wait(timeout=90)
    finally:
        if crashing.poll() is None:
            crashing.kill()
            crashing.wait()
    assert crashing.returncode == -signal.SIGKILL, (tmp_path / "daemon.log").read_text()
    assert len(acked) < MESSAGES or step.startswith("hl7.apply")

    restarted = _start(config, tmp_path, env)
    try:
        _wait(lambda: _listening(port), "the listener after the restart")
        while len(acked) < MESSAGES:
            asyncio.run(_deliver(port, messages, acked))
        db = tmp_path / "state.db"
        _wait(lambda: _statuses(db) == {"applied": MESSAGES}, "every message applied")
        for n in range(PATIENTS):
            last = max(i for i in range(MESSAGES) if i % PATIENTS == n)
            patient = practice.patient(f"P{n}")
            assert patient is not None
            assert patient["lastName"] == f"Family{last}", f"P{n} ends with its last message"
        assert practice.stats()["patients"] == PATIENTS
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(timeout=90)
    assert restarted.returncode == 0, (tmp_path / "daemon.log").read_text()[-2000:]
