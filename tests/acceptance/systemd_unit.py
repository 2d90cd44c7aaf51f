"""Starting deploy/systemd/voxares-syncd.service the way systemd would, without systemd.

What the unit asks of systemd and matters to syncd is done by hand, from the unit file
itself: the credentials of `LoadCredential=` copied into a private directory readable by the
service user only (`$CREDENTIALS_DIRECTORY`), the `StateDirectory=` given to that user with
its mode, `Environment=`, `UMask=`, and the `ExecStartPre=`/`ExecStart=` lines run as an
unprivileged user standing in for `DynamicUser=` (`nobody`, no groups, no capabilities), so
the process cannot read root's files, exactly like the real service.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.acceptance.daemon_process import Daemon, running
from tests.acceptance.docs_commands import Root, unprivileged, user_ids

SERVICE_USER = "nobody"


@dataclass(frozen=True)
class Unit:
    """The [Service] settings of a unit file: each key's values, in order."""

    name: str
    service: dict[str, list[str]]

    @classmethod
    def read(cls, path: Path) -> Unit:
        """Parse `path` (continuation lines and comments handled)."""
        section = ""
        service: dict[str, list[str]] = {}
        for raw in path.read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            if section == "Service":
                key, _, value = line.partition("=")
                service.setdefault(key.strip(), []).append(value.strip())
        return cls(path.name, service)

    def one(self, key: str) -> str:
        """The single value of `key`."""
        [value] = self.service[key]
        return value

    def commands(self, key: str) -> list[list[str]]:
        """The command lines of an Exec key, without systemd's prefix characters."""
        return [shlex.split(value.lstrip("-@:+!")) for value in self.service.get(key, [])]

    def environment(self) -> dict[str, str]:
        """The `Environment=` assignments."""
        env: dict[str, str] = {}
        for value in self.service.get("Environment", []):
            for assignment in shlex.split(value):
                name, _, setting = assignment.partition("=")
                env[name] = setting
        return env

    def credentials(self) -> dict[str, str]:
        """`LoadCredential=NAME:PATH` as {name: path}."""
        pairs = (value.split(":", 1) for value in self.service.get("LoadCredential", []))
        return {name: path for name, path in pairs}


class Service:
    """One unit, started in a scratch root as systemd would start it (see the module doc)."""

    def __init__(self, unit: Unit, root: Root, extra_env: dict[str, str]) -> None:
        self.unit = unit
        self.root = root
        self.extra_env = extra_env
        self.uid, self.gid = user_ids(SERVICE_USER)
        self.credentials = root / f"/run/credentials/{unit.name}"
        self.state = root / f"/var/lib/{unit.one('StateDirectory')}"

    def prepare(self) -> None:
        """What systemd does before ExecStartPre: credentials, then the state directory."""
        if self.credentials.exists():
            shutil.rmtree(self.credentials)
        self.credentials.mkdir(parents=True, mode=0o500)
        for name, source in self.unit.credentials().items():
            target = self.credentials / name
            # systemd reads the file as root: its mode does not matter to the service.
            shutil.copyfile(self.root / source, target)
            os.chown(target, self.uid, self.gid)
            target.chmod(0o400)
        os.chown(self.credentials, self.uid, self.gid)
        # A directory made by root (`syncd db upgrade` before the first start) is handed to
        # the service user, recursively, as systemd does for a StateDirectory= it adopts.
        self.state.mkdir(parents=True, exist_ok=True)
        for path in [self.state, *self.state.rglob("*")]:
            os.chown(path, self.uid, self.gid, follow_symlinks=False)
        self.state.chmod(int(self.unit.one("StateDirectoryMode"), 8))

    def env(self, *, credentials: bool = True) -> dict[str, str]:
        """The service's environment (a clean one, as systemd gives)."""
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/"}
        env |= {k: self.root.rewrite(v) for k, v in self.unit.environment().items()}
        if credentials:
            env["CREDENTIALS_DIRECTORY"] = str(self.credentials)
        return env | self.extra_env

    def argv(self, command: list[str]) -> list[str]:
        """A unit command line with its paths in the scratch root."""
        return [self.root.rewrite(part) for part in command]

    def umask(self) -> int:
        """The unit's `UMask=`."""
        return int(self.unit.one("UMask"), 8)

    def run(self, argv: list[str], *, credentials: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command to completion as the service user, with the service's environment."""
        return subprocess.run(
            unprivileged(argv, self.uid, self.gid, umask=self.umask()),
            cwd=self.root.path,
            env=self.env(credentials=credentials),
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    def start_pre(self) -> None:
        """Each ExecStartPre= line, which must succeed."""
        for command in self.unit.commands("ExecStartPre"):
            result = self.run(self.argv(command))
            assert result.returncode == 0, f"ExecStartPre {command}: {result.stderr}"

    @contextmanager
    def started(self, notify_dir: Path) -> Iterator[Daemon]:
        """prepare, ExecStartPre, then ExecStart until READY=1; SIGTERM (exit 0) afterwards."""
        self.prepare()
        self.start_pre()
        [command] = self.unit.commands("ExecStart")
        with running(
            unprivileged(self.argv(command), self.uid, self.gid, umask=self.umask()),
            env=self.env(),
            cwd=self.root.path,
            notify_dir=notify_dir,
        ) as daemon:
            daemon.wait_ready()
            yield daemon

    def syncd(self, *args: str, credentials: bool = True) -> subprocess.CompletedProcess[str]:
        """`syncd ARGS` as the service user, with the unit's own executable."""
        [command] = self.unit.commands("ExecStart")
        return self.run([self.argv(command)[0], *args], credentials=credentials)

    def can_read(self, path: Path) -> bool:
        """Whether the service user can read `path` (tried for real, not computed)."""
        result = subprocess.run(
            unprivileged(["cat", str(path)], self.uid, self.gid), capture_output=True, check=False
        )
        return result.returncode == 0
