"""Configuration: TOML + environment -> Settings, or a ConfigError naming every bad key."""

from __future__ import annotations

import re
import textwrap
import typing
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import BaseModel

from syncd.api_key import API_KEY_CREDENTIAL
from syncd.config import (
    CsvPatientSource,
    FileSink,
    Settings,
    SqlPatientSource,
    WebhookSink,
    load_settings,
)
from syncd.exceptions import ConfigError
from syncd.sandbox.seed import DEMO_API_KEY
from syncd.voxares.contract import PRODUCTION_BASE_URL

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"
KEY = "vox-k1-Sup3rSecretKeyMaterial"
ENV_WITH_KEY = {"SYNCD_VOXARES__API_KEY": KEY}
WEBHOOK_SECRET = "whsec_Y2hhbmdlLW1lLXRvLWEtcmVhbC1zZWNyZXQ="
CSV_SOURCE = """
    [patients.source]
    type = "csv"
    path = "patients.csv"
    [patients.source.columns]
    providerId = "id"
    firstName = "first"
    lastName = "last"
"""


def private_file(path: Path, text: str) -> Path:
    """A file only its owner may read (as a key file must be)."""
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def write(tmp_path: Path, toml: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(toml), encoding="utf-8")
    return path


def load(tmp_path: Path, toml: str = "", env: dict[str, str] | None = None) -> Settings:
    return load_settings(write(tmp_path, toml), ENV_WITH_KEY if env is None else env)


def problems(tmp_path: Path, toml: str = "", env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, toml, env)
    return info.value.problems


# --- the example file -----------------------------------------------------------------------


def test_example_config_loads_and_keeps_the_defaults(tmp_path: Path) -> None:
    """config.example.toml loads (key from env) and states the defaults of every section."""
    settings = load_settings(EXAMPLE, ENV_WITH_KEY)
    defaults = Settings()
    for section in ("database", "logging", "health", "submissions", "content"):
        assert getattr(settings, section) == getattr(defaults, section), section
    assert settings.voxares.model_copy(update={"api_key": None}) == defaults.voxares
    outbox = settings.outbox.model_dump(exclude={"sinks"})
    assert outbox == defaults.outbox.model_dump(exclude={"sinks"})
    patients = settings.patients.model_dump(exclude={"source"})
    assert patients == defaults.patients.model_dump(exclude={"source", "enabled"}) | {
        "enabled": True
    }
    assert settings.messages.model_dump(exclude={"enabled"}) == defaults.messages.model_dump(
        exclude={"enabled"}
    )
    source = settings.patients.source
    assert isinstance(source, CsvPatientSource)
    assert source.column_map()["providerId"] == "PatientID"
    assert "crm" not in settings.outbox.sinks  # the webhook placeholder is commented out
    assert isinstance(settings.outbox.sinks["archive"], FileSink)


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _models_in(arg)


def _all_keys(model: type[BaseModel]) -> set[str]:
    keys = set(model.model_fields)
    for field in model.model_fields.values():
        for nested in _models_in(field.annotation):
            keys |= _all_keys(nested)
    return keys


def test_example_config_documents_every_key() -> None:
    """Every key of every section appears in config.example.toml (set or commented out)."""
    text = EXAMPLE.read_text(encoding="utf-8")
    written = set(re.findall(r"^#?\s*(\w+)\s*=", text, flags=re.MULTILINE))
    for table in re.findall(r"^#?\s*\[\[?([\w.]+)\]", text, flags=re.MULTILINE):
        written |= set(table.split("."))
    assert _all_keys(Settings) - {"api_key"} <= written
    assert "api_key_file" in written


# --- defaults and the API key ----------------------------------------------------------------


def test_no_file_gives_defaults_given_a_key() -> None:
    """Without a config file, every key has its default; only the API key must be given."""
    settings = load_settings(None, ENV_WITH_KEY)
    assert settings.voxares.base_url == PRODUCTION_BASE_URL
    assert settings.voxares.requests_per_second == 10
    assert settings.patients.enabled is False
    assert settings.submissions.enabled is True
    assert settings.voxares.require_api_key().get_secret_value() == KEY


def test_defaults_are_the_installation_layout() -> None:
    """The default database is in the state directory of the unit and image, and the key
    file beside the config: a shell command and the service open the same database."""
    settings = load_settings(None, ENV_WITH_KEY)
    assert settings.database.url == "sqlite:////var/lib/voxares-syncd/state.db"
    assert settings.voxares.api_key_file == Path("/etc/voxares-syncd/api-key")


def test_missing_key_names_every_place_in_order(tmp_path: Path) -> None:
    """Without any key, the one problem line names the three places, in the order tried."""
    assert problems(tmp_path, '[voxares]\napi_key_file = ""\n', env={}) == [
        "voxares.api_key: not set (looked in SYNCD_VOXARES__API_KEY, then the systemd "
        "credential voxares-api-key, then voxares.api_key_file)"
    ]


def test_key_from_api_key_file(tmp_path: Path) -> None:
    """voxares.api_key_file is read (trailing newline stripped)."""
    key_file = private_file(tmp_path / "key", KEY + "\n")
    settings = load(tmp_path, f'[voxares]\napi_key_file = "{key_file}"\n', env={})
    assert settings.voxares.require_api_key().get_secret_value() == KEY


def test_key_file_from_the_environment_is_named_by_its_variable(tmp_path: Path) -> None:
    """SYNCD_VOXARES__API_KEY_FILE (the image's Docker secret) is read; a problem names it."""
    key_file = private_file(tmp_path / "secret", KEY)
    env = {"SYNCD_VOXARES__API_KEY_FILE": str(key_file)}
    assert load(tmp_path, "", env).voxares.require_api_key().get_secret_value() == KEY
    missing = {"SYNCD_VOXARES__API_KEY_FILE": str(tmp_path / "nope")}
    (line,) = problems(tmp_path, "", missing)
    assert line.startswith(f"SYNCD_VOXARES__API_KEY_FILE: cannot read {tmp_path / 'nope'}: ")


def test_key_from_systemd_credential(tmp_path: Path) -> None:
    """$CREDENTIALS_DIRECTORY/voxares-api-key is used when the environment has no key."""
    private_file(tmp_path / API_KEY_CREDENTIAL, KEY)
    settings = load(tmp_path, "", env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert settings.voxares.require_api_key().get_secret_value() == KEY


def test_key_sources_in_order(tmp_path: Path) -> None:
    """The environment beats the systemd credential, which beats api_key_file."""
    key_file = private_file(tmp_path / "key", "vox-from-file")
    private_file(tmp_path / API_KEY_CREDENTIAL, "vox-from-credential")
    toml = f'[voxares]\napi_key_file = "{key_file}"\n'
    credentials = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    from_env = load(tmp_path, toml, credentials | ENV_WITH_KEY).voxares.require_api_key()
    from_credential = load(tmp_path, toml, credentials).voxares.require_api_key()
    from_file = load(tmp_path, toml, {}).voxares.require_api_key()
    assert from_env.get_secret_value() == KEY
    assert from_credential.get_secret_value() == "vox-from-credential"
    assert from_file.get_secret_value() == "vox-from-file"


def test_credential_makes_an_unreadable_key_file_harmless(tmp_path: Path) -> None:
    """Under systemd the configured key file (root's, unreadable) is never opened: the
    credential comes first."""
    private_file(tmp_path / API_KEY_CREDENTIAL, KEY)
    toml = f'[voxares]\napi_key_file = "{tmp_path / "unreadable" / "api-key"}"\n'
    settings = load(tmp_path, toml, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert settings.voxares.require_api_key().get_secret_value() == KEY


def test_credentials_directory_without_our_credential_falls_through(tmp_path: Path) -> None:
    """A credentials directory holding only other credentials (pgpass) leaves the file."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    private_file(credentials / "pgpass", "*:*:*:*:pw")
    key_file = private_file(tmp_path / "key", KEY)
    toml = f'[voxares]\napi_key_file = "{key_file}"\n'
    settings = load(tmp_path, toml, env={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert settings.voxares.require_api_key().get_secret_value() == KEY


def test_unreadable_key_file_is_reported(tmp_path: Path) -> None:
    """A key file that cannot be read is named, with the reason and what else was tried."""
    lines = problems(tmp_path, '[voxares]\napi_key_file = "/nonexistent/key"\n', env={})
    assert lines == [
        "voxares.api_key_file: cannot read /nonexistent/key: No such file or directory "
        "(and neither SYNCD_VOXARES__API_KEY nor the systemd credential voxares-api-key "
        "is set)"
    ]


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o602, 0o666])
def test_key_file_open_to_every_user_is_refused(tmp_path: Path, mode: int) -> None:
    """A key file others may read or write is refused, saying why and how to fix it."""
    key_file = private_file(tmp_path / "key", KEY)
    key_file.chmod(mode)
    (line,) = problems(tmp_path, f'[voxares]\napi_key_file = "{key_file}"\n', env={})
    assert line.startswith(f"voxares.api_key_file: {key_file} is open to every user")
    assert f"(mode {mode:04o})" in line
    assert line.endswith(f"syncd refuses it: chmod 0600 {key_file}")
    assert KEY not in line


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640, 0o440])
def test_key_file_private_to_owner_or_group_is_accepted(tmp_path: Path, mode: int) -> None:
    """0600 and 0400, and a group-readable 0640 (a container's group), are accepted."""
    key_file = private_file(tmp_path / "key", KEY)
    key_file.chmod(mode)
    settings = load(tmp_path, f'[voxares]\napi_key_file = "{key_file}"\n', env={})
    assert settings.voxares.require_api_key().get_secret_value() == KEY


def test_local_commands_load_without_any_key(tmp_path: Path) -> None:
    """need_api_key=False: no key anywhere and an unreadable key file are not problems."""
    toml = '[voxares]\napi_key_file = "/nonexistent/key"\n'
    settings = load_settings(write(tmp_path, toml), {}, need_api_key=False)
    assert settings.voxares.api_key is None
    with pytest.raises(ConfigError) as info:
        settings.voxares.require_api_key()
    assert info.value.problems[0].startswith("voxares.api_key: not set (looked in ")


def test_key_in_the_toml_file_is_refused(tmp_path: Path) -> None:
    """The key must not be written into the config file; the error does not echo it."""
    lines = problems(tmp_path, f'[voxares]\napi_key = "{KEY}"\n')
    assert lines == [
        "voxares.api_key: must not be in the config file (use SYNCD_VOXARES__API_KEY, "
        "the systemd credential voxares-api-key, voxares.api_key_file)"
    ]


def test_sandbox_needs_no_key(tmp_path: Path) -> None:
    """base_url = "sandbox" uses the embedded sandbox's demo key."""
    settings = load(tmp_path, '[voxares]\nbase_url = "sandbox"\n', env={})
    assert settings.voxares.is_sandbox
    assert settings.voxares.require_api_key().get_secret_value() == DEMO_API_KEY


def test_key_never_in_repr_or_errors(tmp_path: Path) -> None:
    """The key appears neither in repr(settings) nor in a ConfigError's text."""
    settings = load(tmp_path, "")
    assert KEY not in repr(settings)
    assert KEY not in str(settings)
    with pytest.raises(ConfigError) as info:
        load(
            tmp_path, "[voxares]\nmax_concurrency = 0\n", env={"SYNCD_VOXARES__API_KEY": KEY + " x"}
        )
    assert KEY not in str(info.value)
    assert "SYNCD_VOXARES__API_KEY: must be one word without spaces" in info.value.problems


def test_secrets_in_urls_stay_out_of_repr_and_errors(tmp_path: Path) -> None:
    """Database, source and sink URLs (passwords, tokens) are not in repr nor in errors."""
    toml = f"""
        [database]
        url = "postgresql+psycopg://syncd:hunter2pw@db/syncd"
        [patients.source]
        type = "sql"
        url = "mysql+pymysql://ro:srcpassword@ehr/ehr"
        query = "select 1"
        [outbox.sinks.crm]
        type = "webhook"
        url = "https://crm/hook?token=tok3n"
        secret = "{WEBHOOK_SECRET}"
    """
    text = repr(load(tmp_path, toml))
    for secret in ("hunter2pw", "srcpassword", "tok3n", WEBHOOK_SECRET):
        assert secret not in text
    bad = toml.replace("postgresql+psycopg", "mssql").replace("https://crm", "http://crm")
    error = str(ConfigError(problems(tmp_path, bad)))
    for secret in ("hunter2pw", "tok3n"):
        assert secret not in error
    assert "database.url: backend mssql is not supported (sqlite or postgresql)" in error


# --- environment overrides -------------------------------------------------------------------


def test_env_overrides_file_with_nesting(tmp_path: Path) -> None:
    """SYNCD_SECTION__KEY overrides the file's value; the file's other keys are kept."""
    toml = "[voxares]\nrequests_per_second = 3\nmax_concurrency = 2\n"
    env = ENV_WITH_KEY | {"SYNCD_VOXARES__REQUESTS_PER_SECOND": "5"}
    settings = load(tmp_path, toml, env)
    assert settings.voxares.requests_per_second == 5
    assert settings.voxares.max_concurrency == 2


def test_env_overrides_reach_deep_tables_and_lists(tmp_path: Path) -> None:
    """Sink keys and lists (as JSON) can be set from the environment."""
    toml = CSV_SOURCE + '[outbox.sinks.crm]\ntype = "webhook"\nurl = "https://crm/hook"\n'
    env = ENV_WITH_KEY | {
        "SYNCD_OUTBOX__SINKS__CRM__SECRET": WEBHOOK_SECRET,
        "SYNCD_PATIENTS__DATE_FORMATS": '["%d.%m.%Y", "%Y-%m-%d"]',
        "SYNCD_PATIENTS__SOURCE__COLUMNS__EMAIL": "mail",
    }
    settings = load(tmp_path, toml, env)
    sink = settings.outbox.sinks["crm"]
    assert isinstance(sink, WebhookSink)
    assert sink.secret is not None
    assert sink.secret.get_secret_value() == WEBHOOK_SECRET
    assert settings.patients.date_formats == ["%d.%m.%Y", "%Y-%m-%d"]
    assert settings.patients.source is not None
    assert settings.patients.source.column_map()["email"] == "mail"


def test_env_typo_inside_a_section_is_an_error(tmp_path: Path) -> None:
    """SYNCD_VOXARES__REQUEST_PER_SECOND (a typo) is an unknown key named as the variable."""
    env = ENV_WITH_KEY | {"SYNCD_VOXARES__REQUEST_PER_SECOND": "5"}
    assert problems(tmp_path, "", env) == ["SYNCD_VOXARES__REQUEST_PER_SECOND: unknown key"]


def test_env_errors_name_the_variable_and_file_errors_the_key(tmp_path: Path) -> None:
    """A bad value from the environment names its variable (what to fix); from the file,
    the key. Deep keys and list items name the variable that set them."""
    toml = CSV_SOURCE + "[health]\nport = 0\n"
    env = ENV_WITH_KEY | {
        "SYNCD_VOXARES__REQUESTS_PER_SECOND": "fast",
        "SYNCD_PATIENTS__DATE_FORMATS": '["%d"]',
        "SYNCD_PATIENTS__SOURCE__DELIMITER": ";;",
    }
    lines = problems(tmp_path, toml, env)
    keys = sorted(line.split(": ")[0] for line in lines)
    assert keys == [
        "SYNCD_PATIENTS__DATE_FORMATS",
        "SYNCD_PATIENTS__SOURCE__DELIMITER",
        "SYNCD_VOXARES__REQUESTS_PER_SECOND",
        "health.port",
    ]
    assert "fast" not in "\n".join(lines)


def test_unrelated_syncd_variables_are_ignored(tmp_path: Path) -> None:
    """SYNCD_CONFIG and SYNCD_TEST_* are not configuration keys."""
    env = ENV_WITH_KEY | {"SYNCD_TEST_POSTGRES_URL": "postgresql://x", "SYNCD_CONFIG": "x"}
    assert load(tmp_path, "", env).voxares.max_concurrency == 8


def test_env_list_that_is_not_json_is_reported(tmp_path: Path) -> None:
    """A list override that is not JSON is one problem line naming the variable."""
    env = ENV_WITH_KEY | {"SYNCD_PATIENTS__DATE_FORMATS": "%d/%m/%Y", "SYNCD_HEALTH__PORT": "1"}
    (line,) = problems(tmp_path, "", env)
    assert line.startswith("SYNCD_PATIENTS__DATE_FORMATS: not valid JSON")
    assert "%d/%m/%Y" not in line


def test_config_path_from_syncd_config(tmp_path: Path) -> None:
    """Without a path, $SYNCD_CONFIG names the file."""
    path = write(tmp_path, "[health]\nport = 9999\n")
    settings = load_settings(None, ENV_WITH_KEY | {"SYNCD_CONFIG": str(path)})
    assert settings.health.port == 9999


# --- the file itself --------------------------------------------------------------------------


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    """A config path that does not exist is reported as such."""
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "nope.toml", ENV_WITH_KEY)
    assert info.value.problems == [
        f"config: cannot read {tmp_path / 'nope.toml'}: No such file or directory"
    ]


def test_invalid_toml_gives_line_and_column(tmp_path: Path) -> None:
    """A TOML syntax error names the line."""
    (line,) = problems(tmp_path, "[voxares]\nmax_concurrency = = 3\n")
    assert "is not valid TOML" in line
    assert "line 2" in line


def test_unknown_keys_are_errors(tmp_path: Path) -> None:
    """Unknown sections and unknown keys at any depth are reported with their path."""
    toml = "[voxares]\nmax_concurency = 3\n[databse]\nurl = 'x'\n"
    assert set(problems(tmp_path, toml)) == {
        "voxares.max_concurency: unknown key",
        "databse: unknown key",
    }
    nested = problems(tmp_path, CSV_SOURCE + '    fristName = "x"\n')
    assert nested == ["patients.source.columns.fristName: unknown key"]


# --- invalid values, each reported with its key path -----------------------------------------

INVALID: list[tuple[str, str]] = [
    ("[voxares]\nrequests_per_second = 0", "voxares.requests_per_second: must be greater than 0"),
    (
        '[voxares]\nmax_concurrency = "many"',
        "voxares.max_concurrency: must be a valid integer, unable to parse string as an integer",
    ),
    (
        '[voxares]\nbase_url = "http://api.example.com"',
        "voxares.base_url: must use https (http only for localhost, 127.0.0.1 or ::1)",
    ),
    ('[voxares]\nbase_url = "ftp://x"', "voxares.base_url: must be an https:// URL"),
    (
        "[voxares]\nretry_initial_seconds = 10\nretry_max_backoff_seconds = 5",
        "voxares.retry_max_backoff_seconds: must be at least retry_initial_seconds",
    ),
    (
        '[database]\nurl = "postgresql+psycopg2://db/x"',
        "database.url: driver psycopg2 is not supported, use postgresql+psycopg",
    ),
    ('[logging]\nlevel = "LOUD"', "logging.level: must be 'DEBUG', 'INFO', 'WARNING', 'ERROR' or"),
    ('[logging]\nformat = "xml"', "logging.format: must be 'auto', 'json' or 'console'"),
    ("[health]\nport = 70000", "health.port: must be less than or equal to 65535"),
    ("[patients]\nenabled = true", "patients.source: required when patients.enabled is true"),
    ('[patients]\ncron = "every day"', "patients.cron: not a crontab line"),
    (
        '[patients]\ncron = "0 * * * *"\ninterval_seconds = 60',
        "patients.cron: set either cron or interval_seconds, not both",
    ),
    ('[patients]\nlandline = "keep"', "patients.landline: must be 'drop' or 'reject'"),
    ('[patients]\ndefault_region = "XX"', "patients.default_region: not a region"),
    ('[patients]\ndate_formats = ["%Y"]', "patients.date_formats[0]: must contain a day, a month"),
    ("[patients]\ndate_formats = []", "patients.date_formats: List should have at least 1 item"),
    (
        "[patients]\ninterval_seconds = 7200",
        "patients.freshness_seconds: must be longer than interval_seconds",
    ),
    ("[patients.source]\npath = 'x'", "patients.source.type: required, one of csv, sql"),
    ("[patients.source]\ntype = 'xml'", "patients.source.type: must be one of csv, sql"),
    ("[patients.source]\ntype = 'csv'", "patients.source.path: required"),
    ("[patients.source]\ntype = 'csv'", "patients.source.columns: required"),
    (
        "[patients.source]\ntype = 'csv'\npath = 'p'\n[patients.source.columns]\nproviderId = 'id'",
        "patients.source.columns.firstName: required",
    ),
    ("[patients.source]\ntype = 'sql'", "patients.source.url: required"),
    ("[patients.source]\ntype = 'sql'", "patients.source.query: required"),
    (
        "[patients.source]\ntype = 'csv'\ndelimiter = ';;'",
        "patients.source.delimiter: must be exactly one character",
    ),
    (
        "[patients.source]\ntype = 'csv'\nencoding = 'klingon'",
        "patients.source.encoding: unknown text encoding",
    ),
    (
        "[patients.source]\ntype = 'csv'\nname = 'EHR export'",
        "patients.source.name: must be 1-64 of a-z, 0-9, '-', '_'",
    ),
    (
        '[submissions]\nstart_from = "2025-01-01T00:00:00"',
        "submissions.start_from: must include a timezone",
    ),
    ('[submissions]\nstart_from = "yesterday"', 'submissions.start_from: must be "beginning"'),
    ("[submissions]\npage_size = 500", "submissions.page_size: must be less than or equal to 100"),
    ("[outbox.sinks.crm]\ntype = 'webhook'", "outbox.sinks.crm.url: required"),
    (
        "[outbox.sinks.crm]\ntype = 'webhook'\nurl = 'https://x'",
        "outbox.sinks.crm.secret: required (set secret or secret_file)",
    ),
    (
        "[outbox.sinks.crm]\ntype = 'webhook'\nurl = 'https://x'\nsecret = 'plain'",
        "outbox.sinks.crm.secret: must start with whsec_",
    ),
    (
        "[outbox.sinks.crm]\ntype = 'webhook'\nurl = 'https://x'\nsecret = 'whsec_!!'",
        "outbox.sinks.crm.secret: must be base64 after whsec_",
    ),
    (
        "[outbox.sinks.crm]\ntype = 'webhook'\nurl = 'http://crm.lan/x'\nsecret = 'whsec_eA=='",
        "outbox.sinks.crm.url: must use https",
    ),
    (
        "[outbox.sinks.crm]\ntype = 'webhook'\nurl = 'https://x'\nsecret_file = '/nonexistent'",
        "outbox.sinks.crm.secret_file: cannot read /nonexistent: No such file or directory",
    ),
    ("[outbox.sinks.files]\ntype = 'file'", "outbox.sinks.files.directory: required"),
    (
        "[outbox.sinks.files]\ntype = 'file'\ndirectory = 'd'\nevents = []",
        "outbox.sinks.files.events",
    ),
    (
        "[outbox.sinks.q]\ntype = 'amqp'\nurl = 'http://rabbit'",
        "outbox.sinks.q.url: must be an amqp",
    ),
    ("[outbox.sinks.x]\ntype = 'kafka'", "outbox.sinks.x.type: must be one of webhook, file, amqp"),
    ("[outbox.sinks.Bad]\ntype = 'file'\ndirectory = 'd'", "outbox.sinks.Bad: must be lower case"),
    (
        "[[messages.sources]]\nname = 'a'\ntype = 'csv'\npath = 'p'\ntemplate_id = 't'\n"
        "key_column = 'k'\nprovider_id_column = 'p'\n"
        "[[messages.sources]]\nname = 'a'\ntype = 'csv'\npath = 'p'\ntemplate_id = 't'\n"
        "key_column = 'k'\nprovider_id_column = 'p'\n",
        "messages.sources[1].name: already used by another source",
    ),
    ("[[messages.sources]]\ntype = 'sql'", "messages.sources[0].query: required"),
    ("[[messages.sources]]\ntype = 'sql'", "messages.sources[0].template_id: required"),
    ("[content]\ninterval_seconds = -1", "content.interval_seconds: must be greater than 0"),
]


@pytest.mark.parametrize(("toml", "expected"), INVALID)
def test_invalid_value_is_reported_with_its_key_path(
    tmp_path: Path, toml: str, expected: str
) -> None:
    """Each kind of invalid value yields one line starting `key.path: reason`."""
    lines = problems(tmp_path, toml)
    assert any(line.startswith(expected) for line in lines), lines
    assert all(line.count("\n") == 0 for line in lines)


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    """Several bad keys in several sections give one line each, in one ConfigError."""
    toml = (
        "[voxares]\nmax_concurrency = 0\napi_key_file = ''\n"
        "[health]\nport = 0\n[content]\nenabled = 'maybe'\n"
    )
    lines = problems(tmp_path, toml, env={})
    assert [line.split(":")[0] for line in lines] == [
        "voxares.max_concurrency",
        "health.port",
        "content.enabled",
        "voxares.api_key",
    ]


def test_values_are_not_echoed(tmp_path: Path) -> None:
    """A rejected value does not appear in the problem text."""
    toml = """
        [voxares]
        base_url = "http://leaky-host.example/api"
        [patients]
        landline = "Ana Horvat"
        [outbox.sinks.crm]
        type = "webhook"
        url = "https://x"
        secret = "whsec_not base64 Sup3rSecret"
    """
    text = "\n".join(problems(tmp_path, toml))
    for value in ("leaky-host", "Ana Horvat", "Sup3rSecret"):
        assert value not in text


# --- valid shapes ------------------------------------------------------------------------------


def test_sql_source_columns_default_to_identity(tmp_path: Path) -> None:
    """A SQL source without [columns] maps every contract field to itself."""
    toml = "[patients.source]\ntype = 'sql'\nurl = 'sqlite:///ehr.db'\nquery = 'select 1'\n"
    source = load(tmp_path, toml).patients.source
    assert isinstance(source, SqlPatientSource)
    assert source.column_map()["firstName"] == "firstName"
    assert load(tmp_path, toml).patients.enabled is True


def test_webhook_secret_from_file(tmp_path: Path) -> None:
    """secret_file is read into the sink's secret."""
    secret_file = tmp_path / "secret"
    secret_file.write_text(WEBHOOK_SECRET + "\n")
    secret_file.chmod(0o640)
    toml = f"[outbox.sinks.crm]\ntype='webhook'\nurl='https://x'\nsecret_file='{secret_file}'\n"
    sink = load(tmp_path, toml).outbox.sinks["crm"]
    assert isinstance(sink, WebhookSink)
    assert sink.secret is not None
    assert sink.secret.get_secret_value() == WEBHOOK_SECRET


@pytest.mark.parametrize("mode", [0o644, 0o602])
def test_a_webhook_secret_file_open_to_every_user_is_refused(tmp_path: Path, mode: int) -> None:
    """Like the API key file: a signing secret anyone on the machine can read (or replace)
    stops start-up with one line naming the key and the fix, never the secret."""
    secret_file = tmp_path / "secret"
    secret_file.write_text(WEBHOOK_SECRET + "\n")
    secret_file.chmod(mode)
    toml = f"[outbox.sinks.crm]\ntype='webhook'\nurl='https://x'\nsecret_file='{secret_file}'\n"
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, toml)
    assert caught.value.problems == [
        f"outbox.sinks.crm.secret_file: {secret_file} is open to every user of this machine "
        f"(mode {mode:04o}); syncd refuses a secret anyone can read: chmod 0600 {secret_file}"
    ]
    assert WEBHOOK_SECRET not in str(caught.value)


def test_http_allowed_for_loopback_base_url(tmp_path: Path) -> None:
    """A local Voxares stand-in may use http; a trailing slash is dropped."""
    for host in ("localhost", "127.0.0.1", "[::1]"):
        settings = load(tmp_path, f'[voxares]\nbase_url = "http://{host}:8000/api/"\n')
        assert settings.voxares.base_url == f"http://{host}:8000/api"


def test_start_from_timestamp(tmp_path: Path) -> None:
    """start_from takes an ISO timestamp with a zone, as text or as a TOML datetime."""
    text = load(tmp_path, '[submissions]\nstart_from = "2025-01-01T00:00:00Z"\n')
    native = load(tmp_path, "[submissions]\nstart_from = 2025-01-01T00:00:00Z\n")
    expected = datetime(2025, 1, 1, tzinfo=UTC)
    assert text.submissions.start_from == expected == native.submissions.start_from


def test_cron_instead_of_interval(tmp_path: Path) -> None:
    """patients.cron alone is accepted; log level is case-insensitive."""
    settings = load(
        tmp_path, CSV_SOURCE + '[patients]\ncron = "*/5 * * * *"\n[logging]\nlevel="debug"\n'
    )
    assert settings.patients.cron == "*/5 * * * *"
    assert settings.logging.level == "DEBUG"


def test_settings_are_frozen(tmp_path: Path) -> None:
    """Settings cannot be changed after loading."""
    settings = load(tmp_path)
    with pytest.raises(Exception, match="frozen"):
        settings.health.port = 1  # type: ignore[misc]


def test_housekeeping_always_runs_and_prunes_the_outbox_only_without_a_sink(
    tmp_path: Path,
) -> None:
    """Every job writes run records, so `housekeeping` is always scheduled; it applies
    outbox retention itself only when no sink's delivery job does."""
    from syncd.compose import build_housekeeping, job_freshness, specs_for
    from syncd.housekeeping import HousekeepingJob

    polling = "[voxares]\nbase_url = 'https://x'\n[submissions]\nenabled = true\n"
    with_sink = polling + "[outbox.sinks.file]\ntype = 'file'\ndirectory = 'events'\n"
    quiet = "[submissions]\nenabled = false\n[content]\nenabled = false\n"
    for toml in (polling, with_sink, quiet):
        assert "housekeeping" in specs_for(load(tmp_path, toml))
        # Not watched: `syncd status` after one-shot syncs must not warn that it never ran.
        assert "housekeeping" not in job_freshness(load(tmp_path, toml))

    for toml, outbox_days in ((polling, 14.0), (with_sink, None)):
        settings = load(tmp_path, toml + "[database]\nrun_history_days = 7\n")
        job = build_housekeeping(SimpleNamespace(engine=None, settings=settings))  # type: ignore[arg-type]
        assert isinstance(job, HousekeepingJob)
        assert (job.run_history_days, job.outbox_retention_days) == (7.0, outbox_days)
