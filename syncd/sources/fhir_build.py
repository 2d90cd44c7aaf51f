"""Build a `FhirPatientSource` from its settings: read its secrets, make its auth."""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlalchemy import Engine

from syncd.config_fhir import FhirAuth, FhirPatientSource
from syncd.sources.fhir import FhirPatientSource as Source
from syncd.sources.fhir_auth import BearerAuth, SmartBackendAuth, basic_auth, read_secret
from syncd.sources.fhir_cursor import CursorStore

_KEY: str = "patients.source.auth"


def build_auth(auth: FhirAuth) -> httpx.Auth | None:
    """The `httpx.Auth` for the configured type, its secret read now (`ConfigError` if not)."""
    if auth.type == "basic":
        assert auth.username is not None
        password = read_secret(
            f"{_KEY}.password_file", file=auth.password_file, credential=auth.password_credential
        )
        return basic_auth(auth.username, password)
    if auth.type == "bearer":
        token = read_secret(
            f"{_KEY}.token_file", file=auth.token_file, credential=auth.token_credential
        )
        return BearerAuth(token)
    if auth.type == "smart":
        assert auth.client_id is not None
        assert auth.token_url is not None
        assert auth.key_id is not None
        key = read_secret(
            f"{_KEY}.private_key_file",
            file=auth.private_key_file,
            credential=auth.private_key_credential,
        )
        return SmartBackendAuth(
            client_id=auth.client_id,
            token_url=auth.token_url,
            private_key=key,
            key_id=auth.key_id,
            scope=auth.scope,
            algorithm=auth.algorithm,
        )
    return None


def build_fhir_source(settings: FhirPatientSource, engine: Engine | None) -> Source:
    """The source; its cursor kept in `engine` when one is given."""
    base_url = settings.base_url.rstrip("/")
    cursors = CursorStore(engine, settings.name, base_url) if engine is not None else None
    return Source(
        settings.name,
        base_url,
        identifier_system=settings.identifier_system,
        auth=build_auth(settings.auth),
        page_size=settings.page_size,
        overlap=timedelta(seconds=settings.overlap_seconds),
        full_read_every=settings.full_read_every(),
        cursors=cursors,
        timeout=settings.timeout_seconds,
    )
