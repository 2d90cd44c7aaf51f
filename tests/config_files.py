"""The config files the test installations write: their shared tables, and one renderer.

Used by the acceptance workspace (`tests/acceptance/conftest.py`), the crash harness
(`tests/acceptance/crash_harness.py`) and the fault soak (`scripts/fault_soak.py`). A config
is a mapping of table names (dotted, as in their `[header]`) to their keys; `render` writes it
as TOML, one `key = value` a line, so a test may still edit the text it returns (replace
`[health]\\nenabled = false\\n`, say) or append tables of its own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

Table = Mapping[str, Any]
Config = Mapping[str, Table]

# A loopback sandbox needs no rate limit, and short retries keep a test short.
FAST_CLIENT: Final[Table] = {
    "requests_per_second": 2000,
    "max_concurrency": 16,
    "retry_initial_seconds": 0.05,
    "retry_max_backoff_seconds": 0.5,
}

# The columns of the synthetic CSV exports (id,first,last,mobile,email,dob) that the crash
# harness, the fault soak and the CSV source and push tests write.
SHORT_COLUMNS: Final[Mapping[str, str]] = {
    "providerId": "id",
    "firstName": "first",
    "lastName": "last",
    "mobileNumber": "mobile",
    "email": "email",
    "dateOfBirth": "dob",
}


def installation(
    *, base_url: str, directory: Path, client: Table, json_logs: bool = True
) -> dict[str, Table]:
    """The tables every test installation has: `[voxares]` at `base_url` with `client`'s
    settings, a SQLite state file in `directory`, JSON logs at INFO (when `json_logs`), and
    the health endpoint and content mirror off."""
    config: dict[str, Table] = {
        "voxares": {"base_url": base_url, **client},
        "database": {"url": f"sqlite:///{directory.as_posix()}/state.db"},
    }
    if json_logs:
        config["logging"] = {"level": "INFO", "format": "json"}
    config["health"] = {"enabled": False}
    config["content"] = {"enabled": False}
    return config


def csv_patients(patients: Table, *, name: str, path: Path, columns: Table) -> dict[str, Table]:
    """`[patients]` with `patients`' settings, reading the CSV export at `path`."""
    return {
        "patients": patients,
        "patients.source": {"type": "csv", "name": name, "path": path.as_posix()},
        "patients.source.columns": columns,
    }


def render(config: Config) -> str:
    """`config` as TOML text: a `[table]` header, its keys one a line, a blank line after."""
    return "".join(
        f"[{name}]\n" + "".join(f"{key} = {_value(value)}\n" for key, value in table.items()) + "\n"
        for name, table in config.items()
    )


def write(path: Path, config: Config) -> Path:
    """Write `config` to `path` as TOML; the path."""
    path.write_text(render(config), encoding="utf-8")
    return path


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")
