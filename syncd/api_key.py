"""The Voxares API key: one order of places, the same for a shell, systemd and Docker.

The key is looked for, in this order, and the first place that has one wins:

1. `SYNCD_VOXARES__API_KEY`, the key itself (explicit, but visible in `systemctl show` and
   `docker inspect`: prefer the next two);
2. the systemd credential `voxares-api-key`, i.e. `$CREDENTIALS_DIRECTORY/voxares-api-key`
   (`LoadCredential=voxares-api-key:/etc/voxares-syncd/api-key` in the unit);
3. the file named by `voxares.api_key_file` (or `SYNCD_VOXARES__API_KEY_FILE`): in a shell
   `/etc/voxares-syncd/api-key`, as `syncd init` writes it; in the container image
   `/run/secrets/voxares-api-key`, a Docker or Compose secret.

A later place is never opened once an earlier one gave the key. That is what lets one config
file serve all three setups: the systemd service runs as a transient user that cannot read
root's 0600 key file and does not need to, because systemd hands it the same key as a
credential, which comes first.

Only the commands that call Voxares ask for the key (`syncd run`, `sync`, `doctor`): the
local ones (status, lists, `db upgrade`) load the configuration without it, so they work on a
host where the key exists only as a credential.

A key file that every user of the machine may read (or write) is refused, as ssh refuses a
private key file others can read: the key opens every patient record of the practice.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from pydantic import SecretStr

from syncd.exceptions import ConfigError

API_KEY_ENV: Final = "SYNCD_VOXARES__API_KEY"
API_KEY_FILE_ENV: Final = "SYNCD_VOXARES__API_KEY_FILE"
API_KEY_CREDENTIAL: Final = "voxares-api-key"
CREDENTIALS_ENV: Final = "CREDENTIALS_DIRECTORY"
# The places, in order, as problems and docs name them.
PLACES: Final = (
    API_KEY_ENV,
    f"the systemd credential {API_KEY_CREDENTIAL}",
    "voxares.api_key_file",
)
NOT_SET: Final = "not set (looked in " + ", then ".join(PLACES) + ")"
_MAX_KEY_FILE_BYTES: Final = 4096


def resolve_api_key(
    *,
    env_key: str | None,
    key_file: str | Path | None,
    key_file_name: str = "voxares.api_key_file",
    environ: Mapping[str, str],
) -> SecretStr:
    """The key from the first place that has it, or a `ConfigError` with one line.

    `env_key`: the value of `SYNCD_VOXARES__API_KEY` ("" counts as unset). `key_file`: the
    configured `voxares.api_key_file`, named `key_file_name` in problems (the variable's
    name when the environment set it).
    """
    if env_key:
        return _one_word(env_key, API_KEY_ENV, "must be one word without spaces")
    credential = _credential_path(environ)
    if credential is not None:
        return _read_key_file(credential, f"{CREDENTIALS_ENV}/{API_KEY_CREDENTIAL}")
    if key_file is not None and str(key_file):
        # An unreadable file says what else was tried, so that "Permission denied" under
        # systemd points at a missing LoadCredential= rather than at the file's mode.
        tried = f" (and neither {API_KEY_ENV} nor {PLACES[1]} is set)"
        return _read_key_file(Path(key_file), key_file_name, unreadable=tried)
    raise ConfigError([f"voxares.api_key: {NOT_SET}"])


def _credential_path(environ: Mapping[str, str]) -> Path | None:
    directory = environ.get(CREDENTIALS_ENV)
    if not directory:
        return None
    path = Path(directory) / API_KEY_CREDENTIAL
    return path if path.exists() else None


def _read_key_file(path: Path, name: str, *, unreadable: str = "") -> SecretStr:
    """Read a key file, refusing one that others may read or write (`unreadable`: added to
    the problem when the file cannot be opened)."""
    try:
        with path.open("rb") as handle:
            mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
            if mode & (stat.S_IROTH | stat.S_IWOTH):
                raise ConfigError(
                    [
                        f"{name}: {path} is open to every user of this machine (mode "
                        f"{mode:04o}) and the key gives access to the practice's patients; "
                        f"like ssh with a private key, syncd refuses it: chmod 0600 {path}"
                    ]
                )
            raw = handle.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            [f"{name}: cannot read {path}: {exc.strerror or type(exc).__name__}{unreadable}"]
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([f"{name}: {path} is not UTF-8 text"]) from None
    if len(raw) > _MAX_KEY_FILE_BYTES:
        raise ConfigError([f"{name}: {path} is too large to be an API key"])
    if not text.strip():
        raise ConfigError([f"{name}: {path} is empty"])
    return _one_word(text, name, f"{path} must hold the key alone (one word, no spaces)")


def _one_word(text: str, name: str, reason: str) -> SecretStr:
    key = text.strip()
    if not key or any(c.isspace() for c in key):
        raise ConfigError([f"{name}: {reason}"])
    return SecretStr(key)
