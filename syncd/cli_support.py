"""What every `syncd` command shares: the consoles, loading the configuration, running a
coroutine, the state database of a local command, and how errors and bad options end.

Exit codes: 0 ok; 1 a command failed (one `error:` line on stderr); 2 a bad argument or
option value (`error: --option: why`); 78 (EX_CONFIG) the configuration is invalid, one
line per problem on stderr naming the key.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Collection, Coroutine, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console

from syncd.config import Settings, load_settings
from syncd.exceptions import ConfigError, SyncdError
from syncd.logging import configure_logging
from syncd.render import to_json

EX_CONFIG = 78
EX_USAGE = 2
T = TypeVar("T")

out = Console()
# soft_wrap: one line per problem (exit 78 contract), never wrapped at 80 columns in a pipe.
err = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="The TOML config file (default: $SYNCD_CONFIG)."),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the rows as a JSON array (for scripts).")
]


def load_config(config: Path | None, *, need_api_key: bool = False) -> Settings:
    """Load the configuration, or stop with one line per problem and exit 78.

    Only the commands that call Voxares (`run`, `sync`, `doctor`) pass `need_api_key`: the
    others work on a host where the key exists only as the service's systemd credential.
    """
    try:
        settings = load_settings(config, need_api_key=need_api_key)
    except ConfigError as exc:
        exit_for(exc)
    configure_logging(settings.logging.level, settings.logging.format)
    return settings


def exit_for(exc: SyncdError, failure_code: int = 1) -> NoReturn:
    """Our own error as one line per problem (`config error:` exit 78, else `error:` exit
    `failure_code`)."""
    if isinstance(exc, ConfigError):
        for line in exc.problems or [str(exc)]:
            err.print(f"config error: {line}", markup=False, highlight=False)
        raise typer.Exit(EX_CONFIG) from None
    err.print(f"error: {exc}", markup=False, highlight=False)
    raise typer.Exit(failure_code) from None


def run_async(coro: Coroutine[Any, Any, T], *, failure_code: int = 1) -> T:
    """Run a coroutine, turning our own errors into one line and exit `failure_code` (78 for
    config)."""
    try:
        return asyncio.run(coro)
    except SyncdError as exc:
        exit_for(exc, failure_code)


def open_engine(settings: Settings, *, create: bool = False) -> Any:
    """The state database's engine (the caller disposes of it), opened as it is: a missing
    SQLite file is not created unless `create` (only `db upgrade` creates it), so a
    read-only command leaves no trace on a fresh machine."""
    from syncd.compose import build_engine

    return build_engine(settings, create=create)


@contextmanager
def migrated_state(settings: Settings) -> Iterator[Any]:
    """The state database for a local command, checked to be at the code's schema revision
    first (an unmigrated one says `run syncd db upgrade`, not `no such table`)."""
    from syncd.state.db import check_migrated

    engine = open_engine(settings)
    try:
        check_migrated(engine)
        yield engine
    finally:
        engine.dispose()


def bad_option(option: str, reason: str) -> NoReturn:
    """A bad option value: `error: --option: reason`, exit 2 (as click does for usage)."""
    err.print(f"error: {option}: {reason}", markup=False, highlight=False)
    raise typer.Exit(EX_USAGE)


def parse_since(value: str, option: str = "--since") -> datetime:
    """An ISO 8601 date or time (UTC when it names no zone), or a bad option."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        bad_option(option, f"not an ISO 8601 date or time: {value!r}")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def one_of(option: str, value: str | None, choices: Collection[str]) -> str | None:
    """`value` when it is one of `choices` (or None); otherwise a bad option."""
    if value is not None and value not in choices:
        bad_option(option, f"{value!r} is not one of {', '.join(choices)}")
    return value


def known_name(option: str, value: str | None, what: str, known: Collection[str]) -> str | None:
    """`value` when it names a known `what` (configured or in the state database)."""
    if value is not None and value not in known:
        names = ", ".join(sorted(known)) or "none"
        bad_option(option, f"no {what} {value!r} (known: {names})")
    return value


def at_least_one(option: str, value: int) -> int:
    """`value` when it is 1 or more; otherwise a bad option."""
    if value < 1:
        bad_option(option, f"must be at least 1, got {value}")
    return value


def print_json(records: Any) -> None:
    """Records as a JSON array on stdout, unstyled (rich would wrap and colour it)."""
    sys.stdout.write(to_json(records) + "\n")
