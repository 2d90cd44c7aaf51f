"""The `syncd` command line: parse arguments, call one function, render the result.

Exit codes: 0 ok; 1 a command failed (one `error:` line on stderr); 2 a bad argument or
option value (`error: --option: why`); 78 (EX_CONFIG) the configuration is invalid, one
line per problem on stderr naming the key. Every list command takes `--json`.
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
from rich.markup import escape
from rich.table import Table

from syncd.config import Settings, load_settings
from syncd.exceptions import ConfigError, SyncdError
from syncd.logging import configure_logging
from syncd.render import Column, print_records, to_json
from syncd.render import ago as _ago

EX_CONFIG = 78
EX_USAGE = 2
T = TypeVar("T")

app = typer.Typer(
    name="syncd",
    help="voxares-syncd: keeps a clinic's EHR and Voxares in sync.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
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
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the rows as a JSON array (for scripts).")
]


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


def _exit_for(exc: SyncdError) -> NoReturn:
    """Our own error as one line per problem (`config error:` exit 78, else `error:` exit 1)."""
    if isinstance(exc, ConfigError):
        for line in exc.problems or [str(exc)]:
            err.print(f"config error: {line}", markup=False, highlight=False)
        raise typer.Exit(EX_CONFIG) from None
    err.print(f"error: {exc}", markup=False, highlight=False)
    raise typer.Exit(1) from None


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine, turning our own errors into one line and exit 1 (78 for config)."""
    try:
        return asyncio.run(coro)
    except SyncdError as exc:
        _exit_for(exc)


def _engine(settings: Settings) -> Any:
    from syncd.compose import build_engine

    return build_engine(settings)


@contextmanager
def _state(settings: Settings) -> Iterator[Any]:
    """The state database for a local command, checked to be at the code's schema revision
    first (an unmigrated one says `run syncd db upgrade`, not `no such table`)."""
    from syncd.state.db import check_migrated

    engine = _engine(settings)
    try:
        check_migrated(engine)
        yield engine
    finally:
        engine.dispose()


def _bad_option(option: str, reason: str) -> NoReturn:
    """A bad option value: `error: --option: reason`, exit 2 (as click does for usage)."""
    err.print(f"error: {option}: {reason}", markup=False, highlight=False)
    raise typer.Exit(EX_USAGE)


def _one_of(option: str, value: str | None, choices: Collection[str]) -> str | None:
    """`value` when it is one of `choices` (or None); otherwise a bad option."""
    if value is not None and value not in choices:
        _bad_option(option, f"{value!r} is not one of {', '.join(choices)}")
    return value


def _named(option: str, value: str | None, what: str, known: Collection[str]) -> str | None:
    """`value` when it names a known `what` (configured or in the state database)."""
    if value is not None and value not in known:
        names = ", ".join(sorted(known)) or "none"
        _bad_option(option, f"no {what} {value!r} (known: {names})")
    return value


def _positive(option: str, value: int) -> int:
    if value < 1:
        _bad_option(option, f"must be at least 1, got {value}")
    return value


def _print_json(records: Any) -> None:
    sys.stdout.write(to_json(records) + "\n")


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
        # The check and detail are text, not markup: `sink:bus` is no emoji, `[x]` no tag.
        out.print(f"{mark} {escape(f.check)}: {escape(f.detail)}", highlight=False, emoji=False)
    if not all(f.ok for f in findings):
        raise typer.Exit(1)


# --- quarantine ---------------------------------------------------------------------------

QUARANTINE_COLUMNS = (
    Column("source", "source", "id"),
    Column("row", "row", "id"),
    Column("line", "line"),
    Column("field", "field"),
    Column("reason", "reason"),
    Column("last_seen_at", "last seen", "time"),
    Column("seen_count", "seen"),
)


@quarantine_app.command("list")
def quarantine_list(
    config: ConfigOption = None,
    source: Annotated[
        str | None, typer.Option(help="Only this source (a patient or message source name).")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many rows.")] = 200,
    as_json: JsonOption = False,
) -> None:
    """Each rejected row: source, row (providerId or line), field and reason."""
    from syncd.status import quarantine_rows

    settings = _settings(config)
    _positive("--limit", limit)
    with _state(settings) as engine:
        if source is not None and not quarantine_rows(engine, source=source, limit=1):
            _named("--source", source, "source", _source_names(settings))
        rows = quarantine_rows(engine, source=source, limit=limit)
    records = [
        {
            "source": q.source,
            "row": q.row_key,
            "line": q.line_number,
            "field": q.field,
            "reason": q.reason,
            "first_seen_at": q.first_seen_at,
            "last_seen_at": q.last_seen_at,
            "seen_count": q.seen_count,
        }
        for q in rows
    ]
    if as_json:
        _print_json(records)
        return
    print_records(out, "quarantine", QUARANTINE_COLUMNS, records)
    out.print(f"{len(rows)} row(s). Fix them in the EHR: the next run picks them up by itself.")


def _source_names(settings: Settings) -> set[str]:
    """The configured names of sources whose rows can be quarantined."""
    names = {s.name for s in settings.messages.sources}
    if settings.patients.source is not None:
        names.add(settings.patients.source.name)
    return names


# --- outbox -------------------------------------------------------------------------------


def _since(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        _bad_option("--since", f"not an ISO 8601 date or time: {value!r}")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _sink_names(settings: Settings, engine: Any) -> set[str]:
    """Sinks the configuration names, and sinks the state database still holds events for."""
    from syncd.outbox.store import sink_states

    return set(settings.outbox.sinks) | set(sink_states(engine))


OUTBOX_COLUMNS = (
    Column("seq", "seq"),
    Column("event_id", "event id", "id"),
    Column("event_type", "type"),
    Column("created_at", "created", "time"),
    Column("delivery_states", "deliveries"),
)


@outbox_app.command("list")
def outbox_list(
    config: ConfigOption = None,
    state: Annotated[
        str | None, typer.Option(help="Only deliveries in this state (pending, delivered, dead).")
    ] = None,
    sink: Annotated[str | None, typer.Option(help="Only this sink.")] = None,
    since: Annotated[str | None, typer.Option(help="Only events since (ISO 8601).")] = None,
    limit: Annotated[int, typer.Option(help="At most this many events.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """Recent events and their delivery state per sink (ids only, no payloads)."""
    from dataclasses import asdict

    from syncd.outbox.store import STATES, list_events

    settings = _settings(config)
    _one_of("--state", state, STATES)
    _positive("--limit", limit)
    moment = _since(since) if since else None
    with _state(settings) as engine:
        _named("--sink", sink, "sink", _sink_names(settings, engine))
        events = list_events(engine, state=state, sink=sink, since=moment, limit=limit)
    records = [asdict(e) for e in events]
    if as_json:
        _print_json(records)
        return
    for record in records:
        record["delivery_states"] = ", ".join(
            f"{d['sink']}:{d['state']}" + (f"({d['attempts']})" if d["attempts"] else "")
            for d in record["deliveries"]
        )
    print_records(out, "outbox", OUTBOX_COLUMNS, records)


@outbox_app.command("show")
def outbox_show(
    event_id: Annotated[str, typer.Argument(help="The event id (the webhook-id).")],
    config: ConfigOption = None,
) -> None:
    """One event with its payload (it may hold patient data: shown only when asked)."""
    import json

    from syncd.outbox.store import show_event

    settings = _settings(config)
    with _state(settings) as engine:
        event = show_event(engine, event_id)
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
    with _state(settings) as engine:
        _named("--sink", sink, "sink", _sink_names(settings, engine))
        result = retry(engine, event_id=event_id, sink=sink)
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
    moment = _since(since)
    _named("--sink", sink, "configured sink", set(settings.outbox.sinks))
    with _state(settings) as engine:
        queued = replay(
            engine, since=moment, sink=sink, routes=routes_from_settings(settings.outbox)
        )
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
    """Request an SMS (sent by the next `send_messages` run, or `syncd sync messages`).

    Refused at once when SMS sending is disabled (`messages.enabled`), and, where this
    daemon pushes the patients, when the patient is not in the patient mirror.
    """
    import uuid

    from syncd.compose import provider_name
    from syncd.messages.requests import patient_problem, submit_request

    if (content is None) == (template is None):
        err.print("error: give exactly one of --content and --template")
        raise typer.Exit(EX_USAGE)
    settings = _settings(config)
    if not settings.messages.enabled:
        _exit_for(
            ConfigError(
                [
                    "messages.enabled: SMS sending is off, so the request would never be "
                    "sent (set enabled = true under [messages])"
                ]
            )
        )
    provider = provider_name(settings)
    with _state(settings) as engine:
        if settings.patients.enabled:
            problem = patient_problem(engine, provider, provider_id)
            if problem is not None:
                err.print(f"error: {problem}", markup=False, highlight=False)
                raise typer.Exit(1)
        request = submit_request(
            engine,
            key=key or f"cli:{uuid.uuid4()}",
            provider=provider,
            provider_id=provider_id,
            content=content,
            template_id=template,
            origin="cli",
        )
    out.print(f"request {request.key}: {request.state}", highlight=False)


MESSAGES_COLUMNS = (
    Column("key", "key", "id"),
    Column("provider_id", "providerId", "id"),
    Column("state", "state"),
    Column("message_id", "message id", "id"),
    Column("delivery_status", "status"),
    Column("error", "why (failed, unknown)"),
    Column("updated_at", "updated", "time"),
)


@messages_app.command("list")
def messages_list(
    config: ConfigOption = None,
    state: Annotated[
        str | None,
        typer.Option(help="Only requests in this state (pending, sending, sent, failed, ...)."),
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """SMS requests: key, patient id, state, message id, delivery status, why one failed
    (never the text)."""
    from dataclasses import asdict

    from syncd.messages.states import STATES
    from syncd.messages.views import list_requests

    settings = _settings(config)
    _one_of("--state", state, STATES)
    _positive("--limit", limit)
    with _state(settings) as engine:
        records = [asdict(r) for r in list_requests(engine, state=state, limit=limit)]
    if as_json:
        _print_json(records)
        return
    print_records(out, "SMS requests", MESSAGES_COLUMNS, records)


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
        raise typer.Exit(EX_USAGE)
    settings = _settings(config)
    with _state(settings) as engine:
        request = resolve(engine, key, chosen[0], message_id)
    out.print(f"request {request.key}: now {request.state}", highlight=False)


# --- content ------------------------------------------------------------------------------

CONTENT_COLUMNS = (
    Column("kind", "kind"),
    Column("id", "id", "id"),
    Column("name", "name"),
    Column("last_seen_at", "last seen", "time"),
    Column("removed_at", "removed", "time"),
)


@content_app.command("list")
def content_list(
    config: ConfigOption = None,
    kind: Annotated[
        str | None, typer.Option(help="template, form or document (default: all).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """The mirrored templates, forms and documents (run `syncd sync content` to refresh)."""
    from dataclasses import asdict

    from syncd.content.mirror import KINDS, list_content

    settings = _settings(config)
    _one_of("--kind", kind, KINDS)
    with _state(settings) as engine:
        records = [asdict(e) for e in list_content(engine, kind)]
    if as_json:
        _print_json(records)
        return
    print_records(out, "content", CONTENT_COLUMNS, records)


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
