"""The FHIR patient sources' settings: parsed, checked, and built into sources."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from syncd.compose import build_source
from syncd.config import load_settings
from syncd.config_fhir import FhirBulkPatientSource, FhirPatientSource
from syncd.exceptions import ConfigError
from syncd.sources.fhir import FhirPatientSource as Source
from syncd.sources.fhir_auth import BearerAuth, SmartBackendAuth
from syncd.sources.fhir_bulk import BulkNdjsonSource

ENV = {"SYNCD_VOXARES__API_KEY": "vox-k1-Sup3rSecretKeyMaterial"}
FHIR = """
    [patients.source]
    type = "fhir"
    base_url = "https://ehr.example/fhir/r4/"
    identifier_system = "urn:oid:1.2.36.146.595.217.0.1"
"""


def _load(tmp_path: Path, toml: str, env: dict[str, str] | None = None) -> object:
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(toml), encoding="utf-8")
    return load_settings(path, {**ENV, **(env or {})})


def _problems(tmp_path: Path, toml: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, toml)
    return caught.value.problems


def test_fhir_source_defaults(tmp_path: Path) -> None:
    """A FHIR source needs a base URL and an identifier system; the rest has defaults."""
    settings = _load(tmp_path, FHIR)
    source = settings.patients.source  # type: ignore[attr-defined]
    assert isinstance(source, FhirPatientSource)
    assert (source.name, source.page_size, source.overlap_seconds) == ("fhir", 100, 300.0)
    assert source.full_read_every() == timedelta(hours=24)
    assert source.auth.type == "none"
    built = build_source(settings)  # type: ignore[arg-type]
    assert isinstance(built, Source)
    assert built.base_url == "https://ehr.example/fhir/r4"


def test_fhir_source_needs_https_and_the_identifier_system(tmp_path: Path) -> None:
    """http to a remote host and a missing identifier_system are named by key."""
    problems = _problems(
        tmp_path,
        """
        [patients.source]
        type = "fhir"
        base_url = "http://ehr.example/fhir"
        """,
    )
    assert any(p.startswith("patients.source.fhir.base_url: must use https") for p in problems)
    assert any(p.startswith("patients.source.fhir.identifier_system:") for p in problems)


@pytest.mark.parametrize(
    ("auth", "key"),
    [
        ('type = "basic"', "username"),
        ('type = "basic"\nusername = "syncd"', "password_file"),
        ('type = "bearer"', "token_file"),
        ('type = "smart"\ntoken_url = "https://ehr.example/token"\nkey_id = "k"', "client_id"),
        (
            'type = "smart"\nclient_id = "c"\ntoken_url = "https://e.example/t"\nkey_id = "k"',
            "private_key_file",
        ),
        ('type = "smart"\nalgorithm = "HS256"', "algorithm"),
    ],
)
def test_incomplete_auth_names_the_key(tmp_path: Path, auth: str, key: str) -> None:
    """Each auth type says which of its keys is missing."""
    problems = _problems(tmp_path, FHIR + "\n[patients.source.auth]\n" + auth + "\n")
    assert any(f"patients.source.fhir.auth.{key}" in p for p in problems), problems


def test_bearer_token_from_a_file_or_a_credential_never_echoed(tmp_path: Path) -> None:
    """The token is read at build time from the credential (first) or the file; an empty
    file is refused naming the key, without its content."""
    token_file = tmp_path / "token"
    token_file.write_text("file-token-abc\n", encoding="utf-8")
    token_file.chmod(0o600)
    toml = FHIR + f'\n[patients.source.auth]\ntype = "bearer"\ntoken_file = "{token_file}"\n'
    source = build_source(_load(tmp_path, toml))  # type: ignore[arg-type]
    assert isinstance(source, Source)
    assert "file-token-abc" not in repr(source)
    token_file.write_text("  \n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"patients.source.auth.token_file: .* is empty"):
        build_source(_load(tmp_path, toml))  # type: ignore[arg-type]


def test_smart_auth_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SMART settings make a SmartBackendAuth; the key may come from a systemd credential."""
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "fhir-key").write_text("-----BEGIN PRIVATE KEY-----\nx\n", encoding="utf-8")
    (credentials / "fhir-key").chmod(0o400)  # as systemd hands a credential over
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    toml = FHIR + textwrap.dedent(
        """
        [patients.source.auth]
        type = "smart"
        client_id = "syncd"
        token_url = "https://ehr.example/oauth2/token"
        key_id = "k1"
        private_key_credential = "fhir-key"
        """
    )
    source = build_source(_load(tmp_path, toml))  # type: ignore[arg-type]
    assert isinstance(source, Source)
    assert isinstance(source._auth, SmartBackendAuth)
    assert not isinstance(source._auth, BearerAuth)


def test_fhir_bulk_source(tmp_path: Path) -> None:
    """A Bulk export source: a path and the identifier system."""
    settings = _load(
        tmp_path,
        """
        [patients.source]
        type = "fhir-bulk"
        path = "/var/lib/voxares-syncd/import/fhir-export"
        identifier_system = "urn:oid:1.2.36.146.595.217.0.1"
        """,
    )
    source = settings.patients.source  # type: ignore[attr-defined]
    assert isinstance(source, FhirBulkPatientSource)
    assert source.since_export is False
    assert isinstance(build_source(settings), BulkNdjsonSource)  # type: ignore[arg-type]


def test_the_readme_fhir_example_is_a_valid_configuration(tmp_path: Path) -> None:
    """README's "FHIR sources" TOML block loads as written."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## FHIR sources", 1)[1]
    block = section.split("```toml\n", 1)[1].split("```", 1)[0]
    settings = _load(tmp_path, block)
    source = settings.patients.source  # type: ignore[attr-defined]
    assert isinstance(source, FhirPatientSource)
    assert source.auth.type == "smart"
    assert source.auth.private_key_file == "/etc/voxares-syncd/fhir-key.pem"


def test_a_secret_file_every_user_can_read_is_refused(tmp_path: Path) -> None:
    """A FHIR password, token or private key in a file open to every user stops start-up
    naming the key and the chmod, as the API key file does, and never quotes the secret."""
    token_file = tmp_path / "token"
    token_file.write_text("file-token-abc\n", encoding="utf-8")
    token_file.chmod(0o644)
    toml = FHIR + f'\n[patients.source.auth]\ntype = "bearer"\ntoken_file = "{token_file}"\n'
    with pytest.raises(ConfigError) as raised:
        build_source(_load(tmp_path, toml))  # type: ignore[arg-type]
    (line,) = raised.value.problems
    assert line == (
        f"patients.source.auth.token_file: {token_file} is open to every user of this "
        f"machine (mode 0644); syncd refuses a secret anyone can read: chmod 0600 {token_file}"
    )
