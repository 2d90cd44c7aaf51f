"""The world a benchmark runs in: databases, settings, the served sandbox, process stats.

Everything here is setup; nothing is timed. Databases are created per run and dropped
afterwards (SQLite in a temporary folder, PostgreSQL on 127.0.0.1:5432 with trust auth).
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import socket
import sys
import tempfile
import tomllib
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncd.config import Settings, load_settings
from syncd.sandbox import DEMO_API_KEY
from syncd.sandbox.faults import FaultConfig
from syncd.sandbox.server import ServedSandbox

POSTGRES_ADMIN_URL = os.environ.get(
    "SYNCD_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
RABBITMQ_URL = os.environ.get("SYNCD_BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Effectively no client-side rate limit (the config key takes a positive number only).
UNLIMITED_RPS = 1_000_000.0


def port_open(host: str, port: int) -> bool:
    """Whether something listens on (host, port)."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def sqlite_database(folder: Path) -> Iterator[str]:
    """A fresh SQLite state database URL in `folder` (removed with the folder)."""
    yield f"sqlite:///{folder}/state-{uuid.uuid4().hex[:8]}.db"


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database URL, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"syncd_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def database(kind: str, folder: Path) -> Iterator[str]:
    """A fresh state database of `kind` ("sqlite" or "postgres")."""
    manager = sqlite_database(folder) if kind == "sqlite" else postgres_database()
    with manager as url:
        yield url


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(type(value).__name__)


def _toml(data: Mapping[str, Any], prefix: str = "") -> str:
    scalars = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    out = ([f"[{prefix}]"] if prefix and scalars else []) + scalars
    for key, value in data.items():
        if isinstance(value, dict):
            out.append(_toml(value, f"{prefix}.{key}" if prefix else key))
    return "\n".join(out)


def write_config(folder: Path, config: Mapping[str, Any]) -> Path:
    """Write `config` as a TOML file in `folder`; its path."""
    path = folder / f"config-{uuid.uuid4().hex[:8]}.toml"
    text = _toml(config) + "\n"
    tomllib.loads(text)  # a malformed file is a bench bug: fail here, not in syncd
    path.write_text(text)
    return path


def load_bench_settings(folder: Path, config: Mapping[str, Any], api_key: str) -> Settings:
    """Write `config` as a TOML file and load it the way the CLI does (key from the env)."""
    path = write_config(folder, config)
    return load_settings(path, env={"SYNCD_VOXARES__API_KEY": api_key})


def base_config(
    *, base_url: str, db_url: str, concurrency: int = 16, rps: float = UNLIMITED_RPS
) -> dict[str, Any]:
    """The common part of every benchmark's configuration (every job off)."""
    return {
        "voxares": {
            "base_url": base_url,
            "provider": "bench-ehr",
            "requests_per_second": rps,
            "max_concurrency": concurrency,
            "pool_timeout": 60.0,
        },
        "database": {"url": db_url},
        "logging": {"level": "WARNING"},
        "health": {"enabled": False},
        "patients": {"enabled": False},
        "submissions": {"enabled": False},
        "content": {"enabled": False},
        "messages": {"enabled": False},
    }


def served_sandbox(latency_ms: float = 0.0, **faults: Any) -> ServedSandbox:
    """The sandbox as a subprocess on a loopback port, with a fixed latency (not started)."""
    return ServedSandbox(faults=FaultConfig(latency_ms=latency_ms, **faults))


API_KEY = DEMO_API_KEY


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def own_cpu_seconds() -> float:
    """CPU time of this process (every thread) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Machine:
    """What the figures were measured on."""

    cpus: int
    memory_mb: int
    python: str
    platform: str
    cpu_model: str


def machine() -> Machine:
    """This machine."""
    memory_kb = 0
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return Machine(
        cpus=os.cpu_count() or 0,
        memory_mb=memory_kb // 1024,
        python=sys.version.split()[0],
        platform=platform.platform(),
        cpu_model=model,
    )


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    """A temporary folder for one benchmark's files."""
    with tempfile.TemporaryDirectory(prefix="syncd-bench-") as name:
        yield Path(name)
