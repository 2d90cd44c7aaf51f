"""`[status_page]`: defaults, the credential file, and the exposure warning."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from syncd.config import load_settings
from syncd.config_page import StatusPageSettings, read_credential
from syncd.exceptions import ConfigError
from syncd.sandbox.seed import DEMO_API_KEY

ENV = {"SYNCD_VOXARES__API_KEY": DEMO_API_KEY}


def _load(tmp_path: Path, toml: str) -> StatusPageSettings:
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(toml), encoding="utf-8")
    return load_settings(path, ENV).status_page


def test_defaults(tmp_path: Path) -> None:
    page = _load(tmp_path, "")
    assert page.enabled
    assert page.sample_interval_seconds == 60.0
    assert page.retention_days == 8.0
    assert page.auth == "none"


def test_auth_needs_a_credential_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        _load(tmp_path, '[status_page]\nauth = "basic"\n')
    assert any(line.startswith("status_page.credential_file:") for line in raised.value.problems)


def test_unknown_auth_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        _load(tmp_path, '[status_page]\nauth = "digest"\n')
    assert any(line.startswith("status_page.auth:") for line in raised.value.problems)


def test_sampling_more_often_than_5_s_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        _load(tmp_path, "[status_page]\nsample_interval_seconds = 1\n")
    assert any("status_page.sample_interval_seconds" in line for line in raised.value.problems)


@pytest.mark.parametrize(
    ("auth", "content", "expected"),
    [
        ("basic", "admin:pa:ss\n", "admin:pa:ss"),
        ("bearer", "  tok-abc  \n", "tok-abc"),
    ],
)
def test_credential_is_read(tmp_path: Path, auth: str, content: str, expected: str) -> None:
    path = tmp_path / "cred"
    path.write_text(content, encoding="utf-8")
    path.chmod(0o600)
    page = StatusPageSettings(auth=auth, credential_file=path)  # type: ignore[arg-type]
    assert read_credential(page) == expected


@pytest.mark.parametrize(
    ("auth", "content", "reason"),
    [
        ("basic", "no-colon-secret-value", "user:password"),
        ("basic", ":only-password-value", "user:password"),
        ("bearer", "", "exactly one line"),
        ("bearer", "line-one-value\nline-two-value", "exactly one line"),
    ],
)
def test_bad_credential_file_names_the_key_not_the_content(
    tmp_path: Path, auth: str, content: str, reason: str
) -> None:
    path = tmp_path / "cred"
    path.write_text(content, encoding="utf-8")
    path.chmod(0o600)
    page = StatusPageSettings(auth=auth, credential_file=path)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as raised:
        read_credential(page)
    (line,) = raised.value.problems
    assert line.startswith("status_page.credential_file:")
    assert reason in line
    assert "value" not in line


def test_missing_credential_file(tmp_path: Path) -> None:
    page = StatusPageSettings(auth="bearer", credential_file=tmp_path / "absent")
    with pytest.raises(ConfigError, match=r"status_page\.credential_file: cannot read it"):
        read_credential(page)


def test_exposure_warning() -> None:
    page = StatusPageSettings()
    assert page.exposure_warning("127.0.0.1", health_enabled=True) is None
    assert page.exposure_warning("0.0.0.0", health_enabled=False) is None
    warning = page.exposure_warning("0.0.0.0", health_enabled=True)
    assert warning is not None
    assert "without authentication" in warning
    guarded = StatusPageSettings(auth="bearer", credential_file=Path("/x"))
    assert guarded.exposure_warning("0.0.0.0", health_enabled=True) is None


def test_a_credential_file_open_to_every_user_is_refused(tmp_path: Path) -> None:
    """As with the API key and the webhook secret: the page's password or token in a file
    anyone on the machine can read stops start-up, naming the key and the chmod."""
    path = tmp_path / "cred"
    path.write_text("admin:hunter2-value\n", encoding="utf-8")
    path.chmod(0o644)
    page = StatusPageSettings(auth="basic", credential_file=path)
    with pytest.raises(ConfigError) as raised:
        read_credential(page)
    (line,) = raised.value.problems
    assert line == (
        f"status_page.credential_file: {path} is open to every user of this machine "
        f"(mode 0644); syncd refuses a secret anyone can read: chmod 0600 {path}"
    )
