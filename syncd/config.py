"""The configuration: one TOML file, every key overridable from the environment.

`load_settings(path, env)` reads the TOML file (`--config PATH`, else `$SYNCD_CONFIG`, else
none: all defaults), lays `SYNCD_<SECTION>__<KEY>` environment variables over it
(`SYNCD_VOXARES__REQUESTS_PER_SECOND=5`, `SYNCD_OUTBOX__SINKS__CRM__URL=...`; lists as
JSON), validates the result and returns a frozen `Settings`. Every problem is reported at
once, one line each, as `key.path: reason` (or `SYNCD_VARIABLE: reason` for a value from the
environment), in a `ConfigError`. Unknown keys are errors, so a typo is never silently
ignored. Values are never echoed back: they may be secrets.

The Voxares API key is never read from the TOML file: `syncd.api_key` says where it comes
from. `voxares.base_url = "sandbox"` selects the embedded sandbox, which needs no key (its
demo key is used).

Relative paths (CSV files, key files, sink directories, a SQLite file) are relative to the
working directory, as for any command-line tool. The default state database is
`/var/lib/voxares-syncd/state.db`, the directory the systemd unit and the container image
give the daemon, so a shell command and the service open the same database by default.

Reusable field checks live in `syncd.config_fields`, the wording of problems in
`syncd.config_errors`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from syncd.api_key import NOT_SET
from syncd.config_errors import ENV_PREFIX
from syncd.config_fhir import FhirBulkPatientSource, FhirPatientSource
from syncd.config_fields import (
    NonEmptyStr,
    NonNegativeFloat,
    Number,
    PositiveFloat,
    PositiveInt,
    Section,
    check_any_database_url,
    check_database_url,
    check_delimiter,
    check_encoding,
    check_http_url,
    check_name,
    is_loopback,
    problem,
)
from syncd.config_hl7 import Hl7Settings
from syncd.config_outbox import WEBHOOK_SECRET_PREFIX as WEBHOOK_SECRET_PREFIX
from syncd.config_outbox import AmqpSink as AmqpSink
from syncd.config_outbox import FileSink as FileSink
from syncd.config_outbox import OutboxSettings as OutboxSettings
from syncd.config_outbox import Sink as Sink
from syncd.config_outbox import WebhookSink as WebhookSink
from syncd.config_page import StatusPageSettings
from syncd.exceptions import ConfigError
from syncd.patients.outage import DEFAULT_OUTAGE_AFTER
from syncd.sources import REQUIRED_SOURCE_FIELDS, SOURCE_FIELDS
from syncd.voxares.contract import MAX_PAGE_SIZE, PRODUCTION_BASE_URL

CONFIG_ENV: Final = "SYNCD_CONFIG"
SANDBOX: Final = "sandbox"
# The layout of an installation (deploy/README.md): the config directory, where `syncd init`
# writes and the key file lives, and the state directory of the systemd unit
# (StateDirectory=) and of the container image (its volume).
CONFIG_DIRECTORY: Final = Path("/etc/voxares-syncd")
DEFAULT_API_KEY_FILE: Final = CONFIG_DIRECTORY / "api-key"
STATE_DIRECTORY: Final = Path("/var/lib/voxares-syncd")
DEFAULT_DATABASE_URL: Final = f"sqlite:///{STATE_DIRECTORY}/state.db"


# --- [voxares] ------------------------------------------------------------------------------


class VoxaresSettings(Section):
    """How to reach the Voxares API, how fast, and how patiently."""

    base_url: str = PRODUCTION_BASE_URL
    api_key: SecretStr | None = None
    # The third place the key is looked for (syncd.api_key); "" for none.
    api_key_file: Path | None = DEFAULT_API_KEY_FILE
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
        check_http_url(value)
        if urlsplit(value).query or urlsplit(value).fragment:
            raise problem("", "must not have a query or fragment")
        return value.rstrip("/")

    @field_validator("api_key_file", mode="before")
    @classmethod
    def _no_key_file(cls, value: Any) -> Any:
        # "" switches the file off (pydantic would read it as the current directory).
        return None if value == "" else value

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
        """The key; `load_settings` gives it unless asked not to (`need_api_key=False`)."""
        if self.api_key is None:
            raise ConfigError([f"voxares.api_key: {NOT_SET}"])
        return self.api_key


# --- [database], [logging], [health] --------------------------------------------------------


class DatabaseSettings(Section):
    """The state database (SQLite file or PostgreSQL)."""

    # repr=False: a PostgreSQL URL can carry a password.
    url: str = Field(default=DEFAULT_DATABASE_URL, repr=False)
    auto_migrate: bool = False
    # Finished job runs are kept this long (each job's latest run and latest success always).
    run_history_days: PositiveFloat = 30.0

    _url = field_validator("url")(check_database_url)


class LoggingSettings(Section):
    """Log level and format (`auto`: JSON unless stderr is a terminal)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    format: Literal["auto", "json", "console"] = "auto"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class HealthSettings(Section):
    """The /healthz, /readyz and /metrics server."""

    enabled: bool = True
    host: NonEmptyStr = "127.0.0.1"
    port: Annotated[int, Number, Field(ge=1, le=65535)] = 8787

    def exposure_warning(self) -> str | None:
        """Why this address is risky, or None: the endpoints have no authentication, and
        /metrics and /readyz describe the daemon to whoever can reach them."""
        if not self.enabled or is_loopback(self.host):
            return None
        return (
            f"health.host = {self.host!r} serves /healthz, /readyz and /metrics without "
            "authentication beyond this machine; keep 127.0.0.1 unless a firewall or a "
            "private published port (-p 127.0.0.1:8787:8787) guards it"
        )


# --- [patients] -----------------------------------------------------------------------------


class PatientColumns(Section):
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


class CsvPatientSource(Section):
    """Patients from a CSV export (one file, or a glob of files)."""

    type: Literal["csv"]
    name: str = "csv"
    path: NonEmptyStr
    delimiter: str = ","
    encoding: str = "utf-8-sig"
    columns: PatientColumns

    _name = field_validator("name")(check_name)
    _delimiter = field_validator("delimiter")(check_delimiter)
    _encoding = field_validator("encoding")(check_encoding)

    def column_map(self) -> dict[str, str]:
        """{contract field: CSV column}."""
        return self.columns.mapping()


class SqlPatientSource(Section):
    """Patients from a SQL query on the EHR's database."""

    type: Literal["sql"]
    name: str = "sql"
    url: str = Field(repr=False)  # may carry a password
    query: NonEmptyStr
    chunk_size: PositiveInt = 1000
    # None: the query's columns are named like the contract fields.
    columns: PatientColumns | None = None

    _name = field_validator("name")(check_name)
    _url = field_validator("url")(check_any_database_url)

    def column_map(self) -> dict[str, str]:
        """{contract field: query column}; the identity when `columns` is not set."""
        if self.columns is None:
            return {field: field for field in SOURCE_FIELDS}
        return self.columns.mapping()


PatientSource = Annotated[
    CsvPatientSource | SqlPatientSource | FhirPatientSource | FhirBulkPatientSource,
    Field(discriminator="type"),
]


def _enabled_by_default_if(data: Any, key: str) -> Any:
    """`enabled` defaults to whether the section configures its source(s)."""
    if isinstance(data, dict) and "enabled" not in data:
        return {**data, "enabled": bool(data.get(key))}
    return data


class PatientsSettings(Section):
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


class SubmissionsSettings(Section):
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


# --- [messages], [content] ------------------------------------------------------------------


class _MessageSourceBase(Section):
    name: str
    template_id: NonEmptyStr
    key_column: NonEmptyStr
    provider_id_column: NonEmptyStr
    send_at_column: NonEmptyStr | None = None

    _name = field_validator("name")(check_name)


class CsvMessageSource(_MessageSourceBase):
    """SMS requests from a CSV file: one row, one SMS with a template."""

    type: Literal["csv"]
    path: NonEmptyStr
    delimiter: str = ","
    encoding: str = "utf-8-sig"

    _delimiter = field_validator("delimiter")(check_delimiter)
    _encoding = field_validator("encoding")(check_encoding)


class SqlMessageSource(_MessageSourceBase):
    """SMS requests from a SQL query."""

    type: Literal["sql"]
    url: str = Field(repr=False)
    query: NonEmptyStr

    _url = field_validator("url")(check_any_database_url)


MessageSource = Annotated[CsvMessageSource | SqlMessageSource, Field(discriminator="type")]


class MessagesSettings(Section):
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


class ContentSettings(Section):
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
    status_page: StatusPageSettings = Field(default_factory=StatusPageSettings)
    patients: PatientsSettings = Field(default_factory=PatientsSettings)
    submissions: SubmissionsSettings = Field(default_factory=SubmissionsSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    messages: MessagesSettings = Field(default_factory=MessagesSettings)
    content: ContentSettings = Field(default_factory=ContentSettings)
    hl7: Hl7Settings = Field(default_factory=Hl7Settings)

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


def load_settings(
    path: Path | None, env: Mapping[str, str] | None = None, *, need_api_key: bool = True
) -> Settings:
    """Read, merge and validate the configuration; raise `ConfigError` listing every problem.

    `path`: the TOML file (None: `$SYNCD_CONFIG`, or no file). `env`: the environment
    (default `os.environ`). `need_api_key`: look for the API key (see `syncd.api_key`); the
    commands that never call Voxares pass False, and get `voxares.api_key = None`.
    """
    from syncd.config_loader import load

    return load(path, os.environ if env is None else env, need_api_key=need_api_key)
