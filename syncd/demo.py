"""`syncd demo`: the whole daemon against the embedded sandbox, in about half a minute.

It writes a sample EHR export and a config file into a demo folder, then runs the same jobs
the daemon schedules (through the same `JobRunner`, with locks and run records), in cycles,
so that every stage is visible: push, quarantine, form submissions into the outbox, delivery
to an NDJSON file, an SMS, an overnight change in the EHR, and a re-sync that pushes only it.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from syncd.compose import build_jobs, runtime
from syncd.config import load_settings
from syncd.demo_data import change_some_rows, write_sample_export
from syncd.jobs import JobRunner, RunResult
from syncd.state.db import upgrade
from syncd.state.models import ContentItem, OutboxEvent, QuarantinedRow

DEMO_HOST = "127.0.0.1"
DEFAULT_PORT = 8787

CONFIG = """\
# Written by `syncd demo`: the embedded sandbox, a SQLite state file, a CSV export.
[voxares]
base_url = "sandbox"
# The embedded sandbox answers in-process: no reason to pace the demo like a real API.
requests_per_second = 500.0
max_concurrency = 16

[database]
url = "sqlite:///{dir}/state.db"

[logging]
level = "WARNING"

[health]
# Serves the status page at http://127.0.0.1:8787/ (`syncd demo --serve`, `syncd run`).
enabled = true
host = "127.0.0.1"
port = {port}

[status_page]
# Often, so that a demo's charts fill within minutes.
sample_interval_seconds = 10

[patients]
enabled = true
default_region = "HR"
date_formats = ["%Y-%m-%d", "%d.%m.%Y"]
missing_rows = "mark_inactive"

[patients.source]
type = "csv"
name = "ehr-export"
path = "{dir}/ehr-export.csv"

[patients.source.columns]
providerId = "PatientID"
firstName = "FirstName"
lastName = "LastName"
mobileNumber = "MobilePhone"
email = "Email"
dateOfBirth = "BirthDate"

[submissions]
overlap_seconds = 5
settle_seconds = 0

[outbox.sinks.files]
type = "file"
directory = "{dir}/outbox"

[messages]
enabled = true
"""


@dataclass
class DemoSummary:
    """What the demo did, for the closing table (and for the test that runs it)."""

    broken: int = 0  # rows of the export broken on purpose
    cycles: list[tuple[str, str, RunResult]] = field(default_factory=list)
    quarantined: list[tuple[str, str | None, str]] = field(default_factory=list)
    events_by_type: dict[str, int] = field(default_factory=dict)
    outbox_files: list[str] = field(default_factory=list)


async def run_demo(
    directory: Path,
    *,
    patients: int,
    console: Console,
    serve: bool = False,
    port: int = DEFAULT_PORT,
) -> DemoSummary:
    """Run the demo in `directory` (its previous state is replaced); with `serve`, then keep
    the daemon and its status page on 127.0.0.1:`port` running until SIGINT/SIGTERM."""
    directory = await asyncio.to_thread(directory.resolve)
    _fresh(directory)
    export = write_sample_export(directory / "ehr-export.csv", patients)
    config_path = directory / "config.toml"
    config_path.write_text(
        CONFIG.format(dir=directory.as_posix(), port=port or DEFAULT_PORT), encoding="utf-8"
    )
    settings = load_settings(config_path, env={})
    console.print(
        f"[bold]voxares-syncd demo[/bold] in {directory}\n"
        f"sample EHR export: {export.rows} patients, {export.broken} broken on purpose\n"
        "Voxares: the embedded sandbox (no account needed)\n"
    )
    summary = DemoSummary(broken=export.broken)
    async with runtime(settings) as rt:
        await asyncio.to_thread(upgrade, rt.engine)
        runner = JobRunner(rt.engine)
        jobs = build_jobs(rt)

        async def cycle(label: str, *names: str) -> None:
            for name in names:
                result = await runner.run_once(jobs[name])
                summary.cycles.append((label, name, result))
                counts = " ".join(f"{k}={v}" for k, v in result.counts.items() if v)
                colour = "green" if result.outcome == "ok" else "red"
                console.print(
                    f"  {label:<22} {name:<17} [{colour}]{result.outcome}[/{colour}] {counts}",
                    highlight=False,
                    soft_wrap=True,
                )
                if result.error:
                    console.print(f"    error: {result.error}", markup=False)

        console.print("[bold]1. first sync[/bold]: content catalogue, then every patient")
        await cycle("first sync", "mirror_content", "push_patients")

        console.print("[bold]2. patients fill in forms[/bold] (the sandbox simulates them)")
        assert rt.sandbox is not None
        rt.sandbox.activity_rate = 60.0
        rt.sandbox.activity_enabled = True
        await asyncio.sleep(2.5)
        rt.sandbox.activity_enabled = False
        await cycle("poll forms", "poll_submissions", "deliver_outbox")

        console.print("[bold]3. a reminder SMS[/bold], sent at most once")
        _request_sms(rt)
        await cycle("send SMS", "send_messages")

        console.print("[bold]4. overnight the EHR changes[/bold]; only the changes are pushed")
        changed = change_some_rows(directory / "ehr-export.csv")
        console.print(
            f"  ({changed} rows edited in the export, the impossible birth date corrected "
            "among them)"
        )
        await cycle("re-sync", "push_patients")
        await asyncio.sleep(3.2)  # let the sandbox deliver the SMS
        await cycle("status + forms", "message_status", "poll_submissions", "deliver_outbox")

        await asyncio.to_thread(_collect, rt.engine, summary)
        summary.outbox_files = sorted(p.name for p in (directory / "outbox").glob("*.ndjson"))
        _print_summary(console, summary, directory, served=serve)
        if serve:
            await _serve(rt, config_path, port, console)
    return summary


async def _serve(rt: Any, config_path: Path, port: int, console: Console) -> None:
    """The demo's daemon: every job on its schedule, patients filling in forms, and the
    status page, until Ctrl-C."""
    from dataclasses import replace

    from syncd.compose import build_health, build_sampler, build_schedules
    from syncd.daemon import Daemon
    from syncd.health import bind_health_socket

    listener = bind_health_socket(DEMO_HOST, port)
    bound = int(listener.getsockname()[1])
    health = build_health(rt, datetime.now(UTC), config_path=config_path, syncd=_command_path())
    assert health is not None, "the demo's config enables the health server"
    rt.sandbox.activity_rate = 6.0
    rt.sandbox.activity_enabled = True
    daemon = Daemon(
        JobRunner(rt.engine),
        build_schedules(rt, build_jobs(rt)),
        health=replace(health, port=bound, listener=listener),
        background=build_sampler(rt),
    )
    console.print(
        f"[bold]Status page[/bold]: http://{DEMO_HOST}:{bound}/\n"
        "The daemon keeps running against the sandbox (patients keep filling in forms). "
        "Press Ctrl-C to stop.",
        soft_wrap=True,
    )
    await daemon.run()
    console.print("stopped")


def _fresh(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in ("state.db", "state.db-wal", "state.db-shm", "config.toml", "ehr-export.csv"):
        (directory / name).unlink(missing_ok=True)
    shutil.rmtree(directory / "outbox", ignore_errors=True)


def _request_sms(rt: Any) -> None:
    """Ask for one templated SMS to the first mirrored patient (keyed: never sent twice)."""
    from syncd.messages.requests import submit_request

    with Session(rt.engine) as session:
        template = session.scalars(
            select(ContentItem.item_id).where(ContentItem.kind == "template").limit(1)
        ).first()
    if template is None:
        return
    submit_request(
        rt.engine,
        key="demo-reminder-EHR-000001",
        provider=rt.provider,
        provider_id="EHR-000001",
        template_id=template,
        origin="demo",
    )


def _collect(engine: Any, summary: DemoSummary) -> None:
    with Session(engine) as session:
        summary.quarantined = [
            (q.row_key, q.field, q.reason)
            for q in session.scalars(select(QuarantinedRow).order_by(QuarantinedRow.line_number))
        ]
        summary.events_by_type = {
            str(t): int(n)
            for t, n in session.execute(
                select(OutboxEvent.event_type, func.count()).group_by(OutboxEvent.event_type)
            )
        }


def _print_summary(
    console: Console, summary: DemoSummary, directory: Path, *, served: bool = False
) -> None:
    push_runs = [r for _, name, r in summary.cycles if name == "push_patients"]
    table = Table("", "created", "updated", "unchanged", "quarantined", title="patients")
    for label, r in zip(("first sync", "re-sync"), push_runs, strict=False):
        c = r.counts
        table.add_row(
            label,
            str(c.get("created", 0)),
            str(c.get("updated", 0)),
            str(c.get("unchanged", 0)),
            str(c.get("quarantined", 0)),
        )
    console.print()
    console.print(table)
    # The export had `broken` rows broken on purpose; the night's edit fixed some of them.
    still = len(summary.quarantined)
    fixed = summary.broken - still
    line = f"{still} row(s) still quarantined (fix them in the EHR)"
    if fixed > 0:
        line += f"; {fixed} of the {summary.broken} broken on purpose fixed overnight"
    console.print(line, highlight=False, soft_wrap=True)
    quarantine = Table("row", "field", "reason", title="quarantined rows")
    for key, fld, reason in summary.quarantined:
        quarantine.add_row(key, fld or "-", reason)
    console.print(quarantine)
    events = Table("event type", "events", title="outbox (delivered to the NDJSON file sink)")
    for event_type, n in sorted(summary.events_by_type.items()):
        events.add_row(event_type, str(n))
    console.print(events)
    config = directory / "config.toml"
    syncd = _command_path()
    console.print(
        "\n[bold]What to try next[/bold]\n"
        f"  {syncd} status --config {config}\n"
        f"  {syncd} quarantine list --config {config}\n"
        f"  {syncd} outbox list --config {config}\n"
        f"  {syncd} sync patients --dry-run --config {config}\n"
        f"  the delivered events: {directory / 'outbox'}\n"
        f"  for real use: {syncd} init config.toml, then {syncd} doctor --config config.toml",
        soft_wrap=True,
    )
    if not served:
        # The last line: the quickstart exits by itself; this is how to keep it running.
        console.print(
            f"  the status page in a browser: {syncd} demo --serve --dir {directory} "
            "(runs the demo, then keeps the daemon and http://127.0.0.1:8787/ up until Ctrl-C)\n",
            soft_wrap=True,
        )


def _command_path() -> str:
    """How to call `syncd` as the demo was called: `syncd` when it is on PATH, else the
    script beside this interpreter (`make demo` runs `.venv/bin/syncd`, not on PATH)."""
    beside = Path(sys.executable).parent / "syncd"
    on_path = shutil.which("syncd")
    if on_path is not None and Path(on_path).resolve() == beside.resolve():
        return "syncd"
    return str(beside) if beside.exists() else "syncd"
