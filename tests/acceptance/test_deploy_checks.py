"""The fast parts of .ci/deploy-checks.sh (hadolint, systemd-analyze) pass, and can fail.

The slow `image` part (a fresh venv and `pip install`) and the `container` part (the real
image, built with buildah) run in .ci/run, not here; only their early failures are tested.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_FILES = (".ci/deploy-checks.sh", "Dockerfile", ".dockerignore", ".hadolint.yaml")


def require_systemd_analyze() -> None:
    """Skip (or, in CI, fail) when systemd-analyze is not installed."""
    if shutil.which("systemd-analyze"):
        return
    if IN_CI:
        pytest.fail("systemd-analyze is not installed (CI=true: a missing tool is a failure)")
    pytest.skip("systemd-analyze is not installed")


def run_checks(root: Path, *parts: str, ci: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run deploy-checks.sh from `root` with this interpreter's virtualenv first on PATH
    (`ci`: the value of $CI for it, default: ours)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("VIRTUAL_ENV", None)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        ["bash", str(root / ".ci/deploy-checks.sh"), *parts],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of the deployment files that a test may break."""
    for name in DEPLOY_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    """Replace one exact line fragment in a file, failing if it is not there."""
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new))


def test_fast_deploy_checks_pass() -> None:
    """hadolint and systemd-analyze (verify, security <= 2.0, tmpfiles) pass on the repo."""
    require_systemd_analyze()
    result = run_checks(ROOT, "hadolint", "systemd")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all passed: hadolint systemd" in result.stdout
    assert "Overall exposure level for voxares-syncd.service" in result.stdout


def test_missing_healthcheck_fails_hadolint(checkout: Path) -> None:
    """A runtime stage without HEALTHCHECK fails the lint (DL3057 is enabled)."""
    dockerfile = checkout / "Dockerfile"
    lines = dockerfile.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("HEALTHCHECK"))
    del lines[start : start + 2]  # the instruction and its continuation line
    dockerfile.write_text("\n".join(lines) + "\n")

    result = run_checks(checkout, "hadolint")

    assert result.returncode != 0
    assert "DL3057" in result.stdout + result.stderr


def test_weakened_unit_fails_security_threshold(checkout: Path) -> None:
    """Dropping the sandboxing directives pushes exposure over 2.0 and fails the check."""
    require_systemd_analyze()
    unit = checkout / "deploy/systemd/voxares-syncd.service"
    text = unit.read_text()
    head, _, _ = text.partition("# Hardening.")
    unit.write_text(head + "\n[Install]\nWantedBy=multi-user.target\n")

    result = run_checks(checkout, "systemd")

    assert result.returncode != 0
    assert "exposure of deploy/systemd/voxares-syncd.service is over 2.0" in result.stderr


def test_unknown_directive_fails_verify(checkout: Path) -> None:
    """A misspelt directive, which systemd-analyze verify only warns about, fails the check."""
    require_systemd_analyze()
    edit(checkout / "deploy/systemd/voxares-syncd.service", "UMask=0077", "UMaks=0077")

    result = run_checks(checkout, "systemd")

    assert result.returncode != 0
    assert "Unknown key 'UMaks'" in result.stderr


def test_unknown_part_is_an_error(checkout: Path) -> None:
    """Asking for a part that does not exist fails instead of passing vacuously."""
    result = run_checks(checkout, "hadolnt")
    assert result.returncode != 0
    assert "unknown part 'hadolnt'" in result.stderr


def test_copy_source_excluded_by_dockerignore_fails(checkout: Path) -> None:
    """A Dockerfile COPY source that .dockerignore leaves out fails before any install."""
    for name in ("pyproject.toml", "README.md"):
        (checkout / name).write_text("")
    for name in ("syncd", "migrations"):
        (checkout / name).mkdir()
    edit(checkout / ".dockerignore", "!migrations\n", "")

    result = run_checks(checkout, "image")

    assert result.returncode != 0
    assert "Dockerfile copies migrations but .dockerignore excludes it" in result.stderr


def test_runtime_stage_copy_excluded_by_dockerignore_fails(checkout: Path) -> None:
    """The entrypoint, COPYed into the runtime stage, is checked against .dockerignore too."""
    for name in ("pyproject.toml", "README.md"):
        (checkout / name).write_text("")
    for name in ("syncd", "migrations"):
        (checkout / name).mkdir()
    edit(checkout / ".dockerignore", "!deploy/docker/entrypoint.sh\n", "")

    result = run_checks(checkout, "image")

    assert result.returncode != 0
    assert (
        "Dockerfile copies deploy/docker/entrypoint.sh but .dockerignore excludes it"
        in result.stderr
    )


def test_container_part_without_the_build_tool(checkout: Path) -> None:
    """Without ../shared/tools/build-image.sh the real-image part says it skipped, except
    under CI=true, where the tool must be there and its absence fails."""
    outside = run_checks(checkout, "container", ci="")
    assert outside.returncode == 0, outside.stderr
    assert "SKIP container: ../shared/tools/build-image.sh is absent" in outside.stdout

    in_ci = run_checks(checkout, "container", ci="true")
    assert in_ci.returncode != 0
    assert "../shared/tools/build-image.sh is missing (CI=true" in in_ci.stderr
