"""Settings of the FHIR patient sources (`[patients.source]` with `type = "fhir"` or
`type = "fhir-bulk"`), imported into `syncd.config`.

Secrets (a basic-auth password, a bearer token, a SMART private key) are never in the file:
each is named by a `*_file` or a systemd `*_credential` and read when the source is built
(`syncd.sources.fhir_auth.read_secret`), so that they need not exist for local commands.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import field_validator, model_validator

from syncd.config_fields import (
    NonEmptyStr,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    Section,
    check_http_url,
    check_name,
    needs_module,
    problem,
)


class FhirAuth(Section):
    """How the source authenticates to the FHIR server (see syncd.sources.fhir_auth)."""

    type: Literal["none", "basic", "bearer", "smart"] = "none"
    # basic
    username: NonEmptyStr | None = None
    password_file: NonEmptyStr | None = None
    password_credential: NonEmptyStr | None = None
    # bearer
    token_file: NonEmptyStr | None = None
    token_credential: NonEmptyStr | None = None
    # smart (SMART Backend Services)
    client_id: NonEmptyStr | None = None
    token_url: NonEmptyStr | None = None
    private_key_file: NonEmptyStr | None = None
    private_key_credential: NonEmptyStr | None = None
    key_id: NonEmptyStr | None = None
    scope: NonEmptyStr = "system/Patient.read"
    algorithm: Literal["RS384", "ES384"] = "RS384"

    @field_validator("token_url")
    @classmethod
    def _token_url(cls, value: str | None) -> str | None:
        return None if value is None else check_http_url(value)

    @model_validator(mode="after")
    def _rules(self) -> FhirAuth:
        if self.type == "basic":
            if self.username is None:
                raise problem("username", "required for basic auth")
            if self.password_file is None and self.password_credential is None:
                raise problem("password_file", "basic auth needs password_file or a credential")
        elif self.type == "bearer":
            if self.token_file is None and self.token_credential is None:
                raise problem("token_file", "bearer auth needs token_file or token_credential")
        elif self.type == "smart":
            needs_module("jwt", "fhir", "type")
            for key in ("client_id", "token_url", "key_id"):
                if getattr(self, key) is None:
                    raise problem(key, "required for SMART Backend Services")
            if self.private_key_file is None and self.private_key_credential is None:
                raise problem(
                    "private_key_file", "smart auth needs private_key_file or a credential"
                )
        return self


class FhirPatientSource(Section):
    """Patients from a FHIR R4 server's Patient search, incremental by _lastUpdated."""

    type: Literal["fhir"]
    name: str = "fhir"
    base_url: NonEmptyStr
    # The identifier system whose value is the providerId (e.g. the EHR's MRN system).
    identifier_system: NonEmptyStr
    page_size: PositiveInt = 100
    # Each incremental read starts this far before the last read began (server clock).
    overlap_seconds: NonNegativeFloat = 300.0
    # A full read (complete: may mark missing patients inactive) this often; 0 = never
    # after the first.
    full_read_every_hours: NonNegativeFloat = 24.0
    timeout_seconds: PositiveFloat = 30.0
    auth: FhirAuth = FhirAuth()

    _name = field_validator("name")(check_name)
    _base_url = field_validator("base_url")(check_http_url)

    @model_validator(mode="after")
    def _needs_fhir(self) -> FhirPatientSource:
        needs_module("fhir.resources", "fhir", "type")
        return self

    def full_read_every(self) -> timedelta | None:
        hours = self.full_read_every_hours
        return timedelta(hours=hours) if hours > 0 else None


class FhirBulkPatientSource(Section):
    """Patients from a FHIR Bulk Data export's NDJSON files (a directory or a glob)."""

    type: Literal["fhir-bulk"]
    name: str = "fhir-bulk"
    path: NonEmptyStr
    identifier_system: NonEmptyStr
    # true when the export was made with _since (only what changed: never a complete read).
    since_export: bool = False

    _name = field_validator("name")(check_name)

    @model_validator(mode="after")
    def _needs_fhir(self) -> FhirBulkPatientSource:
        needs_module("fhir.resources", "fhir", "type")
        return self
