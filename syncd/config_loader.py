"""Loading the configuration: the TOML file, the `SYNCD_*` environment over it, the API key.

`syncd.config.load_settings` is the entry point; this module does the work, so that the
models in `syncd.config` stay apart from where their values come from.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsError
from pydantic_settings.sources.utils import parse_env_vars

from syncd.api_key import API_KEY_FILE_ENV, PLACES, resolve_api_key
from syncd.config import CONFIG_ENV, SANDBOX, Settings
from syncd.config import DEFAULT_API_KEY_FILE as DEFAULT_KEY
from syncd.config_errors import ENV_PREFIX, KeyPath, describe, env_paths
from syncd.exceptions import ConfigError

_KEY_IN_FILE: Final = (
    "voxares.api_key: must not be in the config file (use " + ", ".join(PLACES) + ")"
)


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping, not os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


def load(path: Path | None, environ: Mapping[str, str], *, need_api_key: bool) -> Settings:
    """`syncd.config.load_settings`: read, merge, validate; one problem per line."""
    if path is None and environ.get(CONFIG_ENV):
        path = Path(environ[CONFIG_ENV])
    problems: list[str] = []

    file_data = _read_toml(path) if path is not None else {}
    voxares_in_file = file_data.get("voxares")
    if isinstance(voxares_in_file, dict) and "api_key" in voxares_in_file:
        problems.append(_KEY_IN_FILE)
        voxares_in_file = {k: v for k, v in voxares_in_file.items() if k != "api_key"}
        file_data = {**file_data, "voxares": voxares_in_file}

    data = _deep_merge(file_data, _environment(environ))
    voxares = data.get("voxares")
    env_key = voxares.pop("api_key", None) if isinstance(voxares, dict) else None
    from_env = env_paths(environ, Settings.model_fields)

    settings: Settings | None = None
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        problems += [describe(error, from_env) for error in exc.errors()]
    key: SecretStr | None = None
    if need_api_key:
        # Looked for even when validation failed, so that every problem is listed at once.
        raw = voxares if isinstance(voxares, dict) else {}
        base_url = settings.voxares.base_url if settings else raw.get("base_url")
        key_file = (
            settings.voxares.api_key_file if settings else raw.get("api_key_file", DEFAULT_KEY)
        )
        try:
            key = _api_key(base_url, key_file, env_key, from_env, environ)
        except ConfigError as exc:
            problems += exc.problems
    if problems or settings is None:
        raise ConfigError(problems)
    if key is None:
        return settings
    return settings.model_copy(
        update={"voxares": settings.voxares.model_copy(update={"api_key": key})}
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError([f"config: cannot read {path}: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        # The message gives line and column ("Invalid value (at line 3, column 9)").
        raise ConfigError([f"config: {path} is not valid TOML: {exc}"]) from None


def _environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """The `SYNCD_*` overrides as nested data; a value that does not parse names its variable."""
    try:
        return _MappingEnvSource(Settings, environ)()
    except SettingsError:
        pass
    # pydantic-settings names only the section; find the variables it could not parse.
    culprits = []
    for name in sorted(environ):
        if name.upper().startswith(ENV_PREFIX):
            try:
                _MappingEnvSource(Settings, {name: environ[name]})()
            except SettingsError:
                culprits.append(name)
    raise ConfigError(
        [
            f"{name}: not valid JSON (lists and tables are written as JSON, "
            f"e.g. SYNCD_PATIENTS__DATE_FORMATS='[\"%d.%m.%Y\"]')"
            for name in culprits or [f"{ENV_PREFIX}*"]
        ]
    ) from None


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _api_key(
    base_url: object,
    key_file: object,
    env_key: object,
    from_env: set[KeyPath],
    environ: Mapping[str, str],
) -> SecretStr:
    """The API key from the first place that has it (the embedded sandbox has its own)."""
    if base_url == SANDBOX:
        from syncd.sandbox.seed import DEMO_API_KEY

        return SecretStr(DEMO_API_KEY)
    return resolve_api_key(
        env_key=env_key if isinstance(env_key, str) else None,
        key_file=key_file if isinstance(key_file, str | Path) else None,
        key_file_name=(
            API_KEY_FILE_ENV if ("voxares", "api_key_file") in from_env else "voxares.api_key_file"
        ),
        environ=environ,
    )
