"""README's "Install for real" and deploy/README.md's shell steps, run as written.

The commands come from the documents' ```sh blocks (tests/acceptance/docs_commands.py), so the
documents cannot drift from the code. They run as root in a scratch root standing in for `/`:
absolute paths are moved under it, in the commands and in the config `syncd init` writes.
Voxares is the served sandbox (`SYNCD_VOXARES__BASE_URL`), and the health port a free one.
Every other difference from a real machine is a `Rule` below, with its reason.

After the systemd steps the installed unit is started as systemd would start it
(tests/acceptance/systemd_unit.py): as `nobody`, which cannot read root's 0600 key file, with
the key only as a credential. Every documented command must work in that setup.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from syncd.demo_data import BROKEN_ROWS, change_some_rows, write_sample_export
from syncd.sandbox.server import ServedSandbox
from tests.acceptance.conftest import Practice
from tests.acceptance.daemon_process import free_port
from tests.acceptance.docs_commands import (
    DEPLOY_README,
    README,
    VENV,
    Root,
    Rule,
    Shell,
    section_blocks,
    shell_blocks,
    unprivileged,
    user_ids,
    write_shims,
)
from tests.acceptance.systemd_unit import SERVICE_USER, Service, Unit
from tests.conftest import IN_CI

pytestmark = pytest.mark.slow

PATIENTS = 24
# The columns config.example.toml maps (the demo export names two of them differently).
EXAMPLE_COLUMNS = {"MobilePhone": "Mobile", "BirthDate": "DOB"}
INSTALL = "Install for real"
SYSTEMD = "Install with systemd (virtualenv under /opt)"
EXPORT = "The EHR export"
BACKUP = "Backup and restore of the state database"
LOGS = "Logs"
ROTATION = "Rotating the API key"
DOCKER = "Install with Docker"  # tests/acceptance/test_container_entrypoint.py

RULES = [
    Rule(
        r"python3(\.\d+)? -m venv /opt/voxares-syncd\b.*",
        "mkdir -p {root}/opt && ln -s {venv} {root}/opt/voxares-syncd",
        "the virtualenv running this test stands for the one the step creates",
    ),
    Rule(
        r"/opt/voxares-syncd/bin/pip install .*",
        None,
        "that virtualenv is installed already (a real pip install is CI's image build)",
    ),
    Rule(
        r"systemd-tmpfiles --create voxares-syncd\.conf\b.*",
        "{tmpfiles} --create --root={root} voxares-syncd.conf",
        "the real tool, applied to the scratch root instead of this machine",
    ),
    Rule(r"journalctl .*", None, "reads the journal of a running unit: none here"),
]


def require_root_and_service_user() -> None:
    """Skip (or, in CI, fail) when this test cannot act as root and as `nobody`."""
    reason = ""
    if os.geteuid() != 0:
        reason = "needs root: the documented steps are run as root, the service as nobody"
    elif not all(shutil.which(tool) for tool in ("systemd-tmpfiles", "setpriv", "unshare")):
        reason = "systemd-tmpfiles, setpriv or unshare is not installed"
    else:
        check = subprocess.run(
            unprivileged(
                [str(VENV / "bin" / "python"), "-c", "import syncd.cli"], *user_ids(SERVICE_USER)
            ),
            capture_output=True,
            check=False,
        )
        if check.returncode != 0:
            reason = f"{SERVICE_USER} cannot run {VENV}/bin/python (a private home above it?)"
    if not reason:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI=true)")
    pytest.skip(reason)


def write_export(path: Path, patients: int) -> None:
    """The clinic's EHR export, in the columns config.example.toml maps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_sample_export(path, patients)
    rename_columns(path)


def rename_columns(path: Path) -> None:
    """The demo export in the example config's columns and date format (ISO)."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    rows[0] = [EXAMPLE_COLUMNS.get(name, name) for name in rows[0]]
    born = rows[0].index("DOB")
    for row in rows[1:]:
        local = re.fullmatch(r"(\d\d)\.(\d\d)\.(\d{4})", row[born])
        if local:
            row[born] = f"{local[3]}-{local[2]}-{local[1]}"
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)


@dataclass
class Machine:
    """A fresh machine in a scratch root, and a shell on it."""

    root: Root
    shell: Shell
    log: Path  # what the systemctl stand-in was asked
    answer: Path  # what the operator types at systemd-ask-password
    practice: Practice

    def systemctl_calls(self) -> list[str]:
        """Every `systemctl ...` so far."""
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def machine(served: ServedSandbox) -> Iterator[Machine]:
    """A scratch root (outside pytest's 0700 tmp: the service user must reach it) with what
    a fresh Debian has, the EHR export at /srv/ehr-export, and shims for systemd and the
    operator's typing."""
    require_root_and_service_user()
    created = served.admin.create_practice(f"docs-{uuid.uuid4().hex[:8]}")
    practice = Practice(served, created["id"], created["keys"][0]["key"])
    path = Path(tempfile.mkdtemp(prefix="syncd-docs-", dir="/tmp"))
    path.chmod(0o755)
    root = Root(path)
    for directory in ("/etc/tmpfiles.d", "/etc/systemd/system", "/usr/local/bin", "/var/lib"):
        (root / directory).mkdir(parents=True)
    (root / "/var/backups").mkdir(mode=0o755)
    write_export(root / "/srv/ehr-export/patients.csv", PATIENTS)
    tools = path / "test-tools"
    log, answer = tools / "systemctl.log", tools / "typed-key"
    write_shims(tools, ["systemd-ask-password", "systemd-tmpfiles", "systemctl"], log, answer)
    answer.write_text(practice.key + "\n")
    env = {
        # /usr/local/bin of the scratch root: `syncd` is found only where the docs put it.
        "PATH": f"{root / '/usr/local/bin'}:{tools}:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(path),
        "LANG": "C.UTF-8",
        "COLUMNS": "250",
        "SYNCD_VOXARES__BASE_URL": practice.sandbox.base_url,
    }
    config = root / "/etc/voxares-syncd/config.toml"

    def relocate_config(_command: str) -> None:
        if config.exists():
            root.relocate(config)  # the paths `syncd init` wrote, as a chroot would see them

    shell = Shell(
        root,
        env,
        RULES,
        fields={"venv": str(VENV), "tmpfiles": str(shutil.which("systemd-tmpfiles"))},
        after_each=relocate_config,
    )
    existed = Path("/etc/voxares-syncd").exists()
    try:
        yield Machine(root, shell, log, answer, practice)
    finally:
        shutil.rmtree(path)
    assert existed or not Path("/etc/voxares-syncd").exists(), "a step escaped the scratch root"


def install_for_real(machine: Machine) -> list[subprocess.CompletedProcess[str]]:
    """README's "Install for real" block, run as written."""
    [block] = section_blocks(README, INSTALL)
    return machine.shell.run_block(block)


def test_readme_install_for_real_works_as_written(machine: Machine) -> None:
    """The README's install steps, on a fresh machine: the directory, the key file, doctor
    all ok, a dry run, then the first sync; plain `syncd` works after the venv install."""
    results = install_for_real(machine)
    root, valid = machine.root, PATIENTS - len(BROKEN_ROWS)
    outputs = {r.args[-1]: r.stdout for r in results if isinstance(r.args, list)}
    assert stat.S_IMODE((root / "/etc/voxares-syncd").stat().st_mode) == 0o700
    key_file = root / "/etc/voxares-syncd/api-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().strip() == machine.practice.key
    doctor = next(out for line, out in outputs.items() if "syncd doctor" in line)
    lines = doctor.strip().splitlines()
    assert all(line.startswith("ok ") for line in lines), doctor
    assert {"config", "database", "api:patients", "source"} <= {
        line.split()[1].rstrip(":") for line in lines
    }
    dry_run = next(out for line, out in outputs.items() if "--dry-run" in line)
    assert "nothing was sent or written" in dry_run
    assert machine.practice.stats()["patients"] == valid
    database = root / "/var/lib/voxares-syncd/state.db"
    assert stat.S_IMODE(database.stat().st_mode) == 0o600


def test_deploy_readme_systemd_steps_and_the_service_work_as_written(machine: Machine) -> None:
    """deploy/README.md after the README: tmpfiles, the unit, then the service as systemd
    starts it (as nobody, the key only as a credential): it migrates, becomes ready, serves
    /healthz, and every documented command works, as the service user and as root; then the
    export hand-over, the backup and the key rotation, as written."""
    install_for_real(machine)
    root, shell = machine.root, machine.shell
    [block] = section_blocks(DEPLOY_README, SYSTEMD)
    shell.run_block(block)
    assert stat.S_IMODE((root / "/etc/voxares-syncd").stat().st_mode) == 0o755
    key_file = root / "/etc/voxares-syncd/api-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.stat().st_uid == 0
    assert "systemctl enable --now voxares-syncd" in machine.systemctl_calls()

    port = free_port()
    unit = Unit.read(root / "/etc/systemd/system/voxares-syncd.service")
    service = Service(unit, root, {"SYNCD_HEALTH__PORT": str(port)} | base_url(machine))
    assert not service.can_read(key_file), "the service user must not read root's key file"
    config = ("--config", str(root / "/etc/voxares-syncd/config.toml"))

    with service.started(notify_dir=root.path) as daemon:
        daemon.wait_healthz(port)
    database = service.state / "state.db"
    assert database.stat().st_uid == service.uid
    assert stat.S_IMODE(database.stat().st_mode) == 0o600

    # The service user, with the credential: what calls Voxares.
    for command in (("doctor", *config), ("sync", "patients", *config)):
        result = service.syncd(*command)
        assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
    # The service user without any credential: the local commands need no key.
    for command in LOCAL_COMMANDS:
        result = service.syncd(*command, *config, credentials=False)
        assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
    # Root in a shell, as deploy/README says, on the same database.
    status = shell.run("syncd status --config /etc/voxares-syncd/config.toml")
    assert f"patients mirrored: {PATIENTS - len(BROKEN_ROWS)} active" in status.stdout

    # The nightly export reaches the daemon (a changed file, handed over as root).
    export = root / "/srv/ehr-export/patients.csv"
    write_sample_export(export, PATIENTS)
    changed = change_some_rows(export)
    rename_columns(export)
    [block] = section_blocks(DEPLOY_README, EXPORT)
    shell.run_block(block)
    pushed = service.syncd("sync", "patients", *config)
    assert pushed.returncode == 0, pushed.stderr
    assert machine.practice.stats()["patients"] >= PATIENTS - len(BROKEN_ROWS)
    assert changed > 0

    # Backups while the service's database is in place.
    [block] = section_blocks(DEPLOY_README, BACKUP)
    results = shell.run_block(block)
    assert results[-1].stdout.strip() == "ok"
    [backup] = (root / "/var/backups/voxares-syncd").glob("state-*.db")
    with sqlite3.connect(backup) as db:
        assert db.execute("SELECT count(*) FROM patient_mirror").fetchone()[0] > 0

    # Key rotation: a new key typed in, the file replaced, the service restarted.
    new_key = machine.practice.sandbox.admin.issue_key(machine.practice.id, "rotated")
    machine.answer.write_text(new_key + "\n")
    [block] = section_blocks(DEPLOY_README, ROTATION)
    shell.run_block(block)
    assert machine.systemctl_calls()[-1] == "systemctl restart voxares-syncd"
    assert key_file.read_text().strip() == new_key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    with service.started(notify_dir=root.path) as daemon:
        daemon.wait_healthz(port)
    assert (service.credentials / "voxares-api-key").read_text().strip() == new_key
    doctor = service.syncd("doctor", *config)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr

    # The Logs block reads the journal: every line of it is a documented skip.
    [block] = section_blocks(DEPLOY_README, LOGS)
    assert all(r.stderr.startswith("skipped: ") for r in shell.run_block(block))


LOCAL_COMMANDS = [
    ("db", "upgrade"),
    ("status",),
    ("quarantine", "list"),
    ("outbox", "list"),
    ("messages", "list"),
    ("content", "list"),
]


def base_url(machine: Machine) -> dict[str, str]:
    """The served sandbox as Voxares, for the service too."""
    return {"SYNCD_VOXARES__BASE_URL": machine.practice.sandbox.base_url}


def test_every_shell_block_of_the_deploy_readme_is_run_by_a_test() -> None:
    """No ```sh block of deploy/README.md is left out of these tests (or the container's)."""
    covered = {SYSTEMD, EXPORT, BACKUP, LOGS, ROTATION, DOCKER}
    assert {block.heading for block in shell_blocks(DEPLOY_README)} == covered
    assert INSTALL in {block.heading for block in shell_blocks(README)}
