"""Fixtures for the CLI acceptance tests: the real `syncd` command as a subprocess, a served
sandbox on a loopback port, and a config file pointing one at the other.

Each test gets its own sandbox practice and API key, so one served sandbox (a process that
takes about a second to start) serves the whole session without tests seeing each other.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncd.sandbox.server import ServedSandbox
from tests import config_files

# The provider name syncd pushes under when `voxares.provider` is not set.
PROVIDER = "voxares-syncd"


def syncd_command(*args: str) -> list[str]:
    """The command line running `syncd ARGS` with this interpreter."""
    return [sys.executable, "-m", "syncd.cli", *args]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a `syncd` subprocess: ours without any SYNCD_* variable, plus
    `extra` (so a stray SYNCD_CRASH_AT or SYNCD_CONFIG never leaks into a test)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class Practice:
    """A practice of the served sandbox, with an all-scopes API key."""

    sandbox: ServedSandbox
    id: str
    key: str

    def stats(self) -> dict[str, Any]:
        """The sandbox's counters for this practice."""
        return self.sandbox.admin.stats(self.id, fingerprints=False)

    def patient(self, provider_id: str) -> dict[str, Any] | None:
        """The patient the sandbox holds under (PROVIDER, provider_id), or None."""
        with httpx.Client(
            base_url=self.sandbox.base_url,
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=30,
        ) as api:
            response = api.get(f"/patients/{PROVIDER}/{provider_id}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body


@dataclass
class Workspace:
    """A folder holding one installation: config file, CSV export, SQLite state file."""

    dir: Path
    practice: Practice

    @property
    def config(self) -> Path:
        """The config file's path."""
        return self.dir / "config.toml"

    @property
    def state_db(self) -> Path:
        """The SQLite state file's path."""
        return self.dir / "state.db"

    @property
    def export(self) -> Path:
        """The CSV export's path."""
        return self.dir / "ehr-export.csv"

    def env(self, **extra: str) -> dict[str, str]:
        """The subprocess environment: the API key in SYNCD_VOXARES__API_KEY, plus `extra`."""
        return clean_env(SYNCD_VOXARES__API_KEY=self.practice.key, **extra)

    def write_config(self, *, submissions: bool = False, extra: str = "") -> Path:
        """Write a config for a CSV export and the served sandbox; `extra` is appended."""
        self.config.write_text(
            config_text(
                base_url=self.practice.sandbox.base_url,
                directory=self.dir,
                submissions=submissions,
            )
            + extra,
            encoding="utf-8",
        )
        return self.config

    def run(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run `syncd ARGS --config <config>` to completion."""
        return subprocess.run(
            syncd_command(*args, "--config", str(self.config)),
            cwd=self.dir,
            env=self.env() if env is None else env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def config_text(*, base_url: str, directory: Path, submissions: bool) -> str:
    """A config file for a CSV export in `directory`, against the API at `base_url`.

    Fast client settings (a loopback sandbox needs no rate limit), JSON logs on stderr.
    """
    return config_files.render(
        {
            **config_files.installation(
                base_url=base_url, directory=directory, client=config_files.FAST_CLIENT
            ),
            **config_files.csv_patients(
                {
                    "default_region": "HR",
                    "date_formats": ["%Y-%m-%d", "%d.%m.%Y"],
                    "batch_size": 40,
                },
                name="ehr-export",
                path=directory / "ehr-export.csv",
                columns={
                    "providerId": "PatientID",
                    "firstName": "FirstName",
                    "lastName": "LastName",
                    "mobileNumber": "MobilePhone",
                    "email": "Email",
                    "dateOfBirth": "BirthDate",
                },
            ),
            "submissions": {
                "enabled": submissions,
                "interval_seconds": 1,
                "overlap_seconds": 5,
                "settle_seconds": 0,
                "page_size": 20,
                "max_window_items": 2000,
                "detail_concurrency": 4,
            },
        }
    )


@pytest.fixture(scope="session")
def served() -> Iterator[ServedSandbox]:
    """One served sandbox for the session (tests isolate themselves by practice)."""
    with ServedSandbox(seed=11) as sandbox:
        yield sandbox


@pytest.fixture
def practice(served: ServedSandbox) -> Practice:
    """A new practice with one all-scopes key, for this test only."""
    created = served.admin.create_practice(f"clinic-{uuid.uuid4().hex[:8]}")
    return Practice(served, created["id"], created["keys"][0]["key"])


@pytest.fixture
def workspace(tmp_path: Path, practice: Practice) -> Workspace:
    """An installation folder with a config for a CSV export and the served sandbox."""
    ws = Workspace(tmp_path, practice)
    ws.write_config()
    return ws
