"""B7 and B8: delivering N outbox events to a webhook receiver and to RabbitMQ."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine

from bench import env
from bench.core import Figures, expect, migrate, run_job
from syncd.compose import build_outbox_delivery
from syncd.outbox.events import emit
from syncd.state.db import make_engine, session_factory

LATENCY_MS = 20.0
CONCURRENCY = 16  # the webhook sink's concurrency
SECRET = "whsec_" + "YmVuY2gtd2ViaG9vay1zZWNyZXQtYmVuY2gtd2ViaG9vaw=="


def seed_events(engine: Engine, count: int) -> None:
    """Write `count` form-submission events into the outbox (setup, like the poller would)."""
    sessions = session_factory(engine)
    for offset in range(0, count, 1000):
        with sessions.begin() as session:
            for n in range(offset, min(count, offset + 1000)):
                emit(
                    session,
                    event_type="form_submission.updated",
                    payload={
                        "submissionId": str(uuid.UUID(int=n)),
                        "status": "Completed",
                        "patient": {"providerId": f"P{n:07d}"},
                        "data": {"q1": "yes", "q2": "no", "note": "x" * 200},
                    },
                    ordering_key=f"P{n:07d}",
                )


@contextlib.contextmanager
def receiver(latency_ms: float) -> Iterator[tuple[str, int]]:
    """The webhook receiver subprocess: its URL and pid."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.receiver", "--latency-ms", str(latency_ms)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        port = int(line.split()[1])
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        process.wait(10)


def _deliver(folder: Path, db_url: str, events: int, sink: dict[str, Any]) -> tuple[Figures, float]:
    engine = make_engine(db_url)
    migrate(engine)
    seed_events(engine, events)
    engine.dispose()
    config = env.base_config(base_url="http://127.0.0.1:9/api/v1/integration", db_url=db_url)
    config["outbox"] = {"batch_size": 100, "sinks": {"bench": {"events": ["*"], **sink}}}
    settings = env.load_bench_settings(folder, config, env.API_KEY)
    cpu = env.own_cpu_seconds()
    result, elapsed = asyncio.run(run_job(settings, build_outbox_delivery, "deliver_outbox"))
    cpu = env.own_cpu_seconds() - cpu
    delivered = result.counts["delivered"]
    expect(delivered == events, result.counts)
    return {
        "events_per_s": delivered / elapsed,
        "delivered": delivered,
        "seconds": elapsed,
        "daemon_cpu_ms_per_event": 1000 * cpu / delivered,
    }, elapsed


def run_webhook(events: int, folder: Path) -> Figures:
    """B7: deliver to the local receiver (20 ms per answer), 16 at a time."""
    ideal = CONCURRENCY / (LATENCY_MS / 1000)
    with receiver(LATENCY_MS) as (url, pid), env.database("sqlite", folder) as db_url:
        receiver_cpu = env.process_cpu_seconds(pid)
        sink = {"type": "webhook", "url": url + "/hook", "secret": SECRET}
        figures, _ = _deliver(folder, db_url, events, sink)
        receiver_cpu = env.process_cpu_seconds(pid) - receiver_cpu
        received = int(httpx.get(url + "/count").text)
    expect(received >= events, received)
    figures["ideal_per_s"] = ideal
    figures["ratio"] = figures["events_per_s"] / ideal
    figures["receiver_cpu_ms_per_event"] = 1000 * receiver_cpu / events
    return figures


def run_amqp(events: int, folder: Path) -> Figures:
    """B8: publish to RabbitMQ with publisher confirms, to a fresh exchange and bound queue."""
    if not env.port_open("127.0.0.1", 5672):
        raise RuntimeError("RabbitMQ is not running on 127.0.0.1:5672")
    exchange = f"syncd-bench-{uuid.uuid4().hex[:8]}"
    asyncio.run(_broker("declare", exchange))
    try:
        with env.database("sqlite", folder) as db_url:
            sink = {
                "type": "amqp",
                "url": env.RABBITMQ_URL,
                "exchange": exchange,
                "routing_key": "bench.events",
            }
            figures, _ = _deliver(folder, db_url, events, sink)
        queued = asyncio.run(_broker("count", exchange))
    finally:
        asyncio.run(_broker("delete", exchange))
    expect(queued == events, f"{queued} messages queued")
    figures["queued"] = queued
    return figures


async def _broker(action: str, exchange: str) -> int:
    """Declare the run's topic exchange and a queue bound to it, count the queue, or delete
    both. A published message needs a bound queue: the sink publishes `mandatory`."""
    import aio_pika

    connection = await aio_pika.connect(env.RABBITMQ_URL)
    async with connection:
        channel = await connection.channel()
        if action == "delete":
            await channel.queue_delete(exchange)
            await channel.exchange_delete(exchange)
            return 0
        if action == "count":
            queue = await channel.declare_queue(exchange, passive=True)
            return int(queue.declaration_result.message_count or 0)
        declared = await channel.declare_exchange(exchange, "topic", durable=True)
        queue = await channel.declare_queue(exchange, durable=False)
        await queue.bind(declared, "bench.events")
        return 0
