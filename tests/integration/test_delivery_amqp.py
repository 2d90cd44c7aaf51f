"""OutboxDeliveryJob publishing to the real RabbitMQ through AmqpSink: every event arrives
once, as a persistent message whose message-id is the event id, and is recorded delivered."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from sqlalchemy.orm import Session

from syncd.outbox import queries
from syncd.outbox.backoff import BackoffPolicy
from syncd.outbox.delivery import OutboxDeliveryJob
from syncd.outbox.events import emit
from syncd.outbox.routing import Route
from syncd.sinks.amqp import AmqpSink
from syncd.state.db import make_engine, upgrade

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
async def channel(rabbitmq_url: str) -> AsyncIterator[AbstractChannel]:
    """A channel of the test's own connection to the broker."""
    connection = await aio_pika.connect(rabbitmq_url)
    try:
        yield await connection.channel()
    finally:
        await connection.close()


async def test_job_publishes_each_event_once_to_rabbitmq(
    rabbitmq_url: str, channel: AbstractChannel, tmp_path: Path
) -> None:
    """Subscribed events are published once each (message-id = event id), confirmed and
    recorded delivered; an event type the sink does not subscribe to is not sent."""
    exchange = f"syncd-test-{uuid.uuid4().hex[:12]}"
    await channel.declare_exchange(exchange, "topic", durable=True)
    queue = await channel.declare_queue(f"{exchange}.q", auto_delete=True)
    await queue.bind(exchange, routing_key="#")
    engine = make_engine(f"sqlite:///{tmp_path}/state.db")
    upgrade(engine)
    sink = AmqpSink("bus", rabbitmq_url, exchange, "syncd.events", connect_timeout=30.0)
    try:
        with Session(engine) as session, session.begin():
            events = [
                emit(session, event_type=kind, payload={"n": n}, ordering_key=None)
                for n, kind in enumerate(["form_submission.updated"] * 5 + ["message.sent"])
            ]
            ids = [event.event_id for event in events[:5]]
        job = OutboxDeliveryJob(
            engine,
            {"bus": sink},
            {"bus": Route("bus", ("form_submission.*",), start="beginning")},
            batch_size=3,
            max_attempts=3,
            max_age=timedelta(hours=1),
            lease_seconds=120.0,
            backoff=BackoffPolicy(initial_seconds=0.01, max_seconds=0.05),
        )
        counts = await job.run(None)

        messages: list[AbstractIncomingMessage] = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            messages.append(message)
        assert [m.message_id for m in messages] == ids
        assert [json.loads(m.body)["data"]["n"] for m in messages] == [0, 1, 2, 3, 4]
        assert {m.delivery_mode for m in messages} == {aio_pika.DeliveryMode.PERSISTENT}
        assert (counts.fanned_out, counts.delivered) == (5, 5)
        listed = queries.list_events(engine, sink="bus")
        assert {e.deliveries[0].state for e in listed} == {"delivered"}
    finally:
        await sink.aclose()
        engine.dispose()
        await channel.queue_delete(f"{exchange}.q")
        await channel.exchange_delete(exchange)
