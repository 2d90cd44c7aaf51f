"""The `syncd` command line: parse arguments, call one function, render the result.

Exit codes: 0 ok; 1 a command failed; 78 (EX_CONFIG) the configuration is invalid, one line
per problem on stderr naming the key.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from syncd.config import Settings, load_settings
from syncd.exceptions import ConfigError, SyncdError
from syncd.logging import configure_logging

EX_CONFIG = 78
T = TypeVar("T")

app = typer.Typer(
    name="syncd",
    help="voxares-syncd: keeps a clinic's EHR and Voxares in sync.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="The state database.", no_args_is_help=True)
sync_app = typer.Typer(help="Run one job once, now.", no_args_is_help=True)
quarantine_app = typer.Typer(help="Source rows that could not be pushed.", no_args_is_help=True)
outbox_app = typer.Typer(help="Events for downstream systems.", no_args_is_help=True)
messages_app = typer.Typer(help="SMS requests.", no_args_is_help=True)
content_app = typer.Typer(help="The mirrored content catalogue.", no_args_is_help=True)
sandbox_app = typer.Typer(help="The Voxares API emulator.", no_args_is_help=True)
for sub, name in [
    (db_app, "db"),
    (sync_app, "sync"),
    (quarantine_app, "quarantine"),
    (outbox_app, "outbox"),
    (messages_app, "messages"),
    (content_app, "content"),
    (sandbox_app, "sandbox"),
]:
    app.add_typer(sub, name=name)

out = Console()
err = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="The TOML config file (default: $SYNCD_CONFIG)."),
]


def _settings(config: Path | None) -> Settings:
    """Load the configuration, or stop with one line per problem and exit 78."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        for line in exc.problems or [str(exc)]:
            err.print(f"config error: {line}", markup=False, highlight=False)
        raise typer.Exit(EX_CONFIG) from None
    configure_logging(settings.logging.level, settings.logging.format)
    return settings


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine, turning our own errors into one line and exit 1."""
    try:
        return asyncio.run(coro)
    except ConfigError as exc:
        for line in exc.problems or [str(exc)]:
            err.print(f"config error: {line}", markup=False, highlight=False)
        raise typer.Exit(EX_CONFIG) from None
    except SyncdError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        raise typer.Exit(1) from None


def _engine(settings: Settings) -> Any:
    from syncd.compose import build_engine

    return build_engine(settings)


def _ago(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    seconds = (datetime.now(UTC) - moment).total_seconds()
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


# --- the daemon ---------------------------------------------------------------------------


@app.command()
def run(config: ConfigOption = None) -> None:
    """Run the daemon: every enabled job on its schedule, until SIGTERM."""
    from syncd.service import serve

    settings = _settings(config)
    _run(serve(settings))


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the config file.")] = Path(
        "config.toml"
    ),
) -> None:
    """Write a documented config file to start from (every key, with its default)."""
    from syncd.examples import example_config

    if path.exists():
        err.print(f"error: {path} exists; not overwriting it")
        raise typer.Exit(1)
    path.write_text(example_config(), encoding="utf-8")
    out.print(f"wrote {path}: edit it, then run `syncd doctor --config {path}`")


@app.command()
def demo(
    directory: Annotated[
        Path, typer.Option("--dir", help="Where the demo keeps its files.")
    ] = Path("syncd-demo"),
    patients: Annotated[int, typer.Option(help="Patients in the sample export.")] = 300,
) -> None:
    """Run the daemon against the embedded sandbox with a generated EHR export."""
    from syncd.demo import run_demo

    configure_logging("WARNING", "console" if sys.stderr.isatty() else "json")
    _run(run_demo(directory, patients=patients, console=out))


# --- db -----------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Create or migrate the state database to the current schema."""
    from syncd.state.db import current_revision, upgrade

    settings = _settings(config)
    engine = _engine(settings)
    try:
        upgrade(engine)
        out.print(f"state database at revision {current_revision(engine)}")
    except SyncdError as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()


# --- sync ---------------------------------------------------------------------------------


def _print_counts(title: str, counts: Any) -> None:
    table = Table(title=title, show_header=False)
    for key, value in counts.items():
        table.add_row(key, str(value))
    out.print(table)


@sync_app.command("patients")
def sync_patients(
    config: ConfigOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would happen; send nothing.")
    ] = False,
) -> None:
    """Push new and changed patients once (with a progress bar on a terminal)."""
    from syncd.service import sync_once

    settings = _settings(config)
    if dry_run:
        counts = _run(sync_once(settings, "patients", dry_run=True))
        _print_dry_run(counts)
        return
    if out.is_terminal:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=out
        ) as bar:
            task = bar.add_task("rows read: 0", total=None)
            result = _run(
                sync_once(
                    settings,
                    "patients",
                    progress=lambda n: bar.update(task, description=f"rows read: {n}"),
                )
            )
    else:
        result = _run(sync_once(settings, "patients"))
    _report(result)


def _print_dry_run(counts: Any) -> None:
    out.print("[bold]dry run[/bold]: nothing was sent or written")
    _print_counts(
        "would",
        {
            "create": counts.created,
            "update": counts.updated,
            "skip (unchanged)": counts.unchanged,
            "quarantine": counts.quarantined,
            "duplicates": counts.duplicates,
        },
    )
    if counts.quarantined_rows:
        table = Table("row", "field", "reason", title="rows that would be quarantined")
        for key, field, reason in counts.quarantined_rows[:200]:
            table.add_row(key, field or "-", reason)
        out.print(table)


def _report(result: Any) -> None:
    if result.outcome == "locked":
        err.print(f"{result.job}: another process is running this job; try again later")
        raise typer.Exit(1)
    _print_counts(f"{result.job} run {result.run_id}: {result.outcome}", result.counts)
    if result.outcome != "ok":
        err.print(f"error: {result.error}", markup=False)
        raise typer.Exit(1)


def _sync_command(target: str, doc: str) -> None:
    def command(config: ConfigOption = None) -> None:
        from syncd.service import sync_once

        _report(_run(sync_once(_settings(config), target)))

    command.__doc__ = doc
    sync_app.command(target)(command)


_sync_command("submissions", "Poll form submissions into the outbox once.")
_sync_command("outbox", "Deliver due outbox events to every sink once.")
_sync_command("messages", "Send pending SMS requests once.")
_sync_command("message-status", "Poll the delivery status of sent SMS once.")
_sync_command("content", "Mirror templates, forms and documents once.")


# --- status, doctor -----------------------------------------------------------------------


@app.command()
def status(config: ConfigOption = None) -> None:
    """Is it working? Last runs, failures, polling lag, backlog, quarantine, SMS in doubt."""
    from syncd.state.db import check_migrated
    from syncd.status import gather_status

    settings = _settings(config)
    engine = _engine(settings)
    try:
        check_migrated(engine)
        report = gather_status(engine)
    except SyncdError as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    runs = Table("job", "last run", "outcome", "counts", "error", title="jobs")
    for r in report.runs:
        counts = " ".join(f"{k}={v}" for k, v in r.counts.items() if v)
        style = "green" if r.outcome == "ok" else "red"
        runs.add_row(
            r.job, _ago(r.started_at), f"[{style}]{r.outcome}[/{style}]", counts, r.error or ""
        )
    out.print(runs)
    lag = (
        "never polled"
        if report.watermark_lag_seconds is None
        else f"{report.watermark_lag_seconds:.0f}s"
    )
    out.print(
        f"patients mirrored: {report.patients_active} active, {report.patients_inactive} "
        f"inactive | quarantined rows: {report.quarantined} | form polling lag: {lag}"
        + (" (a window is in progress)" if report.window_in_progress else "")
    )
    sinks = Table("sink", "pending", "oldest", "dead", "disabled", title="outbox")
    for s in report.sinks:
        sinks.add_row(
            s.sink,
            str(s.pending),
            f"{s.oldest_age_seconds:.0f}s",
            str(s.dead),
            s.disabled_reason or "",
        )
    out.print(sinks)
    states = " ".join(f"{k}={v}" for k, v in sorted(report.messages_by_state.items())) or "none"
    out.print(f"SMS requests: {states}")
    if report.messages_unknown:
        out.print(
            f"[bold red]{report.messages_unknown} SMS in 'unknown': decide each with "
            "`syncd messages resolve KEY --resend|--mark-sent|--cancel`[/bold red]"
        )


@app.command()
def doctor(config: ConfigOption = None) -> None:
    """Check the config, the database, the API key and its scopes, and the source."""
    from syncd.compose import runtime
    from syncd.doctor import Finding, diagnose

    settings = _settings(config)

    async def check() -> list[Finding]:
        async with runtime(settings) as rt:
            return await diagnose(rt)

    findings = _run(check())
    for f in findings:
        mark = "[green]ok[/green]  " if f.ok else "[red]FAIL[/red]"
        out.print(f"{mark} {f.check}: {f.detail}", highlight=False)
    if not all(f.ok for f in findings):
        raise typer.Exit(1)


# --- quarantine ---------------------------------------------------------------------------


@quarantine_app.command("list")
def quarantine_list(
    config: ConfigOption = None,
    source: Annotated[str | None, typer.Option(help="Only this source.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many rows.")] = 200,
) -> None:
    """Each rejected row: source, row (providerId or line), field and reason."""
    from syncd.status import quarantine_rows

    settings = _settings(config)
    engine = _engine(settings)
    try:
        rows = quarantine_rows(engine, source=source, limit=limit)
    finally:
        engine.dispose()
    table = Table(
        "source", "row", "line", "field", "reason", "last seen", "seen", title="quarantine"
    )
    for q in rows:
        table.add_row(
            q.source,
            q.row_key,
            str(q.line_number or ""),
            q.field or "-",
            q.reason,
            _ago(q.last_seen_at),
            str(q.seen_count),
        )
    out.print(table)
    out.print(f"{len(rows)} row(s). Fix them in the EHR: the next run picks them up by itself.")


# --- sandbox ------------------------------------------------------------------------------


@sandbox_app.command("serve")
def sandbox_serve(
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8765,
    seed: Annotated[int, typer.Option(help="Seed for generated data and faults.")] = 0,
    activity_rate: Annotated[
        float, typer.Option(help="Simulated patient actions per second (0 = off).")
    ] = 0.0,
    persist: Annotated[
        Path | None, typer.Option(help="Keep state in this SQLite file across restarts.")
    ] = None,
) -> None:
    """Serve the Voxares API emulator (demo key: see the sandbox docs)."""
    from syncd.sandbox.server import serve

    serve(host, port, seed=seed, faults=None, activity_rate=activity_rate, persist_path=persist)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
