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
# soft_wrap: one line per problem (exit 78 contract), never wrapped at 80 columns in a pipe.
err = Console(stderr=True, soft_wrap=True)

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


# --- outbox -------------------------------------------------------------------------------


def _since(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        err.print(f"error: --since: not an ISO 8601 date or time: {value!r}", markup=False)
        raise typer.Exit(2) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@outbox_app.command("list")
def outbox_list(
    config: ConfigOption = None,
    state: Annotated[
        str | None, typer.Option(help="Only deliveries in this state (pending, delivered, dead).")
    ] = None,
    sink: Annotated[str | None, typer.Option(help="Only this sink.")] = None,
    since: Annotated[str | None, typer.Option(help="Only events since (ISO 8601).")] = None,
    limit: Annotated[int, typer.Option(help="At most this many events.")] = 50,
) -> None:
    """Recent events and their delivery state per sink (ids only, no payloads)."""
    from syncd.outbox.store import list_events

    settings = _settings(config)
    engine = _engine(settings)
    try:
        events = list_events(
            engine, state=state, sink=sink, since=_since(since) if since else None, limit=limit
        )
    finally:
        engine.dispose()
    table = Table("seq", "event id", "type", "created", "deliveries", title="outbox")
    for e in events:
        deliveries = ", ".join(
            f"{d.sink}:{d.state}" + (f"({d.attempts})" if d.attempts else "") for d in e.deliveries
        )
        table.add_row(str(e.seq), e.event_id, e.event_type, _ago(e.created_at), deliveries or "-")
    out.print(table)


@outbox_app.command("show")
def outbox_show(
    event_id: Annotated[str, typer.Argument(help="The event id (the webhook-id).")],
    config: ConfigOption = None,
) -> None:
    """One event with its payload (it may hold patient data: shown only when asked)."""
    import json

    from syncd.outbox.store import show_event

    settings = _settings(config)
    engine = _engine(settings)
    try:
        event = show_event(engine, event_id)
    finally:
        engine.dispose()
    if event is None:
        err.print(f"error: no event {event_id!r}", markup=False)
        raise typer.Exit(1)
    out.print(f"{event.event_type} {event.event_id} (seq {event.seq}, {event.created_at})")
    for d in event.deliveries:
        out.print(
            f"  {d.sink}: {d.state}, attempts {d.attempts}"
            + (f", last error: {d.last_error}" if d.last_error else ""),
            markup=False,
        )
    out.print_json(json.dumps(event.payload))


@outbox_app.command("retry")
def outbox_retry(
    config: ConfigOption = None,
    event_id: Annotated[str | None, typer.Option(help="Only this event.")] = None,
    sink: Annotated[str | None, typer.Option(help="Only this sink (also re-enables it).")] = None,
) -> None:
    """Queue dead-lettered deliveries again, and re-enable disabled sinks."""
    from syncd.outbox.store import retry

    settings = _settings(config)
    engine = _engine(settings)
    try:
        result = retry(engine, event_id=event_id, sink=sink)
    finally:
        engine.dispose()
    for name, n in sorted(result.requeued.items()):
        out.print(f"{name}: {n} delivery(ies) queued again")
    for name in result.enabled:
        out.print(f"{name}: re-enabled")
    if not result.requeued and not result.enabled:
        out.print("nothing to retry")


@outbox_app.command("replay")
def outbox_replay(
    since: Annotated[str, typer.Option(help="Deliver again every event since (ISO 8601).")],
    config: ConfigOption = None,
    sink: Annotated[str | None, typer.Option(help="Only to this sink.")] = None,
) -> None:
    """Deliver events again (same event ids) to a receiver that lost them on its side."""
    from syncd.outbox.routing import routes_from_settings
    from syncd.outbox.store import replay

    settings = _settings(config)
    engine = _engine(settings)
    try:
        queued = replay(
            engine, since=_since(since), sink=sink, routes=routes_from_settings(settings.outbox)
        )
    finally:
        engine.dispose()
    for name, n in sorted(queued.items()):
        out.print(f"{name}: {n} event(s) queued for delivery again (same webhook-id)")
    if not queued:
        out.print("no events to replay")


# --- messages -----------------------------------------------------------------------------


@messages_app.command("send")
def messages_send(
    provider_id: Annotated[str, typer.Option(help="The patient's EHR id (providerId).")],
    config: ConfigOption = None,
    content: Annotated[str | None, typer.Option(help="The SMS text.")] = None,
    template: Annotated[str | None, typer.Option(help="A practice template id.")] = None,
    key: Annotated[
        str | None,
        typer.Option(help="A unique request key; the same key is never sent twice."),
    ] = None,
) -> None:
    """Request an SMS (sent by the next `send_messages` run, or `syncd sync messages`)."""
    import uuid

    from syncd.compose import provider_name
    from syncd.messages.requests import submit_request

    if (content is None) == (template is None):
        err.print("error: give exactly one of --content and --template")
        raise typer.Exit(2)
    settings = _settings(config)
    engine = _engine(settings)
    request_key = key or f"cli:{uuid.uuid4()}"
    try:
        request = submit_request(
            engine,
            key=request_key,
            provider=provider_name(settings),
            provider_id=provider_id,
            content=content,
            template_id=template,
            origin="cli",
        )
    except SyncdError as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    out.print(f"request {request.key}: {request.state}")


@messages_app.command("list")
def messages_list(
    config: ConfigOption = None,
    state: Annotated[str | None, typer.Option(help="Only requests in this state.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
) -> None:
    """SMS requests: key, patient id, state, message id, delivery status (no text)."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from syncd.state.models import MessageRequest

    settings = _settings(config)
    engine = _engine(settings)
    query = select(MessageRequest).order_by(MessageRequest.updated_at.desc()).limit(limit)
    if state:
        query = query.where(MessageRequest.state == state)
    try:
        with Session(engine) as session:
            rows = list(session.scalars(query))
            table = Table("key", "providerId", "state", "message id", "status", "updated")
            for r in rows:
                table.add_row(
                    r.key,
                    r.provider_id,
                    r.state,
                    r.message_id or "-",
                    r.delivery_status or "-",
                    _ago(r.updated_at),
                )
    finally:
        engine.dispose()
    out.print(table)


@messages_app.command("resolve")
def messages_resolve(
    key: Annotated[str, typer.Argument(help="The request key.")],
    config: ConfigOption = None,
    resend: Annotated[bool, typer.Option("--resend", help="Send it again.")] = False,
    mark_sent: Annotated[
        bool, typer.Option("--mark-sent", help="It was sent (checked in Voxares).")
    ] = False,
    cancel: Annotated[bool, typer.Option("--cancel", help="Do not send it.")] = False,
    message_id: Annotated[
        str | None, typer.Option(help="With --mark-sent: the Voxares message id.")
    ] = None,
) -> None:
    """Decide an SMS in `unknown` (or resend a `failed` one): a human decides, never the daemon."""
    from syncd.messages.resolve import resolve

    chosen = [
        name
        for name, on in (("resend", resend), ("mark-sent", mark_sent), ("cancel", cancel))
        if on
    ]
    if len(chosen) != 1:
        err.print("error: give exactly one of --resend, --mark-sent, --cancel")
        raise typer.Exit(2)
    settings = _settings(config)
    engine = _engine(settings)
    try:
        request = resolve(engine, key, chosen[0], message_id)
    except SyncdError as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    out.print(f"request {request.key}: now {request.state}")


# --- content ------------------------------------------------------------------------------


@content_app.command("list")
def content_list(
    config: ConfigOption = None,
    kind: Annotated[
        str | None, typer.Option(help="template, form or document (default: all).")
    ] = None,
) -> None:
    """The mirrored templates, forms and documents (run `syncd sync content` to refresh)."""
    from syncd.content.mirror import list_content

    settings = _settings(config)
    engine = _engine(settings)
    try:
        entries = list_content(engine, kind)
    except ValueError as exc:
        err.print(f"error: --kind: {exc}", markup=False)
        raise typer.Exit(2) from None
    finally:
        engine.dispose()
    table = Table("kind", "id", "name", "last seen", "removed", title="content")
    for e in entries:
        table.add_row(
            e.kind,
            e.id,
            e.name or "-",
            _ago(e.last_seen_at),
            _ago(e.removed_at) if e.removed_at else "",
        )
    out.print(table)


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
