"""The `syncd` command line: parse arguments, call one function, render the result.

This module holds the app, the daemon, set-up, sync, status and doctor commands; the local
commands on the state database (quarantine, outbox, messages, content) are in
`syncd.cli_state`, and what they all share (consoles, config loading, exit codes) in
`syncd.cli_support`.

Exit codes: 0 ok; 1 a command failed (one `error:` line on stderr); 2 a bad argument or
option value (`error: --option: why`); 78 (EX_CONFIG) the configuration is invalid, one
line per problem on stderr naming the key. Every list command takes `--json`.
`syncd sync <job>` reports its run on the severity scale `syncd status` uses: 0 ok, 1 partial
(some items failed for now, retried next run), 2 failed (the run failed, stopped early in an
outage, or could not start), 75 (EX_TEMPFAIL) another process is running the job.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from syncd.cli_state import content_app, messages_app, outbox_app, quarantine_app
from syncd.cli_support import ConfigOption, err, out, parse_since
from syncd.cli_support import exit_for as _exit_for
from syncd.cli_support import load_config as _settings
from syncd.cli_support import open_engine as _engine
from syncd.cli_support import run_async as _run
from syncd.exceptions import SyncdError
from syncd.hl7.cli import hl7_app
from syncd.logging import configure_logging
from syncd.render import ago as _ago

if TYPE_CHECKING:
    from syncd.jobs import RunResult

# `syncd sync` when its run could not even start (as syncd.jobs.EXIT_FAILED, kept here so
# the CLI starts without importing the job machinery).
EXIT_SYNC_FAILED = 2

app = typer.Typer(
    name="syncd",
    help="voxares-syncd: keeps a clinic's EHR and Voxares in sync.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
db_app = typer.Typer(help="The state database.", no_args_is_help=True)
sync_app = typer.Typer(
    help="Run one job once, now. Exit 0 ok, 1 partial, 2 failed, 75 job busy elsewhere.",
    no_args_is_help=True,
)
sandbox_app = typer.Typer(help="The Voxares API emulator.", no_args_is_help=True)
for sub, name in [
    (db_app, "db"),
    (sync_app, "sync"),
    (quarantine_app, "quarantine"),
    (outbox_app, "outbox"),
    (messages_app, "messages"),
    (content_app, "content"),
    (hl7_app, "hl7"),
    (sandbox_app, "sandbox"),
]:
    app.add_typer(sub, name=name)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        out.print(f"voxares-syncd {version('voxares-syncd')}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """voxares-syncd: keeps a clinic's EHR and Voxares in sync."""


# --- the daemon ---------------------------------------------------------------------------


@app.command()
def run(config: ConfigOption = None) -> None:
    """Run the daemon: every enabled job on its schedule, until SIGTERM."""
    from syncd.service import serve

    settings = _settings(config, need_api_key=True)
    path = config or (Path(os.environ["SYNCD_CONFIG"]) if os.environ.get("SYNCD_CONFIG") else None)
    _run(serve(settings, config_path=path.absolute() if path is not None else None))


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the config file.")] = Path(
        "config.toml"
    ),
) -> None:
    """Write a documented config file to start from (every key, with its default)."""
    from syncd.examples import write_example_config

    try:
        done = write_example_config(path)
    except FileExistsError:
        err.print(f"error: {path} exists; not overwriting it", markup=False)
        raise typer.Exit(1) from None
    except OSError as exc:
        err.print(f"error: cannot write {path}: {exc.strerror}", markup=False)
        raise typer.Exit(1) from None
    for line in done:
        out.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command()
def demo(
    directory: Annotated[
        Path, typer.Option("--dir", help="Where the demo keeps its files.")
    ] = Path("syncd-demo"),
    patients: Annotated[int, typer.Option(help="Patients in the sample export.")] = 300,
    serve: Annotated[
        bool,
        typer.Option(
            "--serve",
            help="Then keep the daemon and its status page running until Ctrl-C.",
        ),
    ] = False,
    port: Annotated[
        int, typer.Option(help="With --serve: the status page's port on 127.0.0.1 (0: any).")
    ] = 8787,
    hl7: Annotated[
        bool, typer.Option("--hl7", help="Send HL7 ADT messages to the daemon's MLLP listener.")
    ] = False,
) -> None:
    """Run the daemon against the embedded sandbox with a generated EHR export."""
    configure_logging("WARNING", "console" if sys.stderr.isatty() else "json")
    if hl7:
        from syncd.hl7.demo import run_hl7_demo

        _run(run_hl7_demo(directory, console=out))
        return
    from syncd.demo import run_demo

    _run(run_demo(directory, patients=patients, console=out, serve=serve, port=port))


# --- db -----------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Create or migrate the state database to the current schema."""
    from syncd.compose import build_engine
    from syncd.state.db import current_revision, upgrade

    settings = _settings(config)
    try:
        engine = build_engine(settings, create=True)
    except SyncdError as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None
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

    settings = _settings(config, need_api_key=True)
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
                ),
                failure_code=EXIT_SYNC_FAILED,
            )
    else:
        result = _run(sync_once(settings, "patients"), failure_code=EXIT_SYNC_FAILED)
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
            # Patients pushed without their number (policy "drop"): say how many.
            "drop landline number": counts.landlines_dropped,
            "drop invalid number": counts.invalid_phones_dropped,
        },
    )
    if counts.quarantined_rows:
        table = Table("row", "field", "reason", title="rows that would be quarantined")
        for key, field, reason in counts.quarantined_rows[:200]:
            table.add_row(key, field or "-", reason)
        out.print(table)


def _report(result: RunResult) -> None:
    """Print a run's counts; exit with its code (0 ok, 1 partial, 2 failed, 75 locked)."""
    if result.outcome == "locked":
        err.print(f"{result.job}: another process is running this job; try again later")
        raise typer.Exit(result.exit_code)
    _print_counts(f"{result.job} run {result.run_id}: {result.outcome}", result.counts)
    if result.outcome != "ok":
        label = "warning" if result.outcome == "partial" else "error"
        err.print(f"{label}: {result.error or result.outcome}", markup=False)
        raise typer.Exit(result.exit_code)


def _sync_command(target: str, doc: str) -> None:
    def command(config: ConfigOption = None) -> None:
        from syncd.service import sync_once

        _report(
            _run(
                sync_once(_settings(config, need_api_key=True), target),
                failure_code=EXIT_SYNC_FAILED,
            )
        )

    command.__doc__ = doc
    sync_app.command(target)(command)


_sync_command("submissions", "Poll form submissions into the outbox once.")


@sync_app.command("reconcile")
def sync_reconcile(
    config: ConfigOption = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Re-list from this ISO 8601 time (default: the longest configured lookback)."
        ),
    ] = None,
) -> None:
    """Sweep for form-submission versions polling missed (list calls; details only if new)."""
    from syncd.service import reconcile_once

    moment = parse_since(since) if since else None
    settings = _settings(config, need_api_key=True)
    _report(_run(reconcile_once(settings, since=moment), failure_code=EXIT_SYNC_FAILED))


_sync_command("outbox", "Deliver due outbox events to every sink once.")
_sync_command("messages", "Send pending SMS requests once.")
_sync_command("message-status", "Poll the delivery status of sent SMS once.")
_sync_command("content", "Mirror templates, forms and documents once.")


# --- status, doctor -----------------------------------------------------------------------


@app.command()
def status(
    config: ConfigOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object (ids in full) instead of tables.")
    ] = False,
) -> None:
    """Is it working? Last runs, failures, polling lag, backlog, quarantine, SMS in doubt.

    Exits like a Nagios check: 0 ok, 1 warning, 2 critical (see the README).
    """
    import json

    from syncd.compose import job_freshness
    from syncd.monitoring import EXIT_CODES, assess, status_json
    from syncd.state.db import check_migrated
    from syncd.status import gather_status

    settings = _settings(config)
    engine = _engine(settings)
    try:
        check_migrated(engine)
        report = gather_status(engine, configured=settings.outbox.sinks)
    except SyncdError as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(EXIT_CODES["critical"]) from None
    finally:
        engine.dispose()
    verdict = assess(report, job_freshness(settings))
    if as_json:
        typer.echo(json.dumps(status_json(report, verdict), indent=2))
        raise typer.Exit(verdict.exit_code)
    _print_status(report)
    colour = {"ok": "green", "warning": "yellow", "critical": "red"}[verdict.level]
    out.print(f"[bold {colour}]status: {verdict.level.upper()}[/bold {colour}]")
    for problem in verdict.problems:
        out.print(f"  {problem.level}: {problem.check}: {problem.reason}", markup=False)
    raise typer.Exit(verdict.exit_code)


def _print_status(report: Any) -> None:
    runs = Table("job", "last run", "outcome", "counts", "error", title="jobs")
    for r in report.runs:
        counts = " ".join(f"{k}={v}" for k, v in r.counts.items() if v)
        style = {"ok": "green", "running": "green", "partial": "yellow"}.get(r.outcome, "red")
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
        + (
            f" (resuming from {report.window_resume_from:%Y-%m-%d %H:%M:%S}Z)"
            if report.window_in_progress and report.window_resume_from is not None
            else ""
        )
        + f" | last sweep: {_ago(report.last_sweep)}"
    )
    sinks = Table("sink", "pending", "oldest", "dead", "disabled", title="outbox")
    for s in report.sinks:
        if s.removed:  # not work to do: it will never be sent
            sinks.add_row(s.sink, "removed", "-", "-", "")
            continue
        sinks.add_row(
            s.sink,
            str(s.pending),
            f"{s.oldest_age_seconds:.0f}s",
            str(s.dead),
            s.disabled_reason or "",
        )
    out.print(sinks)
    for s in report.sinks:
        if s.removed:
            out.print(
                f"sink {s.sink} is no longer configured ({s.pending} pending, {s.dead} dead "
                f"deliveries kept): `syncd outbox forget-sink {s.sink}` drops them",
                markup=False,
            )
    states = " ".join(f"{k}={v}" for k, v in sorted(report.messages_by_state.items())) or "none"
    out.print(f"SMS requests: {states}")
    if report.messages_unknown:
        out.print(
            f"[bold red]{report.messages_unknown} SMS in 'unknown': decide each with "
            "`syncd messages resolve KEY --resend|--mark-sent|--cancel`[/bold red]"
        )
    if report.hl7_by_status:
        hl7 = " ".join(f"{k}={v}" for k, v in sorted(report.hl7_by_status.items()))
        out.print(f"HL7 messages: {hl7}")
        if report.hl7_by_status.get("rejected"):
            out.print(
                "  refused messages are kept for reading: `syncd hl7 list --status rejected`, "
                "`syncd hl7 show ID`",
                markup=False,
            )


@app.command()
def doctor(config: ConfigOption = None) -> None:
    """Check the config, the database, the API key and its scopes, and the source."""
    from syncd.compose import runtime
    from syncd.doctor import Finding, diagnose

    settings = _settings(config, need_api_key=True)

    async def check() -> list[Finding]:
        async with runtime(settings, create_database=False) as rt:
            return await diagnose(rt)

    findings = _run(check())
    for f in findings:
        mark = "[green]ok[/green]  " if f.ok else "[red]FAIL[/red]"
        if f.ok and f.warning:
            mark = "[yellow]WARN[/yellow]"
        # The check and detail are text, not markup: `sink:bus` is no emoji, `[x]` no tag.
        out.print(
            f"{mark} {escape(f.check)}: {escape(f.detail)}",
            highlight=False,
            emoji=False,
            soft_wrap=True,  # one line per finding, for grep and for monitoring
        )
    if not all(f.ok for f in findings):
        raise typer.Exit(1)


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
    """Console-script entry point: our own errors end as one line, never a traceback."""
    try:
        app()
    except SyncdError as exc:
        try:
            _exit_for(exc)
        except typer.Exit as stop:
            sys.exit(stop.exit_code)


if __name__ == "__main__":
    main()
