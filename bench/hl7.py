"""H1: HL7 v2 ADT messages from ACK to mirror, over MLLP, against the sandbox at L = 20 ms.

`SENDERS` MLLP connections (an interface engine's parallel channels) each send their
share of N ADT^A04 messages, one at a time, waiting for each ACK (after the commit to the
inbound table). The clock runs from the first send to the moment every message is applied
(mirror row written, message marked applied). Everything goes through `syncd.compose`
(`build_hl7_feed`) and `JobRunner`, on a SQLite state file with `synchronous=FULL`.

The ceiling no client can beat against this API is C/L = 16 / 20 ms = 800 pushes/s; the
target is 500 messages/s. The same-sitting baseline is B1's path: the CSV push of N new
patients against the same sandbox (`ratio_to_csv_push`: what the MLLP receipt, the inbound
table and the per-message apply cost on top). Counts are checked exactly: N ACKs, N
applied, N mirror rows, N API calls.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

from sqlalchemy import func, select

from bench import data, env
from bench.core import Figures, expect
from bench.patients import api_calls, calls_between, push, push_settings
from syncd.compose import build_hl7_feed, runtime
from syncd.hl7.inbound import counts_by_status
from syncd.hl7.mllp import MllpClient, ack_code
from syncd.jobs import JobRunner
from syncd.state.db import upgrade
from syncd.state.models import PatientMirror

LATENCY_MS = 20.0
CONCURRENCY = 16
SENDERS = 4


def message(n: int) -> bytes:
    """ADT^A04 for synthetic patient n (unique control id and patient id)."""
    return (
        "MSH|^~\\&|BENCH|CLINIC|SYNCD|VOXARES|20261204120000||ADT^A04^ADT_A01|"
        f"bench-{n}|P|2.5.1\r"
        "EVN|A04|20261204120000\r"
        f"PID|1||B{n:07d}^^^CLINIC^MR||Surname{n % 997}^Given{n % 89}^^^^^L||19800101|F|||||"
        f"^PRN^CP^^^^^^^^^+38591{n % 10_000_000:07d}\r"
    ).encode("ascii")


async def _send(port: int, numbers: range) -> int:
    client = await MllpClient.connect("127.0.0.1", port)
    acked = 0
    try:
        for n in numbers:
            code = ack_code(await client.send(message(n)))
            expect(code == "AA", f"message {n} answered {code}")
            acked += 1
    finally:
        await client.close()
    return acked


async def _measure(messages: int, folder: Path, sandbox_url: str, port: int) -> Figures:
    db_url = f"sqlite:///{folder}/hl7-state.db"
    config = env.base_config(base_url=sandbox_url, db_url=db_url, concurrency=CONCURRENCY)
    config["hl7"] = {"port": port, "apply_interval_seconds": 1.0, "batch_size": 500}
    settings = env.load_bench_settings(folder, config, env.API_KEY)
    async with runtime(settings) as rt:
        await asyncio.to_thread(upgrade, rt.engine)
        feed = build_hl7_feed(rt)
        await feed.start(JobRunner(rt.engine))
        try:
            started = time.perf_counter()
            share = -(-messages // SENDERS)
            sent = await asyncio.gather(
                *(
                    _send(port, range(i * share, min(messages, (i + 1) * share)))
                    for i in range(SENDERS)
                )
            )
            acked_at = time.perf_counter()
            # The observer polls the database: the feed has no event for "all applied".
            while counts_by_status(rt.engine).get("applied", 0) < messages:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            done = time.perf_counter()
        finally:
            await feed.stop()
        with rt.engine.connect() as conn:
            mirrored = conn.execute(select(func.count()).select_from(PatientMirror)).scalar_one()
        statuses = counts_by_status(rt.engine)
    elapsed = done - started
    return {
        "messages": messages,
        "acked": sum(sent),
        "applied": statuses.get("applied", 0),
        "mirrored": int(mirrored),
        "seconds": elapsed,
        "msgs_per_s": messages / elapsed,
        "ack_per_s": messages / (acked_at - started),
        "ratio_to_ceiling": (messages / elapsed) / (CONCURRENCY / (LATENCY_MS / 1000)),
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(messages: int, folder: Path) -> Figures:
    """H1's figures for one run of `messages` ADT messages (counts checked exactly)."""
    with env.served_sandbox(LATENCY_MS) as sandbox:
        before = api_calls(sandbox)
        figures = asyncio.run(_measure(messages, folder, sandbox.base_url, _free_port()))
        figures["calls"] = calls_between(before, api_calls(sandbox))
        # Same sitting, same sandbox: the CSV push of as many new patients (B1's path).
        export = data.write_patients(folder / "baseline.csv", messages)
        with env.database("sqlite", folder) as db_url:
            counts, elapsed = push(push_settings(folder, sandbox, db_url, export, 1000))
        expect(counts["created"] == messages, counts)
        figures["csv_push_per_s"] = messages / elapsed
        figures["ratio_to_csv_push"] = figures["msgs_per_s"] / figures["csv_push_per_s"]
    expect(figures["acked"] == messages, figures)
    expect(figures["applied"] == messages, figures)
    expect(figures["mirrored"] == messages, figures)
    expect(figures["calls"] == messages, figures)
    return figures
