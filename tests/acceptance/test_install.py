"""An operator's first hour, command by command: `init` on a fresh machine, local commands
without the API key, read-only commands that leave no trace, a key file others can read, a
health endpoint on every interface. The real `syncd` in a subprocess each time."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import stat
import subprocess
from pathlib import Path

import httpx
import pytest

from syncd.demo_data import write_sample_export
from syncd.examples import example_config
from tests.acceptance.conftest import PROVIDER, Workspace, clean_env, syncd_command
from tests.acceptance.daemon_process import free_port, running

EX_CONFIG = 78
WIDE = "250"


def syncd(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `syncd ARGS` to completion."""
    return subprocess.run(
        syncd_command(*args),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def no_key_env(**extra: str) -> dict[str, str]:
    """An environment with no API key anywhere (no variable, no credential)."""
    env = clean_env(COLUMNS=WIDE, **extra)
    env.pop("CREDENTIALS_DIRECTORY", None)
    return env


# --- init -----------------------------------------------------------------------------------


def test_init_creates_its_directory_and_says_what_it_wrote(tmp_path: Path) -> None:
    """`init` into a missing directory creates it (0700), writes the example (0644) and says
    both, then what to do next; no traceback."""
    target = tmp_path / "etc" / "voxares-syncd" / "config.toml"
    result = syncd("init", str(target), env=clean_env(COLUMNS=WIDE), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert target.read_text(encoding="utf-8") == example_config()
    lines = result.stdout.splitlines()
    assert lines[0] == f"created {target.parent} (mode 0700)"
    assert lines[1].startswith(f"wrote {target} (mode 0644)")
    assert "/etc/voxares-syncd/api-key" in lines[2]
    assert f"syncd doctor --config {target}" in lines[2]
    assert result.stderr == ""


def test_init_into_an_existing_directory_leaves_its_mode(tmp_path: Path) -> None:
    """An existing directory (e.g. /etc/voxares-syncd made 0755 by the tmpfiles rule) keeps
    its mode; only the file is written."""
    directory = tmp_path / "conf"
    directory.mkdir(mode=0o755)
    result = syncd("init", str(directory / "config.toml"), env=clean_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(directory.stat().st_mode) == 0o755
    assert not result.stdout.startswith("created")


# --- the key only where Voxares is called ------------------------------------------------------

LOCAL_COMMANDS = [
    ("db", "upgrade"),
    ("status",),
    ("quarantine", "list"),
    ("outbox", "list"),
    ("outbox", "retry"),
    ("outbox", "replay", "--since", "2020-01-01"),
    ("messages", "list"),
    ("messages", "send", "--provider-id", "EHR-1", "--content", "Hello"),
    ("content", "list"),
]


@pytest.fixture
def keyless(workspace: Workspace) -> Workspace:
    """A migrated workspace whose config names a key file nobody can read (as root's file
    is to the systemd service), with no key in the environment."""
    workspace.write_config(extra="\n[messages]\nenabled = true\n")
    text = workspace.config.read_text(encoding="utf-8")
    unreadable = workspace.dir / "missing" / "api-key"
    workspace.config.write_text(
        text.replace("[voxares]\n", f'[voxares]\napi_key_file = "{unreadable}"\n', 1),
        encoding="utf-8",
    )
    return workspace


@pytest.mark.parametrize("command", LOCAL_COMMANDS, ids=" ".join)
def test_local_commands_need_no_api_key(keyless: Workspace, command: tuple[str, ...]) -> None:
    """Commands that only touch the state database work without any API key."""
    upgraded = keyless.run("db", "upgrade", env=no_key_env())
    assert upgraded.returncode == 0, upgraded.stderr
    mirror_patient(keyless.state_db, "EHR-1")  # `messages send` checks the mirror knows it
    result = keyless.run(*command, env=no_key_env())
    # `status` on a database where no job ran yet is a WARNING (1), as a monitoring check.
    assert result.returncode == (1 if command == ("status",) else 0), result.stdout + result.stderr
    assert "api_key" not in result.stderr


def mirror_patient(state_db: Path, provider_id: str) -> None:
    """A patient the mirror knows, as a push would have left it."""
    now = "2026-01-01 00:00:00.000000"
    with contextlib.closing(sqlite3.connect(state_db)) as db, db:
        db.execute(
            "INSERT INTO patient_mirror (provider, provider_id, voxares_patient_id, payload_hash,"
            " payload, state, first_pushed_at, last_pushed_at, last_seen_at)"
            " VALUES (?, ?, ?, ?, '{}', 'active', ?, ?, ?)",
            (
                PROVIDER,
                provider_id,
                "00000000-0000-4000-8000-000000000001",
                "0" * 64,
                now,
                now,
                now,
            ),
        )


@pytest.mark.parametrize(
    "command", [("doctor",), ("sync", "patients"), ("sync", "outbox"), ("run",)], ids=" ".join
)
def test_commands_that_call_voxares_say_where_the_key_was_looked_for(
    keyless: Workspace, command: tuple[str, ...]
) -> None:
    """run, sync and doctor stop with exit 78 and one line naming the file and what else
    was tried."""
    result = keyless.run(*command, env=no_key_env())
    assert result.returncode == EX_CONFIG, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(
        f"config error: voxares.api_key_file: cannot read {keyless.dir}/missing/api-key: "
    )
    assert "neither SYNCD_VOXARES__API_KEY nor the systemd credential voxares-api-key" in line


# --- read-only commands leave no trace ------------------------------------------------------

READ_ONLY = [
    ("status",),
    ("doctor",),
    ("quarantine", "list"),
    ("outbox", "list"),
    ("outbox", "show", "no-such-event"),
    ("messages", "list"),
    ("content", "list"),
]


@pytest.mark.parametrize("command", READ_ONLY, ids=" ".join)
def test_read_only_commands_create_no_database(
    workspace: Workspace, command: tuple[str, ...]
) -> None:
    """On a machine with no state database yet, a read-only command says `syncd db upgrade`
    in one line and creates neither the database file nor its directory."""
    state_dir = workspace.dir / "state"
    workspace.write_config(extra="\n[messages]\nenabled = true\n")
    text = workspace.config.read_text(encoding="utf-8")
    workspace.config.write_text(
        text.replace(f"{workspace.dir}/state.db", f"{state_dir}/db/state.db"), encoding="utf-8"
    )
    result = workspace.run(*command, env=workspace.env(COLUMNS=WIDE))
    assert result.returncode != 0
    assert f"there is no state database at {state_dir}/db/state.db" in result.stdout + (
        result.stderr
    )
    assert "run `syncd db upgrade`" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert not state_dir.exists()


def test_db_upgrade_cannot_create_its_directory_in_one_line(workspace: Workspace) -> None:
    """A state directory that cannot be created (a file in the way) is one error line."""
    blocker = workspace.dir / "blocker"
    blocker.write_text("not a directory")
    text = workspace.config.read_text(encoding="utf-8")
    workspace.config.write_text(
        text.replace(f"{workspace.dir}/state.db", f"{blocker}/state.db"), encoding="utf-8"
    )
    result = workspace.run("db", "upgrade")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: cannot create the state database's directory {blocker}: File exists (database.url)"
    ]


# --- a key file others can read ------------------------------------------------------------


@pytest.mark.parametrize(("mode", "accepted"), [(0o644, False), (0o606, False), (0o600, True)])
def test_key_file_open_to_others_is_refused_saying_why(
    workspace: Workspace, mode: int, accepted: bool
) -> None:
    """A world-readable key file stops doctor with exit 78, the mode and the fix; 0600 works."""
    write_sample_export(workspace.export, 5)
    key_file = workspace.dir / "api-key"
    key_file.write_text(workspace.practice.key + "\n")
    key_file.chmod(mode)
    text = workspace.config.read_text(encoding="utf-8")
    workspace.config.write_text(
        text.replace("[voxares]\n", f'[voxares]\napi_key_file = "{key_file}"\n', 1),
        encoding="utf-8",
    )
    assert workspace.run("db", "upgrade", env=no_key_env()).returncode == 0
    result = workspace.run("doctor", env=no_key_env())
    if accepted:
        assert result.returncode == 0, result.stdout + result.stderr
        return
    assert result.returncode == EX_CONFIG
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"config error: voxares.api_key_file: {key_file} is open to every user")
    assert f"mode {mode:04o}" in line
    assert "syncd refuses it" in line
    assert f"chmod 0600 {key_file}" in line
    assert workspace.practice.key not in result.stdout + result.stderr


# --- health on every interface --------------------------------------------------------------


def test_health_on_every_interface_warns_in_doctor_and_in_the_log(workspace: Workspace) -> None:
    """health.host = 0.0.0.0 is accepted, but doctor shows a WARN line and the daemon logs a
    warning at start; 127.0.0.1 gives neither."""
    port = free_port("0.0.0.0")
    write_sample_export(workspace.export, 5)
    text = workspace.config.read_text(encoding="utf-8")
    workspace.config.write_text(
        text.replace(
            "[health]\nenabled = false\n",
            f'[health]\nenabled = true\nhost = "0.0.0.0"\nport = {port}\n',
        ),
        encoding="utf-8",
    )
    assert workspace.run("db", "upgrade").returncode == 0

    doctor = workspace.run("doctor", env=workspace.env(COLUMNS=WIDE))
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    warn, page_warn = [line for line in doctor.stdout.splitlines() if line.startswith("WARN")]
    assert warn.startswith("WARN health: health.host = '0.0.0.0' serves /healthz")
    assert page_warn.startswith(
        "WARN status_page: status_page.auth = 'none' serves the status page at / on '0.0.0.0'"
    )

    with running(
        syncd_command("run", "--config", str(workspace.config)),
        env=workspace.env(),
        cwd=workspace.dir,
        notify_dir=workspace.dir,
    ) as daemon:
        daemon.wait_ready()
        daemon.wait_healthz(port)
    events = [json.loads(line) for line in daemon.drain().splitlines() if line.startswith("{")]
    [exposed] = [e for e in events if e.get("event") == "health.exposed"]
    assert exposed["level"] == "warning"
    assert exposed["host"] == "0.0.0.0"
    [page] = [e for e in events if e.get("event") == "status_page.exposed"]
    assert page["level"] == "warning"


def test_status_page_beyond_loopback_with_a_bearer_token(workspace: Workspace) -> None:
    """With `status_page.auth`, the page on 0.0.0.0 answers 401 without the token and 200
    with it, the probes stay open, and doctor no longer warns about the page."""
    port = free_port("0.0.0.0")
    write_sample_export(workspace.export, 5)
    token = workspace.dir / "page-token"
    token.write_text("tok-a1b2c3d4e5\n", encoding="utf-8")
    token.chmod(0o600)
    text = workspace.config.read_text(encoding="utf-8")
    workspace.config.write_text(
        text.replace(
            "[health]\nenabled = false\n",
            f'[health]\nenabled = true\nhost = "0.0.0.0"\nport = {port}\n',
        )
        + f'\n[status_page]\nauth = "bearer"\ncredential_file = "{token.as_posix()}"\n',
        encoding="utf-8",
    )
    assert workspace.run("db", "upgrade").returncode == 0
    doctor = workspace.run("doctor", env=workspace.env(COLUMNS=WIDE))
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert [line[:12] for line in doctor.stdout.splitlines() if line.startswith("WARN")] == [
        "WARN health:"
    ]
    with running(
        syncd_command("run", "--config", str(workspace.config)),
        env=workspace.env(),
        cwd=workspace.dir,
        notify_dir=workspace.dir,
    ) as daemon:
        daemon.wait_ready()
        daemon.wait_healthz(port)
        base = f"http://127.0.0.1:{port}"
        refused = httpx.get(f"{base}/", timeout=30)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        wrong = httpx.get(f"{base}/", headers={"Authorization": "Bearer nope"}, timeout=30)
        assert wrong.status_code == 401
        ok = httpx.get(f"{base}/", headers={"Authorization": "Bearer tok-a1b2c3d4e5"}, timeout=30)
        assert ok.status_code == 200
        assert "voxares-syncd" in ok.text
        assert httpx.get(f"{base}/readyz", timeout=30).status_code in (200, 503)
    assert "tok-a1b2c3d4e5" not in daemon.drain()


def test_unreadable_page_credential_file_stops_start_up(workspace: Workspace) -> None:
    """A credential file that cannot be read is a configuration error naming the key."""
    text = workspace.config.read_text(encoding="utf-8")
    workspace.config.write_text(
        text.replace("[health]\nenabled = false\n", f"[health]\nport = {free_port()}\n")
        + '\n[status_page]\nauth = "basic"\ncredential_file = "/nonexistent/page.cred"\n',
        encoding="utf-8",
    )
    write_sample_export(workspace.export, 5)
    assert workspace.run("db", "upgrade").returncode == 0
    result = workspace.run("run", timeout=120)
    assert result.returncode == 78, result.stderr[-2000:]
    assert "status_page.credential_file: cannot read it" in result.stderr


def test_loopback_health_gives_no_warning(workspace: Workspace) -> None:
    """An enabled health server on 127.0.0.1 is not warned about by doctor."""
    write_sample_export(workspace.export, 5)
    text = workspace.config.read_text(encoding="utf-8")
    workspace.config.write_text(
        text.replace("[health]\nenabled = false\n", '[health]\nhost = "127.0.0.1"\n'),
        encoding="utf-8",
    )
    assert workspace.run("db", "upgrade").returncode == 0
    doctor = workspace.run("doctor", env=workspace.env(COLUMNS=WIDE))
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "WARN" not in doctor.stdout
