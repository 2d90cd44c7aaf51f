"""`[status_page]`: the clinic admin's status page at `/` of the health server.

Kept beside `config.py` (imported into `Settings` there): the page's own settings, its
sampling and retention, and who may read it when it is reachable beyond this machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from syncd.config_fields import Number, PositiveFloat, is_loopback, problem

PageAuth = Literal["none", "basic", "bearer"]


class StatusPageSettings(BaseModel):
    """The status page and the lag/backlog samples its charts draw."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    # How often the daemon records the form polling lag and each sink's outbox backlog.
    sample_interval_seconds: Annotated[float, Number, Field(ge=5)] = 60.0
    # Samples older than this are deleted (the 7-day chart needs at least 7).
    retention_days: PositiveFloat = 8.0
    # The page reloads itself this often (a <meta> refresh: works with JavaScript off).
    refresh_seconds: Annotated[int, Number, Field(ge=5)] = 60
    # "basic" (the file holds one `user:password` line) or "bearer" (it holds the token).
    auth: PageAuth = "none"
    credential_file: Path | None = None

    @field_validator("credential_file", mode="before")
    @classmethod
    def _no_file(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _file_for_auth(self) -> StatusPageSettings:
        if self.auth != "none" and self.credential_file is None:
            raise problem("credential_file", f"required when auth = {self.auth!r}")
        return self

    def exposure_warning(self, host: str, *, health_enabled: bool) -> str | None:
        """Why serving the page on `host` is risky, or None (loopback, or protected)."""
        if not (health_enabled and self.enabled) or is_loopback(host) or self.auth != "none":
            return None
        return (
            f"status_page.auth = 'none' serves the status page at / on {host!r} without "
            'authentication; set auth = "basic" or "bearer" with a credential_file, or keep '
            "health.host = 127.0.0.1"
        )


def read_credential(settings: StatusPageSettings) -> str | None:
    """The secret the page checks requests against (None when auth is off).

    Raises `ConfigError` naming `status_page.credential_file` when the file cannot be read,
    is empty, or (basic) holds no `user:password`; never quoting its content.
    """
    from syncd.exceptions import ConfigError

    if settings.auth == "none" or settings.credential_file is None:
        return None
    key = "status_page.credential_file"
    from syncd.config_fields import open_to_everyone

    path = Path(settings.credential_file)
    try:
        with path.open("rb") as handle:
            exposed = open_to_everyone(handle.fileno(), path)
            text = handle.read().decode("utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            [f"{key}: cannot read it ({exc.strerror or type(exc).__name__})"]
        ) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{key}: not UTF-8 text"]) from None
    if exposed is not None:
        raise ConfigError([f"{key}: {exposed}"])
    if not text or len(text.splitlines()) != 1:
        raise ConfigError([f"{key}: must hold exactly one line"])
    user, _, password = text.partition(":")
    if settings.auth == "basic" and not (user and password):
        raise ConfigError([f"{key}: must hold one user:password line for auth = 'basic'"])
    return text
