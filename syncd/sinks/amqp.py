"""A sink that publishes events to a RabbitMQ (AMQP 0-9-1) exchange with publisher confirms.

Each event is one persistent message (`message_id` = event id, JSON body of
`envelope.to_json()`, the event type in the `event-type` header and the `type` property).
An event counts as delivered only when the broker confirms it. A nack, an unroutable
return, a closed channel, a lost connection or a confirm that does not come in time are
all `Retry`; the sink then rebuilds its channel (and, if the connection is down, the
connection) at the start of the next batch, rather than waiting on aio-pika's background
reconnect timer.

aio-pika is an optional dependency: it is imported inside the functions that need it, so
the rest of the daemon loads without it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

import structlog

from syncd.sinks.base import (
    Answered,
    DeadLetter,
    Delivered,
    DeliveryOutcome,
    EventEnvelope,
    Retry,
    attempts_for,
    encode_event,
    outcome_counts,
    tell,
)

if TYPE_CHECKING:
    from aio_pika.abc import (
        AbstractExchange,
        AbstractMessage,
        AbstractRobustChannel,
        AbstractRobustConnection,
    )

log = structlog.get_logger(__name__)

EVENT_TYPE_HEADER: Final = "event-type"
APP_ID: Final = "voxares-syncd"


class AmqpSink:
    """Publishes each batch to one exchange and routing key, waiting for confirms."""

    def __init__(
        self,
        name: str,
        url: str,
        exchange: str,
        routing_key: str,
        *,
        exchange_type: str = "topic",
        connect_timeout: float = 10.0,
        publish_timeout: float = 10.0,
    ) -> None:
        self._name = name
        self._url = url
        self._exchange_name = exchange
        self._exchange_type = exchange_type
        self._routing_key = routing_key
        self._connect_timeout = connect_timeout
        self._publish_timeout = publish_timeout
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None
        # Set when a publish failed in a way that may have broken the channel.
        self._broken = False
        # One batch at a time: the set-up below must not run twice concurrently.
        self._lock = asyncio.Lock()

    @property
    def name(self) -> str:
        """The configured sink name."""
        return self._name

    def __repr__(self) -> str:
        # Not the URL: it carries the broker password.
        return f"AmqpSink(name={self._name!r})"

    async def deliver(
        self,
        events: Sequence[EventEnvelope],
        *,
        attempts: Sequence[int] | None = None,
        answered: Answered | None = None,
    ) -> list[DeliveryOutcome]:
        """Publish every event and wait for its confirm; one outcome per event, each
        reported to `answered` as its confirm (or failure) arrives."""
        attempts_for(events, attempts)  # only checks the lengths: no 4xx-like refusals here
        outcomes: list[DeliveryOutcome] = [Delivered()] * len(events)
        messages: list[tuple[int, AbstractMessage]] = []
        for position, event in enumerate(events):
            try:
                messages.append((position, _message(event, encode_event(event))))
            except (TypeError, ValueError) as exc:
                reason = f"payload is not JSON ({type(exc).__name__})"
                outcomes[position] = tell(answered, position, DeadLetter(reason))
        if messages:
            async with self._lock:
                results = await self._publish_all(messages, answered)
            for (position, _), result in zip(messages, results, strict=True):
                outcomes[position] = result
        log.info("sink.batch", sink=self._name, kind="amqp", **outcome_counts(outcomes))
        return outcomes

    async def _publish_all(
        self, messages: list[tuple[int, AbstractMessage]], answered: Answered | None
    ) -> list[DeliveryOutcome]:
        try:
            exchange = await self._ready_exchange()
        except Exception as exc:  # refused, auth, timeout, 406 on declare: all transient here
            log.warning("sink.amqp.unavailable", sink=self._name, error=type(exc).__name__)
            self._broken = True
            failed = Retry(f"broker unavailable ({type(exc).__name__})")
            return [tell(answered, position, failed) for position, _ in messages]

        async def publish(position: int, message: AbstractMessage) -> DeliveryOutcome:
            return tell(answered, position, await self._publish(exchange, message))

        # Started in batch order; aiormq writes frames under a FIFO lock, so the broker
        # receives them in this order while their confirms are awaited together.
        return list(await asyncio.gather(*(publish(p, m) for p, m in messages)))

    async def _publish(
        self, exchange: AbstractExchange, message: AbstractMessage
    ) -> DeliveryOutcome:
        from aio_pika.exceptions import DeliveryError, PublishError

        try:
            await exchange.publish(
                message, self._routing_key, mandatory=True, timeout=self._publish_timeout
            )
        except PublishError:
            return Retry("unroutable: the broker returned the message (no bound queue)")
        except DeliveryError:
            return Retry("broker nack")
        except Exception as exc:  # ChannelClosed, ConnectionClosed, TimeoutError, ...
            self._broken = True
            return Retry(type(exc).__name__)
        return Delivered()

    async def _ready_exchange(self) -> AbstractExchange:
        """The exchange on a working channel, rebuilding what a failure left broken."""
        if self._exchange is not None and not self._broken and self._usable():
            return self._exchange
        await self._close_channel()
        connection = self._connection
        if connection is None or connection.is_closed or not connection.connected.is_set():
            await self._close_connection()
            connection = await self._connect()
        self._broken = False
        self._exchange = await self._open_exchange(connection)
        return self._exchange

    def _usable(self) -> bool:
        return (
            self._connection is not None
            and self._connection.connected.is_set()
            and self._channel is not None
            and not self._channel.is_closed
        )

    async def _connect(self) -> AbstractRobustConnection:
        import aio_pika

        self._connection = await aio_pika.connect_robust(
            self._url,
            timeout=self._connect_timeout,
            client_properties={"connection_name": f"{APP_ID} sink {self._name}"},
        )
        log.info("sink.amqp.connected", sink=self._name)
        return self._connection

    async def _open_exchange(self, connection: AbstractRobustConnection) -> AbstractExchange:
        """Use the configured exchange if it exists (whatever its type), else declare it
        durable. The default exchange ("") always exists and cannot be declared."""
        from aio_pika.exceptions import ChannelNotFoundEntity

        async with asyncio.timeout(self._connect_timeout):
            channel = await self._open_channel(connection)
            if not self._exchange_name:
                return channel.default_exchange
            try:
                # robust=False: aio-pika must not redeclare it behind our back on reconnect.
                return await channel.declare_exchange(
                    self._exchange_name, passive=True, robust=False
                )
            except ChannelNotFoundEntity:
                pass  # the broker closed that channel with 404: open another
            await self._close_channel()
            channel = await self._open_channel(connection)
            exchange = await channel.declare_exchange(
                self._exchange_name, self._exchange_type, durable=True, robust=False
            )
        log.info("sink.amqp.exchange_declared", sink=self._name, exchange=self._exchange_name)
        return exchange

    async def _open_channel(self, connection: AbstractRobustConnection) -> AbstractRobustChannel:
        # on_return_raises: an unroutable message fails its publish instead of "succeeding".
        channel = connection.channel(publisher_confirms=True, on_return_raises=True)
        await channel.initialize()
        self._channel = channel
        return channel

    async def _close_channel(self) -> None:
        channel, self._channel, self._exchange = self._channel, None, None
        if channel is not None:
            # Even one the broker closed: that marks it closed by us, so aio-pika's robust
            # channel does not reopen it in the background.
            with contextlib.suppress(Exception):
                await channel.close()

    async def _close_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()

    async def aclose(self) -> None:
        """Close the channel and the connection."""
        async with self._lock:
            await self._close_channel()
            await self._close_connection()


def _message(event: EventEnvelope, body: str) -> AbstractMessage:
    import aio_pika

    return aio_pika.Message(
        body.encode(),
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=event.event_id,
        type=event.event_type,
        headers={EVENT_TYPE_HEADER: event.event_type},
        app_id=APP_ID,
    )
