"""Running the shell steps of README.md and deploy/README.md as written, in a scratch root.

The commands are read from the documents' fenced ```sh blocks, so a test that runs them fails
as soon as a document and the code disagree. Only two things change on the way:

- absolute paths under /etc, /var, /opt, /usr, /run and /srv are moved under a temporary root
  (`Root.rewrite`), in the commands and in the config files they write, as a chroot would;
- the few steps that need a real systemd, a human or a network install are replaced, each
  by a rule the calling test states explicitly (`Rule`), and everything else runs as written.
"""

from __future__ import annotations

import os
import pwd
import re
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DEPLOY_README = ROOT / "deploy" / "README.md"

_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>\w*)\s*$")
_HEADING = re.compile(r"^(#+)\s+(.*?)\s*$")
# The top-level directories of an installation: what a chroot would relocate.
_SYSTEM_DIRS = ("etc", "var", "opt", "usr", "run", "srv")


@dataclass(frozen=True)
class Block:
    """One fenced shell block and the heading it sits under."""

    heading: str
    text: str

    def commands(self) -> list[str]:
        """Its commands: continuation lines joined, blank and comment-only lines dropped."""
        result: list[str] = []
        pending = ""
        for line in self.text.splitlines():
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            command = (pending + line).strip()
            pending = ""
            if command and not command.startswith("#"):
                result.append(command)
        return result


def shell_blocks(document: Path) -> list[Block]:
    """Every ```sh block of a Markdown document, in order, with its nearest heading."""
    blocks: list[Block] = []
    heading = ""
    inside: list[str] | None = None
    indent = ""
    for line in document.read_text(encoding="utf-8").splitlines():
        fence = _FENCE.match(line)
        if inside is not None:
            if fence and not fence.group("lang"):
                blocks.append(Block(heading, textwrap.dedent("\n".join(inside))))
                inside = None
            else:
                inside.append(line.removeprefix(indent))
            continue
        if fence and fence.group("lang") == "sh":
            inside, indent = [], fence.group("indent")
            continue
        found = _HEADING.match(line)
        if found:
            heading = found.group(2)
    assert inside is None, f"unclosed code block in {document}"
    return blocks


def section_blocks(document: Path, heading: str) -> list[Block]:
    """The ```sh blocks under one heading; at least one must exist."""
    blocks = [b for b in shell_blocks(document) if b.heading == heading]
    assert blocks, f"no sh block under '{heading}' in {document.name}"
    return blocks


class Root:
    """A scratch root standing in for `/` (paths under it are what a chroot would see)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        dirs = "|".join(_SYSTEM_DIRS)
        self._pattern = re.compile(rf"(?<![\w.~/$-])/(?=(?:{dirs})/)")
        # sqlite:////var/lib/...: the fourth slash starts the path.
        self._sqlite = re.compile(rf"sqlite:////(?=(?:{dirs})/)")

    def __truediv__(self, absolute: str) -> Path:
        """The scratch path for an absolute path of the documents."""
        return self.path / absolute.lstrip("/")

    def rewrite(self, text: str) -> str:
        """`text` with every absolute installation path moved under the root (idempotent)."""
        prefix = str(self.path)

        def move(match: re.Match[str]) -> str:
            if text.startswith(prefix, match.start()):
                return match.group(0)  # already under the root
            return prefix + "/"

        moved = self._pattern.sub(move, text)
        return self._sqlite.sub(f"sqlite:///{prefix}/", moved)

    def relocate(self, file: Path) -> None:
        """Rewrite a file the documents' commands wrote (a config naming absolute paths)."""
        file.write_text(self.rewrite(file.read_text(encoding="utf-8")), encoding="utf-8")


@dataclass(frozen=True)
class Rule:
    """How the test runs a command that cannot run as written here, and why."""

    pattern: str  # a regular expression matched against the whole command
    replacement: str | None  # a command, formatted with `Shell.fields` and {root}; None skips
    why: str

    def applies(self, command: str) -> bool:
        """Whether this rule is for `command`."""
        return re.fullmatch(self.pattern, command) is not None


@dataclass
class Shell:
    """Runs documented commands in the scratch root, recording each one and its output."""

    root: Root
    env: dict[str, str]
    rules: list[Rule]
    fields: dict[str, str]
    cwd: Path = ROOT
    after_each: Callable[[str], None] | None = None

    def run_block(self, block: Block) -> list[subprocess.CompletedProcess[str]]:
        """Run each command of `block`; fail at the first that exits non-zero."""
        return [self.run(command) for command in block.commands()]

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        """Run one documented command (rewritten, or replaced by its rule)."""
        line = command
        for rule in self.rules:
            if rule.applies(command):
                if rule.replacement is None:
                    return subprocess.CompletedProcess(command, 0, "", f"skipped: {rule.why}")
                line = rule.replacement.format(root=self.root.path, **self.fields)
                break
        else:
            line = self.root.rewrite(command)
        result = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", line],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, (
            f"`{command}` (run as `{line}`) exited {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}"
        )
        if self.after_each is not None:
            self.after_each(command)
        return result


# The virtualenv running these tests: the "installed" /opt/voxares-syncd.
VENV = Path(sys.prefix)


def write_shims(directory: Path, names: Iterable[str], log: Path, answer: Path) -> None:
    """Stand-ins for tools that need a running systemd or a human at the keyboard.

    `systemd-ask-password` prints the content of `answer` (what the operator types);
    `systemd-tmpfiles` refuses to run: a rule must call the real tool with `--root=`, which
    would otherwise change this machine's /etc; `systemctl` and anything else named only
    records its arguments in `log`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name == "systemd-ask-password":
            body = f'cat "{answer}"\n'
        elif name == "systemd-tmpfiles":
            body = "echo 'systemd-tmpfiles without --root= would change this machine' >&2\nexit 1\n"
        else:
            body = f'echo "{name} $*" >> "{log}"\n'
        shim = directory / name
        shim.write_text(f"#!/bin/sh\n{body}", encoding="utf-8")
        shim.chmod(0o755)


def user_ids(name: str) -> tuple[int, int]:
    """uid and gid of a local user."""
    entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def _hidden_ancestor(path: Path, uid: int, gid: int) -> Path | None:
    """The first directory above `path` that uid:gid (no groups) may not search, if any."""
    for parent in reversed(path.parents):
        info = parent.stat()
        mode = info.st_mode
        allowed = (
            (info.st_uid == uid and mode & stat.S_IXUSR)
            or (info.st_gid == gid and mode & stat.S_IXGRP)
            or mode & stat.S_IXOTH
        )
        if not allowed:
            return parent
    return None


def unprivileged(argv: list[str], uid: int, gid: int, *, umask: int | None = None) -> list[str]:
    """`argv` run as uid:gid with no groups and no capabilities, as systemd runs a service.

    The interpreter of these tests may live under a home the user cannot enter (pyenv in
    /root, mode 0700). Then the command runs in a private mount namespace where that one
    directory is an empty tmpfs holding only the interpreter's tree: the user still cannot
    read anything else of it, and nothing changes outside the namespace.
    """
    interpreter = Path(os.path.realpath(sys.base_prefix))
    blocked = _hidden_ancestor(interpreter, uid, gid)
    drop = [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={gid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
    ]
    mask = f"umask {umask:03o} && " if umask is not None else ""
    if blocked is None:
        return ["sh", "-c", f'{mask}exec "$@"', "sh", *drop, *argv]
    child = blocked / interpreter.relative_to(blocked).parts[0]
    script = (
        f'keep=$(mktemp -d) && mount --bind {child} "$keep" && '
        f"mount -t tmpfs -o mode=0755 tmpfs {blocked} && mkdir {child} && "
        f'mount --move "$keep" {child} && rmdir "$keep" && {mask}exec "$@"'
    )
    namespace = ["unshare", "--mount", "--propagation", "private"]
    return [*namespace, "sh", "-c", script, "sh", *drop, *argv]
