"""Reusable field types and checks for the configuration models (`syncd.config`).

Each check raises `problem(key, reason)`, a pydantic error that `syncd.config_errors` turns
into one `key.path: reason` line. Reasons never quote the value: it may be a secret.
"""

from __future__ import annotations

import codecs
import importlib.util
import ipaddress
import os
import stat
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from syncd.state.db import database_url_problem

# The pydantic error type of `problem`: its context carries the key and the reason.
ERROR_TYPE: Final = "syncd_config"
_LOOPBACK_NAMES: Final = frozenset({"localhost"})


class Section(BaseModel):
    """A table of the TOML file: unknown keys are errors, values cannot change afterwards."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def problem(key: str, reason: str) -> PydanticCustomError:
    """A validation error about `key` (relative to the model raising it; "" for itself)."""
    return PydanticCustomError(ERROR_TYPE, "{reason}", {"key": key, "reason": reason})


# --- reusable field types and checks --------------------------------------------------------


def not_bool(value: Any) -> Any:
    """Numbers only: pydantic would read `true` as 1 (a one-second timeout, port 1)."""
    if isinstance(value, bool):
        raise problem("", "must be a number, not true or false")
    return value


Number = BeforeValidator(not_bool)
PositiveFloat = Annotated[float, Number, Field(gt=0)]
NonNegativeFloat = Annotated[float, Number, Field(ge=0)]
PositiveInt = Annotated[int, Number, Field(ge=1)]
NonEmptyStr = Annotated[str, Field(min_length=1)]


def check_name(value: str) -> str:
    """Names of sources and sinks end up in the database (64 chars) and in metrics labels."""
    ok = 0 < len(value) <= 64 and value[0].isascii() and value[0].isalnum()
    if not ok or not all(c.isascii() and (c.isalnum() or c in "-_") for c in value):
        raise problem("", "must be 1-64 of a-z, 0-9, '-', '_', starting with a letter or digit")
    if value != value.lower():
        raise problem("", "must be lower case (environment overrides are case-insensitive)")
    return value


def check_encoding(value: str) -> str:
    try:
        codecs.lookup(value)
    except LookupError:
        raise problem("", "unknown text encoding") from None
    return value


def check_delimiter(value: str) -> str:
    if len(value) != 1:
        raise problem("", "must be exactly one character")
    return value


def is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_http_url(value: str) -> str:
    """https, or http to a loopback host only (anything else would carry patient data or
    the key in clear text)."""
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        raise problem("", "not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise problem("", "must be an https:// URL")
    if parts.scheme == "http" and not is_loopback(host):
        raise problem("", "must use https (http only for localhost, 127.0.0.1 or ::1)")
    return value


def check_database_url(value: str) -> str:
    reason = database_url_problem(value)
    if reason:
        raise problem("", reason)
    return value


def check_any_database_url(value: str) -> str:
    """A source database may be anything SQLAlchemy can open (its driver is checked later)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(value)
    except ArgumentError:
        raise problem("", "not a valid database URL (dialect+driver://user@host/db)") from None
    return value


def needs_module(module: str, extra: str, key: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise problem(key, f"needs the optional dependency: pip install 'voxares-syncd[{extra}]'")


def open_to_everyone(fd: int, path: Path) -> str | None:
    """Why the open secret file `fd` (at `path`) is refused, or None: every user of the
    machine may read or replace it. Checked on the open file, not the path (no race)."""
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if not mode & (stat.S_IROTH | stat.S_IWOTH):
        return None
    return (
        f"{path} is open to every user of this machine (mode {mode:04o}); "
        f"syncd refuses a secret anyone can read: chmod 0600 {path}"
    )


def read_secret_file(path: Path, key: str) -> str:
    """Read a secret (a signing secret, a token) from a file only its owner and group may
    read: a file open to every user is refused, as the API key file is (and as ssh refuses a
    private key), naming the key and the chmod that fixes it, never the contents."""
    try:
        with path.open("rb") as handle:
            exposed = open_to_everyone(handle.fileno(), path)
            if exposed is not None:
                raise problem(key, exposed)
            text = handle.read().decode("utf-8").strip()
    except OSError as exc:
        raise problem(key, f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise problem(key, f"{path} is not UTF-8 text") from None
    if not text:
        raise problem(key, f"{path} is empty")
    return text
