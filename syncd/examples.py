"""The documented example configuration, shipped inside the package for `syncd init`."""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

from syncd.config import DEFAULT_API_KEY_FILE


def example_config() -> str:
    """The text of `config.example.toml` (every key, documented)."""
    return files("syncd").joinpath("data/config.example.toml").read_text(encoding="utf-8")


def write_example_config(path: Path) -> list[str]:
    """Write the example to `path`, never over an existing file; return what was done.

    A missing directory is created mode 0700 (it will hold the key file too). The file is
    0644: it holds no secret, and the systemd service, a transient user, must read it.
    Raises `FileExistsError` when `path` exists.
    """
    done = []
    directory = path.parent
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
        done.append(f"created {directory} (mode 0700)")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(fd, 0o644)  # whatever the umask: see above
        handle.write(example_config())
    done.append(f"wrote {path} (mode 0644): every key with its default, no secret")
    done.append(
        f"next: put the API key alone in {DEFAULT_API_KEY_FILE} (mode 0600; "
        "voxares.api_key_file), set [patients.source] to your EHR export, "
        f"then run `syncd doctor --config {path}`"
    )
    return done
