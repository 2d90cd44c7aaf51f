"""`[outbox]`: delivery of outbox events to downstream sinks, and each sink's settings.

A sink is a `[outbox.sinks.NAME]` table whose `type` picks its model: `webhook` (Standard
Webhooks, signed), `file` (NDJSON files) or `amqp` (a RabbitMQ exchange). A webhook's
signing secret may come from `secret_file`, refused when every user can read it.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_core import PydanticCustomError

from syncd.config_fields import (
    NonEmptyStr,
    Number,
    PositiveFloat,
    PositiveInt,
    Section,
    check_http_url,
    check_name,
    needs_module,
    problem,
    read_secret_file,
)

WEBHOOK_SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - a prefix, not a secret


class _SinkBase(Section):
    events: Annotated[list[NonEmptyStr], Field(min_length=1)] = ["*"]
    format: Literal["json", "fhir"] = "json"
    # Where a sink's first delivery starts: every event still in the outbox ("beginning",
    # so nothing written before the sink's first run is skipped), or only new ones ("now").
    start: Literal["beginning", "now"] = "beginning"

    @model_validator(mode="after")
    def _format_available(self) -> _SinkBase:
        if self.format == "fhir":
            needs_module("fhir.resources", "fhir", "format")
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

    _url = field_validator("url")(check_http_url)

    @model_validator(mode="before")
    @classmethod
    def _load_secret_file(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("secret_file"):
            return data
        if data.get("secret") is not None:
            raise problem("secret", "set secret or secret_file, not both")
        return {**data, "secret": read_secret_file(Path(data["secret_file"]), "secret_file")}

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
        needs_module("aio_pika", "amqp", "type")
        return self


Sink = Annotated[WebhookSink | FileSink | AmqpSink, Field(discriminator="type")]


class OutboxSettings(Section):
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
                check_name(name)
            except PydanticCustomError as exc:
                raise problem(name, str(exc)) from None
        return value
