"""AmqpSink against the real RabbitMQ: confirms, nacks, closed channels, dropped connections.

Each test declares its own uniquely named exchange and queue and deletes them after. A
small TCP proxy between the sink and the broker cuts the connection mid-batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue
from yarl import URL

from syncd.sinks.amqp import AmqpSink
from syncd.sinks.base import DeadLetter, Delivered, DeliveryOutcome, EventEnvelope, Retry

pytestmark = pytest.mark.rabbitmq

ROUTING_KEY = "form_submission.updated"


def _event(number: int, **payload: Any) -> EventEnvelope:
    return EventEnvelope(
        event_id=f"evt-{number}-{uuid.uuid4().hex[:6]}",
        event_type="form_submission.updated",
        created_at=datetime(2025, 5, 20, 9, 0, number, tzinfo=UTC),
        payload={"n": number, **payload},
    )


@dataclass
class Broker:
    """The test's own view of the broker, and the names it must clean up."""

    url: str
    connection: AbstractConnection
    channel: AbstractChannel
    exchange: str
    queues: list[str] = field(default_factory=list)
    sinks: list[AmqpSink] = field(default_factory=list)

    async def declare_exchange(self, kind: str = "topic", *, durable: bool = True) -> None:
        await self.channel.declare_exchange(self.exchange, kind, durable=durable)

    async def bind_queue(self, arguments: dict[str, Any] | None = None) -> AbstractQueue:
        name = f"{self.exchange}.q{len(self.queues)}"
        self.queues.append(name)
        queue = await self.channel.declare_queue(name, arguments=arguments)
        await queue.bind(self.exchange, routing_key="form_submission.#")
        return queue

    def sink(self, url: str | None = None, exchange: str | None = None) -> AmqpSink:
        sink = AmqpSink(
            "bus",
            url or self.url,
            self.exchange if exchange is None else exchange,
            ROUTING_KEY,
            # Nothing here waits for them to fire: a cut or refused connection fails at once.
            connect_timeout=30.0,
            publish_timeout=30.0,
        )
        self.sinks.append(sink)
        return sink


@pytest.fixture
async def broker(rabbitmq_url: str) -> AsyncIterator[Broker]:
    """A connection for the test, a unique exchange name, and cleanup of all it declared."""
    connection = await aio_pika.connect(rabbitmq_url)
    channel = await connection.channel()
    state = Broker(rabbitmq_url, connection, channel, f"syncd-test-{uuid.uuid4().hex[:12]}")
    try:
        yield state
    finally:
        for sink in state.sinks:
            await sink.aclose()
        cleanup = await connection.channel()  # the test's channel may have been closed
        for queue in state.queues:
            await cleanup.queue_delete(queue)
        await cleanup.exchange_delete(state.exchange)
        await connection.close()


async def _drain(queue: AbstractQueue) -> list[aio_pika.abc.AbstractIncomingMessage]:
    messages = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        messages.append(message)
    return messages


async def test_batch_is_published_persistent_confirmed_and_in_order(broker: Broker) -> None:
    """Confirmed events are Delivered and arrive as persistent JSON with id and type set."""
    await broker.declare_exchange()
    queue = await broker.bind_queue()
    events = [_event(n) for n in range(5)]

    assert await broker.sink().deliver(events) == [Delivered()] * 5

    messages = await _drain(queue)
    assert [m.message_id for m in messages] == [e.event_id for e in events]
    for message, event in zip(messages, events, strict=True):
        assert json.loads(message.body) == event.to_json()
        assert message.content_type == "application/json"
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.headers["event-type"] == event.event_type
        assert message.type == event.event_type
        assert message.routing_key == ROUTING_KEY


async def test_missing_exchange_is_declared_durable(broker: Broker) -> None:
    """An exchange that does not exist is declared durable (unroutable until a queue binds)."""
    sink = broker.sink()
    event = _event(1)

    outcomes = await sink.deliver([event])
    assert outcomes == [Retry("unroutable: the broker returned the message (no bound queue)")]

    # Re-declaring it durable succeeds only if the sink declared it durable (else 406).
    await broker.declare_exchange("topic", durable=True)
    queue = await broker.bind_queue()
    assert await sink.deliver([event]) == [Delivered()]
    assert [m.message_id for m in await _drain(queue)] == [event.event_id]


async def test_existing_exchange_is_used_whatever_its_kind(broker: Broker) -> None:
    """A configured exchange that exists (here non-durable fanout) is used, not redeclared."""
    await broker.declare_exchange("fanout", durable=False)
    queue = await broker.bind_queue()
    assert await broker.sink().deliver([_event(1), _event(2)]) == [Delivered()] * 2
    assert len(await _drain(queue)) == 2


async def test_default_exchange_routes_to_the_queue_named_by_the_key(broker: Broker) -> None:
    """With exchange "" the sink publishes through the default exchange (no declare)."""
    name = f"{broker.exchange}.direct"
    broker.queues.append(name)
    queue = await broker.channel.declare_queue(name)
    await broker.declare_exchange()  # only so cleanup has something to delete
    sink = AmqpSink("bus", broker.url, "", name)
    broker.sinks.append(sink)
    assert await sink.deliver([_event(1)]) == [Delivered()]
    assert len(await _drain(queue)) == 1


async def test_broker_nack_is_a_retry(broker: Broker) -> None:
    """Messages the broker nacks (queue full, reject-publish) are Retry; the accepted one is not."""
    await broker.declare_exchange()
    await broker.bind_queue({"x-max-length": 1, "x-overflow": "reject-publish"})
    outcomes = await broker.sink().deliver([_event(1), _event(2), _event(3)])
    assert outcomes == [Delivered(), Retry("broker nack"), Retry("broker nack")]


async def test_each_outcome_is_reported_as_it_is_known(broker: Broker) -> None:
    """`answered` gets every event's outcome (confirm, nack, dead letter) once, by position,
    equal to what deliver returns."""
    await broker.declare_exchange()
    await broker.bind_queue({"x-max-length": 1, "x-overflow": "reject-publish"})
    reported: list[tuple[int, DeliveryOutcome]] = []
    events = [_event(1), _event(2, bad=float("nan")), _event(3)]
    outcomes = await broker.sink().deliver(events, answered=lambda i, o: reported.append((i, o)))
    assert outcomes == [
        Delivered(),
        DeadLetter("payload is not JSON (ValueError)"),
        Retry("broker nack"),
    ]
    assert sorted(reported, key=lambda item: item[0]) == list(enumerate(outcomes))


async def test_unserialisable_event_is_dead_lettered(broker: Broker) -> None:
    """A payload that is not JSON is DeadLetter; its batch-mates are published."""
    await broker.declare_exchange()
    queue = await broker.bind_queue()
    outcomes = await broker.sink().deliver([_event(1), _event(2, bad=float("nan")), _event(3)])
    assert outcomes == [Delivered(), DeadLetter("payload is not JSON (ValueError)"), Delivered()]
    assert len(await _drain(queue)) == 2


async def test_channel_closed_mid_batch_retries_then_next_batch_delivers(broker: Broker) -> None:
    """When the broker closes the channel during a batch, its events are Retry; the next
    batch opens a new channel and is delivered."""
    await broker.declare_exchange()
    queue = await broker.bind_queue()
    sink = broker.sink()
    assert await sink.deliver([_event(0)]) == [Delivered()]

    # Publishing to a deleted exchange makes the broker close the sink's channel (404).
    await broker.channel.exchange_delete(broker.exchange)
    failed = await sink.deliver([_event(1), _event(2), _event(3)])
    assert all(isinstance(outcome, Retry) for outcome in failed), failed

    await broker.declare_exchange()  # the operator puts it back
    await queue.bind(broker.exchange, routing_key="form_submission.#")
    retried = [_event(1), _event(2), _event(3)]
    assert await sink.deliver(retried) == [Delivered()] * 3
    assert len(await _drain(queue)) == 4


class CuttingProxy:
    """A TCP proxy to the broker that, once armed, cuts every connection at the next
    bytes the client sends (so a batch's publishes never reach the broker)."""

    def __init__(self, upstream: URL) -> None:
        self._upstream = upstream
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.armed = False
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(
            self._upstream.host, self._upstream.port
        )
        self._writers += [writer, up_writer]
        await asyncio.gather(
            self._pipe(reader, up_writer, from_client=True),
            self._pipe(up_reader, writer, from_client=False),
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, from_client: bool
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if from_client and self.armed:
                    self.armed = False
                    self.cut()
                    return
                writer.write(data)
                await writer.drain()
        writer.close()

    def cut(self) -> None:
        """Abort every proxied connection, both sides, like a network failure."""
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def test_connection_drop_mid_batch_retries_then_next_batch_delivers(
    broker: Broker,
) -> None:
    """A connection cut while a batch is published gives Retry for all of it (none reached
    the broker); the next batch reconnects and is delivered."""
    await broker.declare_exchange()
    queue = await broker.bind_queue()
    upstream = URL(broker.url)
    proxy = CuttingProxy(upstream)
    await proxy.start()
    try:
        sink = broker.sink(url=str(upstream.with_host("127.0.0.1").with_port(proxy.port)))
        first = [_event(0)]
        assert await sink.deliver(first) == [Delivered()]

        proxy.armed = True
        cut = [_event(1), _event(2)]
        outcomes = await sink.deliver(cut)
        assert all(isinstance(outcome, Retry) for outcome in outcomes), outcomes

        assert await sink.deliver(cut) == [Delivered()] * 2
    finally:
        await proxy.stop()
    ids = [m.message_id for m in await _drain(queue)]
    assert ids == [e.event_id for e in first + cut]


async def test_unreachable_broker_is_retry_for_the_whole_batch(broker: Broker) -> None:
    """With nothing listening, deliver answers Retry for every event instead of raising."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = str(URL(broker.url).with_host("127.0.0.1").with_port(port))
    outcomes = await broker.sink(url=url).deliver([_event(1), _event(2)])
    assert len(outcomes) == 2
    for outcome in outcomes:
        assert isinstance(outcome, Retry)
        assert outcome.reason.startswith("broker unavailable (")
    await broker.declare_exchange()  # only so cleanup has something to delete


def test_repr_hides_the_broker_password() -> None:
    """The sink's repr is its name only: the URL carries the broker password."""
    sink = AmqpSink("bus", "amqp://syncd:hunter2@broker:5672/", "events", "k")
    assert repr(sink) == "AmqpSink(name='bus')"
