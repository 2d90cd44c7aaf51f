"""The local commands on the state database: quarantine, outbox, messages and content.

None of them calls Voxares. Each checks the schema revision first (`migrated_state`), takes
`--json` where it lists rows, and refuses a bad filter value with exit 2.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from syncd.cli_support import (
    EX_USAGE,
    ConfigOption,
    JsonOption,
    at_least_one,
    err,
    exit_for,
    known_name,
    load_config,
    migrated_state,
    one_of,
    out,
    parse_since,
    print_json,
)
from syncd.config import Settings
from syncd.exceptions import ConfigError, SyncdError
from syncd.render import Column, print_records

quarantine_app = typer.Typer(help="Source rows that could not be pushed.", no_args_is_help=True)
outbox_app = typer.Typer(help="Events for downstream systems.", no_args_is_help=True)
messages_app = typer.Typer(help="SMS requests.", no_args_is_help=True)
content_app = typer.Typer(help="The mirrored content catalogue.", no_args_is_help=True)


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

    settings = load_config(config)
    at_least_one("--limit", limit)
    with migrated_state(settings) as engine:
        if source is not None and not quarantine_rows(engine, source=source, limit=1):
            known_name("--source", source, "source", _source_names(settings))
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
        print_json(records)
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


def _sink_names(settings: Settings, engine: Any) -> set[str]:
    """Sinks the configuration names, and sinks the state database still holds events for."""
    from syncd.outbox.queries import sink_states

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

    from syncd.outbox.queries import list_events
    from syncd.outbox.tables import STATES

    settings = load_config(config)
    one_of("--state", state, STATES)
    at_least_one("--limit", limit)
    moment = parse_since(since) if since else None
    with migrated_state(settings) as engine:
        known_name("--sink", sink, "sink", _sink_names(settings, engine))
        events = list_events(engine, state=state, sink=sink, since=moment, limit=limit)
    records = [asdict(e) for e in events]
    if as_json:
        print_json(records)
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

    from syncd.outbox.queries import show_event

    settings = load_config(config)
    with migrated_state(settings) as engine:
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
    from syncd.outbox.actions import retry

    settings = load_config(config)
    with migrated_state(settings) as engine:
        known_name("--sink", sink, "sink", _sink_names(settings, engine))
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
    from syncd.outbox.actions import replay
    from syncd.outbox.routing import routes_from_settings

    settings = load_config(config)
    moment = parse_since(since)
    known_name("--sink", sink, "configured sink", set(settings.outbox.sinks))
    with migrated_state(settings) as engine:
        queued = replay(
            engine, since=moment, sink=sink, routes=routes_from_settings(settings.outbox)
        )
    for name, n in sorted(queued.items()):
        out.print(f"{name}: {n} event(s) queued for delivery again (same webhook-id)")
    if not queued:
        out.print("no events to replay")


@outbox_app.command("forget-sink")
def outbox_forget_sink(
    name: Annotated[str, typer.Argument(help="A sink no longer in the configuration.")],
    config: ConfigOption = None,
) -> None:
    """Drop what a removed or renamed sink left: its cursor and undelivered deliveries.

    Refused for a configured sink. Its events are then deleted by retention like any other.
    """
    from syncd.outbox.actions import forget_sink

    settings = load_config(config)
    if name in settings.outbox.sinks:
        err.print(
            f"error: sink {name} is configured ([outbox.sinks.{name}]): remove it from the "
            "configuration and restart the daemon first",
            markup=False,
        )
        raise typer.Exit(EX_USAGE)
    with migrated_state(settings) as engine:
        try:
            forgotten = forget_sink(engine, name, configured=settings.outbox.sinks)
        except SyncdError as exc:
            exit_for(exc)
    if not forgotten.anything:
        err.print(
            f"error: the outbox holds nothing for sink {name}: nothing to forget", markup=False
        )
        raise typer.Exit(1)
    out.print(
        f"{name}: forgotten ({'cursor, ' if forgotten.cursor else ''}{forgotten.pending} "
        f"pending and {forgotten.dead} dead deliveries dropped)",
        markup=False,
    )


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
    settings = load_config(config)
    if not settings.messages.enabled:
        exit_for(
            ConfigError(
                [
                    "messages.enabled: SMS sending is off, so the request would never be "
                    "sent (set enabled = true under [messages])"
                ]
            )
        )
    provider = provider_name(settings)
    with migrated_state(settings) as engine:
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

    settings = load_config(config)
    one_of("--state", state, STATES)
    at_least_one("--limit", limit)
    with migrated_state(settings) as engine:
        records = [asdict(r) for r in list_requests(engine, state=state, limit=limit)]
    if as_json:
        print_json(records)
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
    settings = load_config(config)
    with migrated_state(settings) as engine:
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

    settings = load_config(config)
    one_of("--kind", kind, KINDS)
    with migrated_state(settings) as engine:
        records = [asdict(e) for e in list_content(engine, kind)]
    if as_json:
        print_json(records)
        return
    print_records(out, "content", CONTENT_COLUMNS, records)
