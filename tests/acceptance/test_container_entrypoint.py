"""The container image's start, without a container engine: deploy/README.md's Docker steps
as written, with each `docker` command carried out from the Dockerfile itself.

The image is the Dockerfile's final stage read as data: its ENV, USER, WORKDIR, ENTRYPOINT,
CMD, HEALTHCHECK and the files it COPYs from the build context (the entrypoint script); the
venv it builds is the venv running these tests (CI builds the real image: .ci/deploy-checks.sh
container). A scratch root stands in for the host's `/`, and each container gets a root of
its own: `-v` mounts become copies of the host's files and directories (a config file seen
from inside, its paths in the container's root) or a link to the named volume's directory;
`docker run` runs ENTRYPOINT + (its arguments or CMD) as uid:gid 10001 in WORKDIR with the
image's environment, `-d` waits for the HEALTHCHECK command to pass, `docker exec` runs its
command in that container without the entrypoint. Voxares is the served sandbox
(`SYNCD_VOXARES__BASE_URL`), the health port a free one (`SYNCD_HEALTH__PORT`, which the
HEALTHCHECK reads too): the only variables the test adds.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from syncd.sandbox.server import ServedSandbox
from tests.acceptance.conftest import Practice
from tests.acceptance.daemon_process import Daemon, free_port, running
from tests.acceptance.docs_commands import (
    DEPLOY_README,
    ROOT,
    VENV,
    Root,
    Shell,
    section_blocks,
    unprivileged,
    write_shims,
)
from tests.acceptance.test_docs_install import write_export
from tests.conftest import IN_CI

pytestmark = pytest.mark.slow

DOCKER = "Install with Docker"
PATIENTS = 12
# The base image's own PATH (python:3.11-slim) but /usr/local/bin: the host's tools stand for
# the base image's.
BASE_PATH = "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Image:
    """The Dockerfile's final stage, as a container engine would use it."""

    env: dict[str, str]
    user: tuple[int, int]
    workdir: str
    entrypoint: list[str]
    cmd: list[str]
    healthcheck: list[str]
    copies: list[tuple[str, str]]  # (build-context source, image path)

    @classmethod
    def read(cls, dockerfile: Path) -> Image:
        """Parse the final stage of `dockerfile`."""
        text = dockerfile.read_text(encoding="utf-8").replace("\\\n", " ")
        lines = [line.strip() for line in text.splitlines()]
        stage = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")) :]
        instructions: dict[str, list[str]] = {}
        for line in stage:
            word, _, rest = line.partition(" ")
            instructions.setdefault(word, []).append(rest)
        env: dict[str, str] = {}
        for rest in instructions["ENV"]:
            for assignment in shlex.split(rest):
                name, _, value = assignment.partition("=")
                env[name] = value
        [user] = instructions["USER"]
        uid, _, gid = user.partition(":")
        [healthcheck] = instructions["HEALTHCHECK"]
        probe = re.search(r"\bCMD\s+(\[.*\])$", healthcheck)
        assert probe is not None, healthcheck
        copies = [
            (source, target)
            for rest in instructions.get("COPY", [])
            if "--from=" not in rest
            for source, target in [shlex.split(rest)]
        ]
        return cls(
            env=env,
            user=(int(uid), int(gid or uid)),
            workdir=instructions["WORKDIR"][-1],
            entrypoint=json.loads(instructions["ENTRYPOINT"][-1]),
            cmd=json.loads(instructions["CMD"][-1]),
            healthcheck=json.loads(probe.group(1)),
            copies=copies,
        )


@dataclass
class Container:
    """One container: its own root (the image's files, then its mounts) and environment."""

    root: Root
    env: dict[str, str]


@dataclass
class Engine:
    """Carries out `docker` commands (see the module docstring). `host` is the scratch root
    of the host's files; each container gets a root of its own under `work`."""

    host: Root
    image: Image
    extra_env: dict[str, str]
    work: Path
    built: bool = False
    volumes: dict[str, Path] = field(default_factory=dict)
    detached: dict[str, tuple[Daemon, Container]] = field(default_factory=dict)
    stack: ExitStack = field(default_factory=ExitStack)
    results: list[subprocess.CompletedProcess[str]] = field(default_factory=list)

    def docker(self, command: str) -> None:
        """One documented `docker ...` command."""
        args = shlex.split(command)
        assert args[0] == "docker", command
        verb, rest = args[1], args[2:]
        if verb == "build":
            self.built = True
        elif verb == "volume":
            assert rest[0] == "create", command
            self.volumes[rest[1]] = volume = self.work / "volumes" / rest[1]
            volume.mkdir(parents=True)
        elif verb == "run":
            self.run(rest)
        elif verb == "exec":
            daemon, container = self.detached[rest[0]]
            assert daemon.process.poll() is None, "the container is not running"
            self.results.append(self.execute(container, rest[1:]))
        else:
            raise AssertionError(f"no stand-in for `{command}`")

    def create(self) -> Container:
        """A new container's root: the venv the image builds (this test's), what it COPYs,
        and the directories its RUN line makes."""
        assert self.built, "docker run before docker build"
        path = self.work / "containers" / uuid.uuid4().hex[:8]
        path.mkdir(parents=True)
        root = Root(path)
        (root / "/opt").mkdir()
        (root / "/opt/voxares-syncd").symlink_to(VENV)
        for source, target in self.image.copies:
            destination = root / target
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / source, destination)
        (root / "/etc/voxares-syncd").mkdir(parents=True)
        (root / self.image.workdir).parent.mkdir(parents=True, exist_ok=True)
        return Container(root, dict(self.extra_env))

    def run(self, args: list[str]) -> None:
        """`docker run [options] IMAGE [ARGS]`."""
        container = self.create()
        detached, name = False, ""
        while args[0].startswith("-"):
            option = args.pop(0)
            if option in ("-d", "--rm", "--read-only"):
                detached = detached or option == "-d"
            elif option in ("--name", "--restart", "--tmpfs", "-p"):
                value = args.pop(0)
                name = value if option == "--name" else name
            elif option == "-v":
                self.mount(container, args.pop(0))
            elif option == "-e":
                key, _, value = args.pop(0).partition("=")
                container.env[key] = value
            else:
                raise AssertionError(f"no stand-in for docker run {option}")
        args.pop(0)  # the image's name
        argv = self.image.entrypoint + (args or self.image.cmd)
        if not detached:
            self.results.append(self.execute(container, argv))
            return
        daemon = self.stack.enter_context(
            running(
                unprivileged(self.rewrite(container, argv), *self.image.user),
                env=self.environment(container),
                cwd=container.root / self.image.workdir,
                notify_dir=container.root.path,
            )
        )
        self.wait_healthy(daemon, container)
        self.detached[name] = (daemon, container)

    def mount(self, container: Container, spec: str) -> None:
        """`-v SOURCE:TARGET[:ro]`: a named volume, or a copy of a host file or directory
        (a config file is seen from inside: its paths in the container's root)."""
        source, target = spec.split(":")[:2]
        destination = container.root / target
        destination.parent.mkdir(parents=True, exist_ok=True)
        if "/" not in source:
            volume = self.volumes[source]
            destination.symlink_to(volume)
            if not any(volume.iterdir()):
                # A new named volume takes the ownership and mode of the image's directory
                # (RUN install -d -o 10001 -g 10001 -m 0700 /var/lib/voxares-syncd).
                os.chown(volume, *self.image.user)
                volume.chmod(0o700)
            return
        host = self.host / source
        if host.is_dir():
            shutil.copytree(host, destination, dirs_exist_ok=True, copy_function=shutil.copy2)
        else:
            shutil.copy2(host, destination)
            if destination.suffix == ".toml":
                container.root.relocate(destination)
        self.chown_like(host, destination)

    @staticmethod
    def chown_like(host: Path, copy: Path) -> None:
        """Give the copies the owners of the originals (a bind mount shows them as they are)."""
        pairs = [(host, copy)]
        if host.is_dir():
            pairs += [(p, copy / p.relative_to(host)) for p in host.rglob("*")]
        for original, copied in pairs:
            info = original.stat()
            os.chown(copied, info.st_uid, info.st_gid)

    @staticmethod
    def rewrite(container: Container, argv: list[str]) -> list[str]:
        """A command line of the image with its paths in the container's root."""
        return [container.root.rewrite(part) for part in argv]

    def environment(self, container: Container) -> dict[str, str]:
        """The image's ENV (paths in the container's root, $PATH expanded), then -e's."""
        root = container.root
        env = {"HOME": self.image.workdir, "LANG": "C.UTF-8"}
        # The base image's PATH, with its /usr/local/bin (the entrypoint's place) in the root.
        inherited = f"{root / '/usr/local/bin'}:{BASE_PATH}"
        for name, value in self.image.env.items():
            env[name] = root.rewrite(value).replace("$PATH", inherited)
        return env | {k: root.rewrite(v) for k, v in container.env.items()}

    def execute(self, container: Container, argv: list[str]) -> subprocess.CompletedProcess[str]:
        """Run to completion as the image's user, in WORKDIR."""
        return subprocess.run(
            unprivileged(self.rewrite(container, argv), *self.image.user),
            cwd=container.root / self.image.workdir,
            env=self.environment(container),
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    def wait_healthy(self, daemon: Daemon, container: Container, timeout: float = 90) -> None:
        """Until the HEALTHCHECK command exits 0, as `docker ps` would show (healthy)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if daemon.process.poll() is not None:
                raise AssertionError(f"the container exited: {daemon.drain()}")
            if self.execute(container, self.image.healthcheck).returncode == 0:
                return
            time.sleep(0.5)
        raise AssertionError(f"never healthy within {timeout:.0f}s: {daemon.drain()[-2000:]}")


def require_root() -> None:
    """Skip (or, in CI, fail) when this test cannot act as uid 10001."""
    if os.geteuid() == 0 and shutil.which("setpriv") and shutil.which("unshare"):
        return
    reason = "needs root, setpriv and unshare to run the image's commands as uid 10001"
    if IN_CI:
        pytest.fail(f"{reason} (CI=true)")
    pytest.skip(reason)


@pytest.fixture
def host(served: ServedSandbox) -> Iterator[tuple[Shell, Engine, Practice]]:
    """A scratch root with the EHR export, an operator's shell, and the engine stand-in."""
    require_root()
    created = served.admin.create_practice(f"docker-{uuid.uuid4().hex[:8]}")
    practice = Practice(served, created["id"], created["keys"][0]["key"])
    path = Path(tempfile.mkdtemp(prefix="syncd-docker-", dir="/tmp"))
    path.chmod(0o755)
    root = Root(path)
    write_export(root / "/srv/ehr-export/patients.csv", PATIENTS)
    work = path / "test-tools"
    write_shims(work, ["systemd-ask-password"], work / "calls.log", work / "typed-key")
    (work / "typed-key").write_text(practice.key + "\n")
    engine = Engine(
        root,
        Image.read(ROOT / "Dockerfile"),
        {
            "SYNCD_VOXARES__BASE_URL": served.base_url,
            "SYNCD_HEALTH__PORT": str(free_port()),
        },
        work,
    )
    shell_env = {"PATH": f"{work}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(path)}
    shell = Shell(root, shell_env, [], fields={})
    try:
        with engine.stack:
            yield shell, engine, practice
    finally:
        shutil.rmtree(path)


def run_block(shell: Shell, engine: Engine, index: int) -> None:
    """The index-th ```sh block under "Install with Docker": docker lines through the
    stand-in, the rest through the shell."""
    block = section_blocks(DEPLOY_README, DOCKER)[index]
    for command in block.commands():
        if command.startswith("docker "):
            engine.docker(command)
        else:
            shell.run(command)


def test_documented_docker_steps_start_on_an_empty_volume(
    host: tuple[Shell, Engine, Practice],
) -> None:
    """deploy/README's Docker steps as written: the container comes up on an empty volume
    (the entrypoint migrates first), passes its HEALTHCHECK as uid 10001 with the key as a
    Docker secret, `docker exec ... status` works, and the documented one-off commands work,
    `quarantine list` without any key."""
    shell, engine, practice = host
    run_block(shell, engine, 0)
    volume = engine.volumes["syncd-state"]
    database = volume / "state.db"
    assert database.stat().st_uid == 10001
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    [status] = engine.results
    assert status.returncode == 0, status.stdout + status.stderr
    assert "patients mirrored:" in status.stdout
    key = engine.host / "/srv/syncd/api-key"
    assert (key.stat().st_uid, stat.S_IMODE(key.stat().st_mode)) == (10001, 0o600)

    run_block(shell, engine, 1)
    quarantine, doctor = engine.results[1:]
    assert quarantine.returncode == 0, quarantine.stdout + quarantine.stderr
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert all(line.startswith("ok ") for line in doctor.stdout.strip().splitlines())
    assert practice.stats()["requests"], "the key from the secret reached this practice"


def test_one_off_commands_on_an_empty_volume_create_nothing(
    host: tuple[Shell, Engine, Practice],
) -> None:
    """Through the entrypoint, only `run` migrates: `status` on an empty volume says to run
    `syncd db upgrade` and leaves the volume empty; `db upgrade` then creates the database."""
    _, engine, _ = host
    engine.docker("docker build -t voxares-syncd .")
    engine.docker("docker volume create syncd-state")
    volume = engine.volumes["syncd-state"]
    config = engine.host / "/srv/syncd/config.toml"
    config.parent.mkdir(parents=True)
    shutil.copy2(ROOT / "config.example.toml", config)
    mounts = "-v syncd-state:/var/lib/voxares-syncd "
    mounts += "-v /srv/syncd/config.toml:/etc/voxares-syncd/config.toml:ro"
    engine.docker(
        f"docker run --rm {mounts} voxares-syncd status --config /etc/voxares-syncd/config.toml"
    )
    [status] = engine.results
    assert status.returncode == 2  # critical, as a monitoring check
    assert "run `syncd db upgrade`" in status.stderr
    assert not any(volume.iterdir())
    engine.docker(
        f"docker run --rm {mounts} voxares-syncd db upgrade --config /etc/voxares-syncd/config.toml"
    )
    upgrade = engine.results[-1]
    assert upgrade.returncode == 0, upgrade.stderr
    assert (volume / "state.db").stat().st_uid == 10001
