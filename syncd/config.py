"""The configuration: one TOML file, every key overridable from the environment.

`load_settings(path, env)` reads the TOML file (`--config PATH`, else `$SYNCD_CONFIG`, else
none: all defaults), lays `SYNCD_<SECTION>__<KEY>` environment variables over it
(`SYNCD_VOXARES__REQUESTS_PER_SECOND=5`, `SYNCD_OUTBOX__SINKS__CRM__URL=...`; lists as
JSON), validates the result and returns a frozen `Settings`. Every problem is reported at
once, one line each, as `key.path: reason`, in a `ConfigError`. Unknown keys are errors, so a
typo is never silently ignored. Values are never echoed back: they may be secrets.

The Voxares API key is never read from the TOML file. It comes from, in this order,
`SYNCD_VOXARES__API_KEY`, the file named by `voxares.api_key_file`, or the systemd credential
`$CREDENTIALS_DIRECTORY/voxares-api-key`. `voxares.base_url = "sandbox"` selects the embedded
sandbox, which needs no key (its demo key is used).

Relative paths (CSV files, key files, sink directories, a SQLite file) are relative to the
working directory, as for any command-line tool.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import importlib.util
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)
from pydantic_settings.sources.utils import parse_env_vars

from syncd.exceptions import ConfigError
from syncd.patients.outage import DEFAULT_OUTAGE_AFTER
from syncd.sources import REQUIRED_SOURCE_FIELDS, SOURCE_FIELDS
from syncd.state.db import database_url_problem
from syncd.voxares.contract import MAX_PAGE_SIZE, PRODUCTION_BASE_URL

ENV_PREFIX: Final = "SYNCD_"
CONFIG_ENV: Final = "SYNCD_CONFIG"
SANDBOX: Final = "sandbox"
API_KEY_ENV: Final = "SYNCD_VOXARES__API_KEY"
API_KEY_CREDENTIAL: Final = "voxares-api-key"
DEFAULT_DATABASE_URL: Final = "sqlite:///./voxares-syncd.db"
WEBHOOK_SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - a prefix, not a secret
_LOOPBACK_NAMES: Final = frozenset({"localhost"})
_API_KEY_NOT_SET: Final = (
    f"not set (set {API_KEY_ENV}, voxares.api_key_file, "
    f"or a systemd credential named {API_KEY_CREDENTIAL})"
)
_ERROR_TYPE: Final = "syncd_config"


def problem(key: str, reason: str) -> PydanticCustomError:
    """A validation error about `key` (relative to the model raising it; "" for itself)."""
    return PydanticCustomError(_ERROR_TYPE, "{reason}", {"key": key, "reason": reason})


# --- reusable field types and checks --------------------------------------------------------


def _not_bool(value: Any) -> Any:
    """Numbers only: pydantic would read `true` as 1 (a one-second timeout, port 1)."""
    if isinstance(value, bool):
        raise problem("", "must be a number, not true or false")
    return value


Number = BeforeValidator(_not_bool)
PositiveFloat = Annotated[float, Number, Field(gt=0)]
NonNegativeFloat = Annotated[float, Number, Field(ge=0)]
PositiveInt = Annotated[int, Number, Field(ge=1)]
NonEmptyStr = Annotated[str, Field(min_length=1)]


def _check_name(value: str) -> str:
    """Names of sources and sinks end up in the database (64 chars) and in metrics labels."""
    ok = 0 < len(value) <= 64 and value[0].isascii() and value[0].isalnum()
    if not ok or not all(c.isascii() and (c.isalnum() or c in "-_") for c in value):
        raise problem("", "must be 1-64 of a-z, 0-9, '-', '_', starting with a letter or digit")
    if value != value.lower():
        raise problem("", "must be lower case (environment overrides are case-insensitive)")
    return value


def _check_encoding(value: str) -> str:
    try:
        codecs.lookup(value)
    except LookupError:
        raise problem("", "unknown text encoding") from None
    return value


def _check_delimiter(value: str) -> str:
    if len(value) != 1:
        raise problem("", "must be exactly one character")
    return value


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_http_url(value: str) -> str:
    """https, or http to a loopback host only (anything else would carry patient data or
    the key in clear text)."""
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        raise problem("", "not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise problem("", "must be an https:// URL")
    if parts.scheme == "http" and not _is_loopback(host):
        raise problem("", "must use https (http only for localhost, 127.0.0.1 or ::1)")
    return value


def _check_database_url(value: str) -> str:
    reason = database_url_problem(value)
    if reason:
        raise problem("", reason)
    return value


def _check_any_database_url(value: str) -> str:
    """A source database may be anything SQLAlchemy can open (its driver is checked later)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(value)
    except ArgumentError:
        raise problem("", "not a valid database URL (dialect+driver://user@host/db)") from None
    return value


def _needs_module(module: str, extra: str, key: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise problem(key, f"needs the optional dependency: pip install 'voxares-syncd[{extra}]'")


def _read_secret_file(path: Path, key: str) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise problem(key, f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise problem(key, f"{path} is not UTF-8 text") from None
    if not text:
        raise problem(key, f"{path} is empty")
    return text


class _Section(BaseModel):
    """A table of the TOML file: unknown keys are errors, values cannot change afterwards."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- [voxares] ------------------------------------------------------------------------------


class VoxaresSettings(_Section):
    """How to reach the Voxares API, how fast, and how patiently."""

    base_url: str = PRODUCTION_BASE_URL
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    provider: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    requests_per_second: PositiveFloat = 10.0
    max_concurrency: PositiveInt = 8
    connect_timeout: PositiveFloat = 5.0
    read_timeout: PositiveFloat = 30.0
    write_timeout: PositiveFloat = 30.0
    pool_timeout: PositiveFloat = 10.0
    retry_attempts: PositiveInt = 5
    retry_initial_seconds: NonNegativeFloat = 0.5
    retry_max_backoff_seconds: PositiveFloat = 30.0

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        value = value.strip()
        if value == SANDBOX:
            return value
        _check_http_url(value)
        if urlsplit(value).query or urlsplit(value).fragment:
            raise problem("", "must not have a query or fragment")
        return value.rstrip("/")

    @field_validator("api_key")
    @classmethod
    def _api_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        key = value.get_secret_value().strip()
        if not key or any(c.isspace() for c in key):
            raise problem("", "must be one word without spaces")
        return SecretStr(key)

    @model_validator(mode="after")
    def _backoff(self) -> VoxaresSettings:
        if self.retry_max_backoff_seconds < self.retry_initial_seconds:
            raise problem("retry_max_backoff_seconds", "must be at least retry_initial_seconds")
        return self

    @property
    def is_sandbox(self) -> bool:
        """True when the embedded in-process sandbox stands in for Voxares."""
        return self.base_url == SANDBOX

    def require_api_key(self) -> SecretStr:
        """The key; `load_settings` guarantees it, a hand-built `Settings` may lack it."""
        if self.api_key is None:
            raise ConfigError([f"voxares.api_key: {_API_KEY_NOT_SET}"])
        return self.api_key


# --- [database], [logging], [health] --------------------------------------------------------


class DatabaseSettings(_Section):
    """The state database (SQLite file or PostgreSQL)."""

    # repr=False: a PostgreSQL URL can carry a password.
    url: str = Field(default=DEFAULT_DATABASE_URL, repr=False)
    auto_migrate: bool = False

    _url = field_validator("url")(_check_database_url)


class LoggingSettings(_Section):
    """Log level and format (`auto`: JSON unless stderr is a terminal)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    format: Literal["auto", "json", "console"] = "auto"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class HealthSettings(_Section):
    """The /healthz, /readyz and /metrics server."""

    enabled: bool = True
    host: NonEmptyStr = "127.0.0.1"
    port: Annotated[int, Number, Field(ge=1, le=65535)] = 8787


# --- [patients] -----------------------------------------------------------------------------


class PatientColumns(_Section):
    """Contract field -> the source's column name. The three names are required."""

    # The contract's field names, spelled as users write them in the TOML file.
    providerId: NonEmptyStr
    firstName: NonEmptyStr
    lastName: NonEmptyStr
    mobileNumber: NonEmptyStr | None = None
    email: NonEmptyStr | None = None
    dateOfBirth: NonEmptyStr | None = None

    def mapping(self) -> dict[str, str]:
        """The mapped fields only, as {contract field: column}."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


# The model must name exactly the fields a source may carry.
assert set(PatientColumns.model_fields) == set(SOURCE_FIELDS)
assert set(REQUIRED_SOURCE_FIELDS) <= set(PatientColumns.model_fields)


class CsvPatientSource(_Section):
    """Patients from a CSV export (one file, or a glob of files)."""

    type: Literal["csv"]
    name: str = "csv"
    path: NonEmptyStr
    delimiter: str = ","
    encoding: str = "utf-8-sig"
    columns: PatientColumns

    _name = field_validator("name")(_check_name)
    _delimiter = field_validator("delimiter")(_check_delimiter)
    _encoding = field_validator("encoding")(_check_encoding)

    def column_map(self) -> dict[str, str]:
        """{contract field: CSV column}."""
        return self.columns.mapping()


class SqlPatientSource(_Section):
    """Patients from a SQL query on the EHR's database."""

    type: Literal["sql"]
    name: str = "sql"
    url: str = Field(repr=False)  # may carry a password
    query: NonEmptyStr
    chunk_size: PositiveInt = 1000
    # None: the query's columns are named like the contract fields.
    columns: PatientColumns | None = None

    _name = field_validator("name")(_check_name)
    _url = field_validator("url")(_check_any_database_url)

    def column_map(self) -> dict[str, str]:
        """{contract field: query column}; the identity when `columns` is not set."""
        if self.columns is None:
            return {field: field for field in SOURCE_FIELDS}
        return self.columns.mapping()


PatientSource = Annotated[CsvPatientSource | SqlPatientSource, Field(discriminator="type")]


def _enabled_by_default_if(data: Any, key: str) -> Any:
    """`enabled` defaults to whether the section configures its source(s)."""
    if isinstance(data, dict) and "enabled" not in data:
        return {**data, "enabled": bool(data.get(key))}
    return data


class PatientsSettings(_Section):
    """The patient push job: source rows -> normalised -> POST /patients when changed."""

    enabled: bool = False
    interval_seconds: PositiveFloat = 900.0
    cron: NonEmptyStr | None = None
    jitter_seconds: NonNegativeFloat = 30.0
    freshness_seconds: PositiveFloat = 3600.0
    default_region: str = "HR"
    landline: Literal["drop", "reject"] = "drop"
    invalid_phone: Literal["drop", "reject"] = "reject"
    date_formats: Annotated[list[NonEmptyStr], Field(min_length=1)] = ["%Y-%m-%d"]
    missing_rows: Literal["ignore", "mark_inactive"] = "ignore"
    batch_size: PositiveInt = 100
    # Consecutive 5xx/connection failures after which a push run stops early.
    outage_after: PositiveInt = DEFAULT_OUTAGE_AFTER
    source: PatientSource | None = None

    @model_validator(mode="before")
    @classmethod
    def _enabled_default(cls, data: Any) -> Any:
        return _enabled_by_default_if(data, "source")

    @field_validator("default_region")
    @classmethod
    def _region(cls, value: str) -> str:
        import phonenumbers

        region = value.upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise problem("", "not a region phone numbers are known for (ISO 3166 code, e.g. HR)")
        return region

    @field_validator("date_formats")
    @classmethod
    def _date_formats(cls, value: list[str]) -> list[str]:
        sample = datetime(1987, 11, 23)
        for index, fmt in enumerate(value):
            try:
                round_trip = datetime.strptime(sample.strftime(fmt), fmt)
            except ValueError:
                raise problem(f"[{index}]", "not a strptime format") from None
            if round_trip.date() != sample.date():
                raise problem(f"[{index}]", "must contain a day, a month and a year")
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(value, timezone="UTC")
        except ValueError:
            raise problem("", "not a crontab line (minute hour day month weekday)") from None
        return value

    @model_validator(mode="after")
    def _rules(self) -> PatientsSettings:
        if self.cron is not None and "interval_seconds" in self.model_fields_set:
            raise problem("cron", "set either cron or interval_seconds, not both")
        if self.enabled and self.source is None:
            raise problem("source", "required when patients.enabled is true")
        if self.cron is None and self.freshness_seconds <= self.interval_seconds:
            raise problem("freshness_seconds", "must be longer than interval_seconds")
        return self


# --- [submissions] --------------------------------------------------------------------------


class SubmissionsSettings(_Section):
    """The form-submissions poller: overlapping windows on updatedAt, deduplicated."""

    enabled: bool = True
    interval_seconds: PositiveFloat = 60.0
    overlap_seconds: NonNegativeFloat = 120.0
    settle_seconds: NonNegativeFloat = 30.0
    page_size: Annotated[int, Number, Field(ge=1, le=MAX_PAGE_SIZE)] = MAX_PAGE_SIZE
    max_window_seconds: PositiveFloat = 3600.0
    max_window_items: PositiveInt = 2000
    detail_concurrency: PositiveInt = 8
    start_from: Literal["beginning"] | datetime = "beginning"
    freshness_seconds: PositiveFloat = 600.0
    # Reconciliation sweeps (0 = off): re-list a lookback behind the watermark, list calls
    # only, to find versions a server made visible after polling had passed them.
    sweep_interval_seconds: NonNegativeFloat = 3600.0
    sweep_lookback_seconds: PositiveFloat = 86400.0
    deep_sweep_interval_seconds: NonNegativeFloat = 86400.0
    deep_sweep_lookback_seconds: PositiveFloat = 7 * 86400.0

    @field_validator("start_from", mode="before")
    @classmethod
    def _start_from(cls, value: Any) -> Any:
        if value == "beginning":
            return value
        moment = value
        if isinstance(value, str):
            try:
                moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            except ValueError:
                moment = None
        if not isinstance(moment, datetime):
            raise problem("", 'must be "beginning" or an ISO 8601 timestamp')
        if moment.tzinfo is None:
            raise problem("", "must include a timezone (e.g. 2025-01-01T00:00:00Z)")
        return moment

    @model_validator(mode="after")
    def _rules(self) -> SubmissionsSettings:
        if self.freshness_seconds <= self.interval_seconds:
            raise problem("freshness_seconds", "must be longer than interval_seconds")
        if self.max_window_items < self.page_size:
            raise problem("max_window_items", "must be at least page_size")
        for key in ("sweep_lookback_seconds", "deep_sweep_lookback_seconds"):
            if getattr(self, key) <= self.overlap_seconds + self.settle_seconds:
                raise problem(key, "must be longer than overlap_seconds + settle_seconds")
        return self


# --- [outbox] -------------------------------------------------------------------------------


class _SinkBase(_Section):
    events: Annotated[list[NonEmptyStr], Field(min_length=1)] = ["*"]
    format: Literal["json", "fhir"] = "json"
    # Where a sink's first delivery starts: every event still in the outbox ("beginning",
    # so nothing written before the sink's first run is skipped), or only new ones ("now").
    start: Literal["beginning", "now"] = "beginning"

    @model_validator(mode="after")
    def _format_available(self) -> _SinkBase:
        if self.format == "fhir":
            _needs_module("fhir.resources", "fhir", "format")
        return self


class WebhookSink(_SinkBase):
    """POSTs signed with Standard Webhooks (`webhook-id`, `webhook-signature`)."""

    type: Literal["webhook"]
    url: str = Field(repr=False)  # may carry a token
    secret: SecretStr | None = None
    secret_file: Path | None = None
    connect_timeout: PositiveFloat = 5.0
    read_timeout: PositiveFloat = 10.0
    max_attempts_4xx: PositiveInt = 3

    _url = field_validator("url")(_check_http_url)

    @model_validator(mode="before")
    @classmethod
    def _load_secret_file(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("secret_file"):
            return data
        if data.get("secret") is not None:
            raise problem("secret", "set secret or secret_file, not both")
        return {**data, "secret": _read_secret_file(Path(data["secret_file"]), "secret_file")}

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        secret = value.get_secret_value().strip()
        if not secret.startswith(WEBHOOK_SECRET_PREFIX):
            raise problem("", f"must start with {WEBHOOK_SECRET_PREFIX}")
        try:
            decoded = base64.b64decode(secret.removeprefix(WEBHOOK_SECRET_PREFIX), validate=True)
        except binascii.Error:
            decoded = b""
        if not decoded:
            raise problem("", f"must be base64 after {WEBHOOK_SECRET_PREFIX}")
        return SecretStr(secret)

    @model_validator(mode="after")
    def _secret_required(self) -> WebhookSink:
        if self.secret is None:
            raise problem("secret", "required (set secret or secret_file)")
        return self


class FileSink(_SinkBase):
    """Newline-delimited JSON files in a directory, rotated by size and by day."""

    type: Literal["file"]
    directory: Path
    rotate_bytes: PositiveInt = 64 * 1024 * 1024
    rotate_daily: bool = True


class AmqpSink(_SinkBase):
    """A RabbitMQ exchange, with publisher confirms."""

    type: Literal["amqp"]
    url: str = Field(repr=False)  # carries the broker password
    exchange: NonEmptyStr = "voxares-syncd"
    routing_key: str = "voxares-syncd.events"

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
            host = parts.hostname
        except ValueError:
            host = None
        if not host or parts.scheme not in ("amqp", "amqps"):
            raise problem("", "must be an amqp:// or amqps:// URL")
        return value

    @model_validator(mode="after")
    def _driver(self) -> AmqpSink:
        _needs_module("aio_pika", "amqp", "type")
        return self


Sink = Annotated[WebhookSink | FileSink | AmqpSink, Field(discriminator="type")]


class OutboxSettings(_Section):
    """Delivery of outbox events to downstream sinks (at least once, per sink)."""

    deliver_interval_seconds: PositiveFloat = 5.0
    batch_size: PositiveInt = 100
    batches_in_flight: Annotated[int, Number, Field(ge=1, le=8)] = 2
    max_attempts: PositiveInt = 12
    max_age_hours: PositiveFloat = 72.0
    retention_days: PositiveFloat = 14.0
    keep_order_per_patient: bool = False
    sinks: dict[str, Sink] = {}

    @field_validator("sinks", mode="before")
    @classmethod
    def _sink_names(cls, value: Any) -> Any:
        for name in value if isinstance(value, dict) else ():
            try:
                _check_name(name)
            except PydanticCustomError as exc:
                raise problem(name, str(exc)) from None
        return value


# --- [messages], [content] ------------------------------------------------------------------


class _MessageSourceBase(_Section):
    name: str
    template_id: NonEmptyStr
    key_column: NonEmptyStr
    provider_id_column: NonEmptyStr
    send_at_column: NonEmptyStr | None = None

    _name = field_validator("name")(_check_name)


class CsvMessageSource(_MessageSourceBase):
    """SMS requests from a CSV file: one row, one SMS with a template."""

    type: Literal["csv"]
    path: NonEmptyStr
    delimiter: str = ","
    encoding: str = "utf-8-sig"

    _delimiter = field_validator("delimiter")(_check_delimiter)
    _encoding = field_validator("encoding")(_check_encoding)


class SqlMessageSource(_MessageSourceBase):
    """SMS requests from a SQL query."""

    type: Literal["sql"]
    url: str = Field(repr=False)
    query: NonEmptyStr

    _url = field_validator("url")(_check_any_database_url)


MessageSource = Annotated[CsvMessageSource | SqlMessageSource, Field(discriminator="type")]


class MessagesSettings(_Section):
    """SMS sending (at most once per request key) and delivery-status polling."""

    enabled: bool = False
    interval_seconds: PositiveFloat = 60.0
    status_interval_seconds: PositiveFloat = 300.0
    sources: list[MessageSource] = []

    @model_validator(mode="before")
    @classmethod
    def _enabled_default(cls, data: Any) -> Any:
        return _enabled_by_default_if(data, "sources")

    @model_validator(mode="after")
    def _unique_names(self) -> MessagesSettings:
        seen: set[str] = set()
        for index, source in enumerate(self.sources):
            if source.name in seen:
                raise problem(f"sources[{index}].name", "already used by another source")
            seen.add(source.name)
        return self


class ContentSettings(_Section):
    """The mirror of templates, forms and documents."""

    enabled: bool = True
    interval_seconds: PositiveFloat = 3600.0


# --- the whole file -------------------------------------------------------------------------


class Settings(BaseSettings):
    """Everything voxares-syncd is configured with. Build it with `load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
        frozen=True,
    )

    voxares: VoxaresSettings = Field(default_factory=VoxaresSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    patients: PatientsSettings = Field(default_factory=PatientsSettings)
    submissions: SubmissionsSettings = Field(default_factory=SubmissionsSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    messages: MessagesSettings = Field(default_factory=MessagesSettings)
    content: ContentSettings = Field(default_factory=ContentSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only what load_settings() passes in: it merges the TOML file and the environment
        # itself, so that tests can hand it an environment and the API key's origin is known.
        return (init_settings,)


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping, not os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


def load_settings(path: Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Read, merge and validate the configuration; raise `ConfigError` listing every problem.

    `path`: the TOML file (None: `$SYNCD_CONFIG`, or no file). `env`: the environment
    (default `os.environ`).
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    if path is None and environ.get(CONFIG_ENV):
        path = Path(environ[CONFIG_ENV])
    problems: list[str] = []

    file_data = _read_toml(path) if path is not None else {}
    voxares_in_file = file_data.get("voxares")
    if isinstance(voxares_in_file, dict) and "api_key" in voxares_in_file:
        problems.append(
            f"voxares.api_key: must not be in the config file (set {API_KEY_ENV}, "
            f"voxares.api_key_file, or a systemd credential named {API_KEY_CREDENTIAL})"
        )
        voxares_in_file = {k: v for k, v in voxares_in_file.items() if k != "api_key"}
        file_data = {**file_data, "voxares": voxares_in_file}

    try:
        env_data = _MappingEnvSource(Settings, environ)()
    except SettingsError as exc:
        # Its message names the section, never the value.
        raise ConfigError([f"environment ({ENV_PREFIX}*): {exc}"]) from None
    data = _deep_merge(file_data, env_data)
    problems += _resolve_api_key(data, environ)

    try:
        settings = Settings(**data)
    except ValidationError as exc:
        problems += [_describe(error) for error in exc.errors()]
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return settings


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError([f"config: cannot read {path}: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        # The message gives line and column ("Invalid value (at line 3, column 9)").
        raise ConfigError([f"config: {path} is not valid TOML: {exc}"]) from None


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _resolve_api_key(data: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    """Put the API key into `data["voxares"]["api_key"]` from the first place that has it."""
    voxares = data.get("voxares", {})
    if not isinstance(voxares, dict):
        return []  # validation reports the section itself
    voxares = dict(voxares)
    data["voxares"] = voxares
    if voxares.get("api_key") in ("", None):
        voxares.pop("api_key", None)
    else:
        return []  # from SYNCD_VOXARES__API_KEY

    key_file = voxares.get("api_key_file")
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    try:
        if isinstance(key_file, str | Path) and str(key_file):
            voxares["api_key"] = _read_secret_file(Path(key_file), "api_key_file")
        elif credentials and (Path(credentials) / API_KEY_CREDENTIAL).is_file():
            voxares["api_key"] = _read_secret_file(Path(credentials) / API_KEY_CREDENTIAL, "")
        elif voxares.get("base_url") == SANDBOX:
            from syncd.sandbox.seed import DEMO_API_KEY

            voxares["api_key"] = DEMO_API_KEY
        elif key_file is None:
            return [f"voxares.api_key: {_API_KEY_NOT_SET}"]
    except PydanticCustomError as exc:
        key = (exc.context or {}).get("key") or "api_key"
        return [f"voxares.{key}: {exc.message()}"]
    return []


# The tag of a tagged union shows up in pydantic's error location; users never write it.
_TAGGED_UNIONS: Final = {
    ("patients", "source"): (2, ("csv", "sql")),
    ("outbox", "sinks"): (3, ("webhook", "file", "amqp")),
    ("messages", "sources"): (3, ("csv", "sql")),
}


def _describe(error: ErrorDetails) -> str:
    """One `key.path: reason` line for a pydantic error, without the offending value."""
    loc: list[str | int] = list(error["loc"])
    tags: tuple[str, ...] = ()
    for prefix, (position, union_tags) in _TAGGED_UNIONS.items():
        if tuple(loc[:2]) == prefix:
            tags = union_tags
            if len(loc) > position and loc[position] in union_tags:
                del loc[position]
    kind = error["type"]
    reason = error["msg"]
    if kind == _ERROR_TYPE:
        context = error.get("ctx") or {}
        reason = str(context.get("reason", reason))
        key = str(context.get("key", ""))
        if key:
            loc.extend(key.split("."))
    elif kind == "missing":
        reason = "required"
    elif kind == "extra_forbidden":
        reason = "unknown key"
    elif kind in ("union_tag_not_found", "union_tag_invalid"):
        loc.append("type")
        reason = ("required, one of " if kind == "union_tag_not_found" else "must be one of ") + (
            ", ".join(tags)
        )
    else:
        reason = reason.removeprefix("Value error, ").replace("Input should", "must")
        value = error.get("input")
        if isinstance(value, str) and len(value) >= 3 and value in reason:
            reason = "invalid value"
    return f"{_join(loc)}: {reason}"


def _join(loc: list[str | int]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.startswith("["):
            text += part
        else:
            text += f".{part}" if text else part
    return text or "config"
