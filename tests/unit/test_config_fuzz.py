"""Config fuzzing: any broken TOML is refused whole, one `key.path: reason` line per problem.

Hypothesis starts from a valid configuration that uses every section (a CSV source, a
webhook and a file sink, a message source), breaks it in 1-4 places (a wrong type, an
out-of-range number, an unknown key at any level, a bad URL, a bad enum value), writes it as
TOML and loads it. `load_settings` must raise `ConfigError` (never return a half-valid
`Settings`), each of its lines must start with the dotted path of a key that was broken,
every broken key must be reported, and no line may echo a value: neither the API key,
the webhook secret, nor the canary text planted in the broken values.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd.config import load_settings
from syncd.exceptions import ConfigError

API_KEY = "vox-fuzzk1-CanaryKeyMaterial0001"
WEBHOOK_SECRET = "whsec_Q2FuYXJ5V2ViaG9va1NlY3JldDAwMDE="
CANARY = "Canary7Q"  # planted in every broken string value
ENV = {"SYNCD_VOXARES__API_KEY": API_KEY}


def valid_config(tmp: Path) -> dict[str, Any]:
    """A configuration that loads, touching every section."""
    return {
        "voxares": {
            "base_url": "https://api.voxares.com/api/v1/integration",
            "provider": "ehr",
            "requests_per_second": 5.0,
            "max_concurrency": 4,
            "read_timeout": 20.0,
            "retry_attempts": 3,
        },
        "database": {"url": f"sqlite:///{tmp}/state.db", "auto_migrate": True},
        "logging": {"level": "INFO", "format": "json"},
        "health": {"enabled": True, "host": "127.0.0.1", "port": 8787},
        "patients": {
            "interval_seconds": 600.0,
            "default_region": "HR",
            "landline": "drop",
            "invalid_phone": "reject",
            "date_formats": ["%Y-%m-%d"],
            "batch_size": 50,
            "source": {
                "type": "csv",
                "path": "patients.csv",
                "delimiter": ";",
                "columns": {"providerId": "id", "firstName": "first", "lastName": "last"},
            },
        },
        "submissions": {"interval_seconds": 60.0, "page_size": 50, "start_from": "beginning"},
        "outbox": {
            "batch_size": 100,
            "max_attempts": 10,
            "sinks": {
                "crm": {
                    "type": "webhook",
                    "url": "https://crm.example.org/hooks/voxares",
                    "secret": WEBHOOK_SECRET,
                    "events": ["form_submission.*"],
                },
                "archive": {"type": "file", "directory": str(tmp / "events"), "format": "json"},
            },
        },
        "messages": {
            "sources": [
                {
                    "type": "csv",
                    "name": "reminders",
                    "path": "reminders.csv",
                    "template_id": "tpl-1",
                    "key_column": "key",
                    "provider_id_column": "patient",
                }
            ]
        },
        "content": {"enabled": True, "interval_seconds": 3600.0},
    }


# (dotted path, bad value): each breaks exactly that key.
WRONG_TYPES = [
    ("voxares.requests_per_second", f"fast-{CANARY}"),
    ("voxares.max_concurrency", [1, 2]),
    ("voxares.retry_attempts", {"n": 3}),
    ("voxares.read_timeout", True),
    ("health.port", True),
    ("submissions.page_size", False),
    ("outbox.max_attempts", True),
    ("database.auto_migrate", f"yes-{CANARY}"),
    ("health.port", f"{CANARY}"),
    ("health.enabled", 3.5),
    ("patients.batch_size", 2.5),
    ("patients.date_formats", f"%d-{CANARY}"),
    ("patients.source.columns", f"id-{CANARY}"),
    ("submissions.page_size", f"{CANARY}"),
    ("outbox.max_attempts", [f"{CANARY}"]),
    ("outbox.sinks.crm.events", f"form-{CANARY}"),
    ("outbox.sinks.archive.rotate_bytes", f"big-{CANARY}"),
    ("content.enabled", f"{CANARY}"),
    ("messages.sources[0].key_column", 17),
]
OUT_OF_RANGE = [
    ("voxares.requests_per_second", 0.0),
    ("voxares.max_concurrency", 0),
    ("voxares.connect_timeout", -1.0),
    ("voxares.retry_attempts", -3),
    ("health.port", 70000),
    ("health.port", 0),
    ("patients.batch_size", 0),
    ("patients.jitter_seconds", -5.0),
    ("submissions.page_size", 101),
    ("submissions.overlap_seconds", -1.0),
    ("outbox.batch_size", -1),
    ("outbox.retention_days", 0.0),
    ("outbox.sinks.crm.read_timeout", 0.0),
    ("content.interval_seconds", -60.0),
]
BAD_URLS = [
    ("voxares.base_url", f"ftp://{CANARY}.example.org/api"),
    ("voxares.base_url", f"http://{CANARY}.example.org/api/v1/integration"),
    ("voxares.base_url", f"https://{CANARY}.example.org/api?key=1"),
    ("voxares.base_url", f"not a url {CANARY}"),
    ("database.url", f"mysql://{CANARY}@db/syncd"),
    ("database.url", f"{CANARY}"),
    ("outbox.sinks.crm.url", f"http://{CANARY}.example.org/hook"),
    ("outbox.sinks.crm.url", f"//{CANARY}"),
]
BAD_ENUMS = [
    ("logging.level", f"LOUD-{CANARY}"),
    ("logging.format", f"xml-{CANARY}"),
    ("patients.landline", f"keep-{CANARY}"),
    ("patients.invalid_phone", f"fix-{CANARY}"),
    ("patients.missing_rows", f"delete-{CANARY}"),
    ("patients.default_region", f"{CANARY}"),
    ("patients.source.type", f"xlsx-{CANARY}"),
    ("outbox.sinks.crm.format", f"xml-{CANARY}"),
    ("outbox.sinks.archive.start", f"yesterday-{CANARY}"),
    ("submissions.start_from", f"{CANARY}"),
]
TABLES = [
    "",
    "voxares",
    "database",
    "logging",
    "health",
    "patients",
    "patients.source",
    "patients.source.columns",
    "submissions",
    "outbox",
    "outbox.sinks.crm",
    "outbox.sinks.archive",
    "messages.sources[0]",
    "content",
]

bad_value = st.sampled_from(WRONG_TYPES + OUT_OF_RANGE + BAD_URLS + BAD_ENUMS)
unknown_key = st.tuples(
    st.sampled_from(TABLES),
    st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True).map(lambda k: f"zz_{k}"),
    st.one_of(st.integers(), st.text(max_size=10).map(lambda t: t + CANARY), st.booleans()),
).map(lambda t: ((f"{t[0]}.{t[1]}" if t[0] else t[1]), t[2]))
mutations = st.lists(st.one_of(bad_value, unknown_key), min_size=1, max_size=4).filter(
    lambda ms: _independent([path for path, _ in ms])
)


def _independent(paths: list[str]) -> bool:
    """No path repeats or lies inside another (each break is reported on its own)."""
    for i, a in enumerate(paths):
        for b in paths[i + 1 :]:
            if a == b or b.startswith(a + ".") or a.startswith(b + "."):
                return False
    # A broken `patients.source.type` changes which model checks its siblings.
    return not (
        "patients.source.type" in paths
        and any(p.startswith("patients.source.") and p != "patients.source.type" for p in paths)
    )


def _parts(path: str) -> list[str | int]:
    parts: list[str | int] = []
    for chunk in path.split("."):
        if chunk.endswith("]"):
            name, index = chunk[:-1].split("[")
            parts += [name, int(index)]
        else:
            parts.append(chunk)
    return parts


def apply(config: dict[str, Any], path: str, value: Any) -> None:
    """Set `path` (dotted, with [i] list indices) to `value`, creating nothing but the leaf."""
    node: Any = config
    parts = _parts(path)
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


# --- a small TOML writer (tomllib only reads) ----------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # JSON's string escapes are TOML's; TOML also wants DEL escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }"
    raise TypeError(type(value).__name__)


def to_toml(config: dict[str, Any]) -> str:
    """Top-level scalars first, then one [table] per top-level table (nested ones inline)."""
    lines = [
        f"{json.dumps(k)} = {_toml_value(v)}" for k, v in config.items() if not isinstance(v, dict)
    ]
    for name, table in config.items():
        if isinstance(table, dict):
            lines.append(f"[{name}]")
            lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _reports(line: str, path: str) -> bool:
    return line.startswith((f"{path}:", f"{path}.", f"{path}["))


# --- the tests ------------------------------------------------------------------------------


def test_the_unbroken_config_loads(tmp_path: Path) -> None:
    """The base of every fuzzed file is valid, so each problem comes from a mutation."""
    path = tmp_path / "config.toml"
    path.write_text(to_toml(valid_config(tmp_path)), encoding="utf-8")
    settings_ = load_settings(path, ENV)
    assert settings_.outbox.sinks["crm"].type == "webhook"
    assert settings_.messages.sources[0].name == "reminders"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(broken=mutations)
def test_broken_config_is_refused_with_one_line_per_real_problem(
    tmp_path_factory: pytest.TempPathFactory, broken: list[tuple[str, Any]]
) -> None:
    """Every line names a broken key; every broken key is named; no value is echoed."""
    tmp = tmp_path_factory.mktemp("fuzz")
    config = copy.deepcopy(valid_config(tmp))
    for path, value in broken:
        apply(config, path, value)
    file = tmp / "config.toml"
    file.write_text(to_toml(config), encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        load_settings(file, ENV)

    lines = caught.value.problems
    paths = [path for path, _ in broken]
    assert lines
    for line in lines:
        assert any(_reports(line, path) for path in paths), line
        assert "\n" not in line
    for path in paths:
        assert any(_reports(line, path) for line in lines), path
    text = str(caught.value)
    for secret in (API_KEY, WEBHOOK_SECRET, CANARY, "CanaryKeyMaterial"):
        assert secret not in text


def test_cli_run_with_a_bad_config_exits_78_with_one_line_per_problem(tmp_path: Path) -> None:
    """`syncd run --config bad.toml`: exit 78, each problem on its own line, no secret."""
    config = valid_config(tmp_path)
    broken = [
        ("voxares.max_concurrency", 0),
        ("logging.level", f"LOUD-{CANARY}"),
        ("outbox.sinks.crm.url", f"http://{CANARY}.example.org/hook"),
        ("patients.source.zz_typo", 1),
    ]
    for path, value in broken:
        apply(config, path, value)
    file = tmp_path / "bad.toml"
    file.write_text(to_toml(config), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    env["SYNCD_VOXARES__API_KEY"] = API_KEY

    done = subprocess.run(
        [sys.executable, "-m", "syncd.cli", "run", "--config", str(file)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )

    assert done.returncode == 78, done.stderr
    output = done.stdout + done.stderr
    for path, _ in broken:
        assert sum(1 for line in output.splitlines() if path in line) == 1, path
    for secret in (API_KEY, WEBHOOK_SECRET, CANARY):
        assert secret not in output
