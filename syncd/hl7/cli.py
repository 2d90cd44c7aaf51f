"""`syncd hl7 list|show`: the inbound HL7 messages, for an operator (no Voxares call)."""

from __future__ import annotations

import sys
from dataclasses import asdict
from typing import Annotated

import typer

from syncd.cli_support import (
    ConfigOption,
    JsonOption,
    at_least_one,
    err,
    load_config,
    migrated_state,
    one_of,
    out,
    print_json,
)
from syncd.hl7.inbound import STATUSES, list_messages, show_message
from syncd.hl7.message import MessageRejected, decode
from syncd.render import Column, print_records

hl7_app = typer.Typer(help="Inbound HL7 v2 messages.", no_args_is_help=True)

COLUMNS = (
    Column("id", "id", "id"),
    Column("status", "status"),
    Column("sender", "sender", "id"),
    Column("control_id", "control id", "id"),
    Column("message_type", "type"),
    Column("received_at", "received", "time"),
    Column("reason", "reason"),
)


@hl7_app.command("list")
def hl7_list(
    config: ConfigOption = None,
    status: Annotated[
        str | None, typer.Option(help="Only this status (pending, applied, ignored, ...).")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 200,
    as_json: JsonOption = False,
) -> None:
    """Inbound messages: id, status, sender, control id, type, reason (never the content)."""
    settings = load_config(config)
    at_least_one("--limit", limit)
    if status is not None:
        one_of("--status", status, STATUSES)
    with migrated_state(settings) as engine:
        messages = list_messages(engine, status=status, limit=limit)
    records = [asdict(message) for message in messages]
    if as_json:
        print_json(records)
        return
    print_records(out, "inbound HL7 messages", COLUMNS, records)


@hl7_app.command("show")
def hl7_show(
    message_id: Annotated[int, typer.Argument(help="The inbound id (from `syncd hl7 list`).")],
    config: ConfigOption = None,
) -> None:
    """One message as received (patient data: shown only when asked; segments one a line).
    Kept while pending, rejected or quarantined; an applied message keeps none."""
    settings = load_config(config)
    with migrated_state(settings) as engine:
        message = show_message(engine, message_id)
    if message is None:
        err.print(f"error: no inbound message {message_id}", markup=False)
        raise typer.Exit(1)
    reason = f" ({message.reason})" if message.reason else ""
    out.print(f"{message_id}: {message.status}" + reason)
    if message.raw is None:
        out.print("(the message content is no longer kept)")
        return
    raw = message.raw
    try:
        text = decode(raw, default_charset=settings.hl7.default_charset).text
    except MessageRejected:
        text = raw.decode("latin-1")  # as bytes go: it was refused for its encoding
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
