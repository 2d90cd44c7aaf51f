"""`syncd demo --hl7`: ADT messages sent over MLLP to the daemon's own listener, applied
to the embedded sandbox, so a newcomer sees an HL7 message become a Voxares patient."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from syncd.compose import build_hl7_feed, runtime
from syncd.config import load_settings
from syncd.hl7.inbound import counts_by_status
from syncd.hl7.mllp import MllpClient, ack_code
from syncd.jobs import JobRunner
from syncd.state.db import upgrade

CONFIG = """\
# Written by `syncd demo --hl7`: the embedded sandbox, a SQLite state file, an MLLP listener.
[voxares]
base_url = "sandbox"
requests_per_second = 500.0

[database]
url = "sqlite:///{dir}/state.db"

[logging]
level = "WARNING"

[health]
enabled = false

[submissions]
enabled = false

[content]
enabled = false

[hl7]
host = "127.0.0.1"
port = 0                 # any free port (a real installation sets 2575 or its own)
apply_interval_seconds = 1.0
"""

# (what the message is, the message); patient data is invented.
MESSAGES: tuple[tuple[str, str], ...] = (
    (
        "A04 register Ana Horvat",
        "MSH|^~\\&|DEMO-EHR|CLINIC|SYNCD|VOXARES|20261204090000||ADT^A04^ADT_A01|demo-1|P|2.5.1\r"
        "EVN|A04|20261204090000\r"
        "PID|1||DEMO-1^^^CLINIC^MR||Horvat^Ana^^^^^L||19900115|F|||||"
        "^PRN^CP^^^^^^^^^+385912345678\r",
    ),
    (
        "A04 register Ivo Kovač",
        "MSH|^~\\&|DEMO-EHR|CLINIC|SYNCD|VOXARES|20261204090100||ADT^A04^ADT_A01|demo-2|P|2.5.1"
        "||||||UNICODE UTF-8\r"
        "EVN|A04|20261204090100\r"
        "PID|1||DEMO-2^^^CLINIC^MR||Kovač^Ivo^^^^^L||19851102|M|||||^NET^Internet^ivo@example.com\r",
    ),
    (
        "A08 Ana's new email",
        "MSH|^~\\&|DEMO-EHR|CLINIC|SYNCD|VOXARES|20261204091500||ADT^A08^ADT_A01|demo-3|P|2.5.1\r"
        "EVN|A08|20261204091500\r"
        "PID|1||DEMO-1^^^CLINIC^MR||Horvat^Ana^^^^^L||19900115|F|||||"
        "^PRN^CP^^^^^^^^^+385912345678~^NET^Internet^ana@example.com\r",
    ),
    (
        "A08 sent again (same MSH-10)",
        "MSH|^~\\&|DEMO-EHR|CLINIC|SYNCD|VOXARES|20261204091500||ADT^A08^ADT_A01|demo-3|P|2.5.1\r"
        "EVN|A08|20261204091500\r"
        "PID|1||DEMO-1^^^CLINIC^MR||Horvat^Ana^^^^^L||19900115|F|||||"
        "^PRN^CP^^^^^^^^^+385912345678~^NET^Internet^ana@example.com\r",
    ),
    (
        "ORU lab result (not applied)",
        "MSH|^~\\&|DEMO-LAB|CLINIC|SYNCD|VOXARES|20261204092000||ORU^R01|demo-4|P|2.5.1\r"
        "PID|1||DEMO-1^^^CLINIC^MR||Horvat^Ana\r",
    ),
    (
        "no control id (refused)",
        "MSH|^~\\&|DEMO-EHR|CLINIC|SYNCD|VOXARES|20261204092500||ADT^A08||P|2.5.1\r"
        "PID|1||DEMO-9^^^CLINIC^MR||Nobody^No\r",
    ),
)


@dataclass
class Hl7DemoSummary:
    """What the HL7 demo did (for the closing table and its test)."""

    acks: list[tuple[str, str]] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    patients: list[tuple[str, str, str]] = field(default_factory=list)  # id, name, email


async def run_hl7_demo(directory: Path, *, console: Console) -> Hl7DemoSummary:
    """Run the HL7 demo in `directory` (its previous state is replaced)."""
    directory = await asyncio.to_thread(directory.resolve)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in ("state.db", "state.db-wal", "state.db-shm", "config.toml"):
        (directory / name).unlink(missing_ok=True)
    shutil.rmtree(directory / "outbox", ignore_errors=True)
    config_path = directory / "config.toml"
    config_path.write_text(CONFIG.format(dir=directory.as_posix()), encoding="utf-8")
    settings = load_settings(config_path, env={})
    summary = Hl7DemoSummary()
    console.print(
        f"[bold]voxares-syncd HL7 demo[/bold] in {directory}\n"
        "an MLLP listener in this process, Voxares = the embedded sandbox\n"
    )
    async with runtime(settings) as rt:
        await asyncio.to_thread(upgrade, rt.engine)
        feed = build_hl7_feed(rt)
        await feed.start(JobRunner(rt.engine))
        try:
            port = feed.listener.port
            console.print(f"[bold]1. an interface engine sends[/bold] to 127.0.0.1:{port}")
            client = await MllpClient.connect("127.0.0.1", port)
            try:
                for what, text in MESSAGES:
                    code = ack_code(await client.send(text.encode("utf-8")))
                    summary.acks.append((what, code))
                    colour = "green" if code == "AA" else "yellow"
                    console.print(f"  {what:<32} ACK [{colour}]{code}[/{colour}]")
            finally:
                await client.close()
            console.print("[bold]2. the apply job[/bold] pushes each patient's latest data")
            feed.wake()
            for _ in range(600):
                if counts_by_status(rt.engine).get("pending", 0) == 0:
                    break
                await asyncio.sleep(0.05)
        finally:
            await feed.stop()
        summary.statuses = counts_by_status(rt.engine)
        assert rt.sandbox is not None
        practice = rt.sandbox.practices[rt.sandbox.demo_practice_id]
        for (provider, pid), patient in sorted(practice.by_external.items()):
            if provider == rt.provider:
                name = f"{patient.first_name} {patient.last_name}"
                summary.patients.append((pid, name, patient.email or "-"))
    table = Table("providerId", "name", "email", title="Voxares patients (the sandbox)")
    for row in summary.patients:
        table.add_row(*row)
    console.print(table)
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(summary.statuses.items()))
    console.print(f"inbound messages: {statuses}", highlight=False)
    console.print(
        f"\nthe state database: {directory / 'state.db'} (table hl7_inbound; a refused "
        "message is kept there for an operator, an applied one keeps no patient data)",
        soft_wrap=True,
    )
    return summary
