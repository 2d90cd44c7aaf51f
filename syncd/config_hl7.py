"""The `[hl7]` table: the HL7 v2 ADT feed (an MLLP listener and/or a file drop).

Imported into `syncd.config` as `Settings.hl7`. The normalisation policy (region, phone
and landline rules) is `[patients]`'s, shared with every patient source.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from syncd.config_fields import (
    NonEmptyStr,
    Number,
    PositiveFloat,
    PositiveInt,
    Section,
    check_encoding,
    check_name,
    problem,
)

Port = Annotated[int, Number, Field(ge=0, le=65535)]


class Hl7Mapping(Section):
    """Which HL7 repetitions feed which contract field (empty = any)."""

    identifier_authority: str = ""
    identifier_type: str = "MR"
    name_type: str = "L"
    mobile_equipment: list[NonEmptyStr] = ["CP"]
    mobile_use: list[NonEmptyStr] = []
    email_use: list[NonEmptyStr] = ["NET"]


class Hl7Settings(Section):
    """The HL7 v2 ADT feed: receive, make durable, acknowledge; apply to the mirror."""

    enabled: bool = False
    # The name quarantine entries and the inbound table give this feed.
    name: Annotated[str, Field(max_length=64)] = "hl7"
    listen: bool = True
    host: NonEmptyStr = "127.0.0.1"
    port: Port = 2575
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # CIDR networks allowed to connect (empty: any peer that can reach host:port).
    allowed_peers: list[str] = []
    max_message_bytes: PositiveInt = 1_048_576
    # The character set of messages whose MSH-18 is empty.
    default_charset: str = "utf-8"
    # A directory of `*.hl7` files (single messages or FHS/BHS batches), read and moved
    # to its `processed/` subdirectory.
    files_directory: Path | None = None
    files_glob: NonEmptyStr = "*.hl7"
    files_interval_seconds: PositiveFloat = 10.0
    apply_interval_seconds: PositiveFloat = 5.0
    batch_size: PositiveInt = 500
    mapping: Hl7Mapping = Field(default_factory=Hl7Mapping)

    @model_validator(mode="before")
    @classmethod
    def _enabled_default(cls, data: Any) -> Any:
        # A [hl7] table that configures anything is on unless it says otherwise.
        if isinstance(data, dict) and "enabled" not in data:
            return {**data, "enabled": bool(data)}
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)

    @field_validator("default_charset")
    @classmethod
    def _charset(cls, value: str) -> str:
        return check_encoding(value)

    @field_validator("allowed_peers")
    @classmethod
    def _peers(cls, value: list[str]) -> list[str]:
        for index, text in enumerate(value):
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise problem(f"[{index}]", "not an IP address or CIDR network") from None
        return value

    @model_validator(mode="after")
    def _rules(self) -> Hl7Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise problem("tls_key_file", "set both tls_cert_file and tls_key_file, or neither")
        if self.enabled and not self.listen and self.files_directory is None:
            raise problem("listen", "with listen = false, files_directory is required")
        return self

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """`allowed_peers` as networks."""
        return [ipaddress.ip_network(text, strict=False) for text in self.allowed_peers]
