"""MLLP (the Minimal Lower Layer Protocol): HL7 messages framed on a TCP stream.

A frame is `<VT> message <FS><CR>` (0x0B ... 0x1C 0x0D). The listener reads one frame,
hands its bytes to the handler, and writes the handler's answer (the ACK) back framed; a
sender waits for the ACK before sending its next message, which is what keeps one
connection's messages in order.

The listener is an asyncio TCP server (optionally TLS) that refuses peers outside the
allowed networks. Framing is written here rather than taken from python-hl7's
`hl7.mllp`: that module decodes frames with one fixed encoding, while the receive path
needs the bytes (the character set is named inside the message, in MSH-18).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import structlog

from syncd.exceptions import SyncdError

log = structlog.get_logger(__name__)

START_BLOCK: Final = b"\x0b"
END_BLOCK: Final = b"\x1c\r"
DEFAULT_MAX_MESSAGE_BYTES: Final = 1_048_576
_CLOSE_SECONDS: Final = 5.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Handler = Callable[[bytes, str], Awaitable[bytes]]


class FrameTooLarge(Exception):
    """A frame longer than the listener accepts (the connection is closed)."""


def frame(message: bytes) -> bytes:
    """`message` framed for MLLP."""
    return START_BLOCK + message + END_BLOCK


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """The next frame's content; None at a clean end of stream.

    Bytes before a start block are discarded (line noise, keep-alive newlines).
    """
    try:
        await reader.readuntil(START_BLOCK)
        body = await reader.readuntil(END_BLOCK)
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError:
        raise FrameTooLarge from None
    return body[: -len(END_BLOCK)]


def peer_allowed(host: str, allowed: Sequence[Network]) -> bool:
    """Whether `host` (an IP address) is in one of the `allowed` networks (empty: any)."""
    if not allowed:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in allowed)


class MllpListener:
    """Accepts MLLP connections and answers each frame with `handler(frame, peer)`."""

    def __init__(
        self,
        handler: Handler,
        *,
        host: str,
        port: int,
        tls: ssl.SSLContext | None = None,
        allowed_peers: Sequence[Network] = (),
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._handler = handler
        self._host = host
        self._port = port
        self._tls = tls
        self._allowed = tuple(allowed_peers)
        self._limit = max_message_bytes
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the one chosen for port 0)."""
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind and start accepting; raises OSError when the port cannot be bound."""
        self._server = await asyncio.start_server(
            self._connection, self._host, self._port, ssl=self._tls, limit=self._limit
        )
        log.info("hl7.listening", host=self._host, port=self.port, tls=self._tls is not None)

    async def close(self) -> None:
        """Stop accepting, end open connections (a frame being handled is finished first
        only if it already has its ACK; the sender resends anything unacknowledged)."""
        if self._server is None:
            return
        self._server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: a peer that never reads must not hold the daemon's shutdown.
            await asyncio.wait(tasks, timeout=_CLOSE_SECONDS)
        self._server = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        host = str(peer[0]) if peer else ""
        try:
            if not peer_allowed(host, self._allowed):
                log.warning("hl7.peer_refused", peer=host)
                return
            while True:
                try:
                    message = await read_frame(reader)
                except FrameTooLarge:
                    log.warning("hl7.frame_too_large", peer=host, limit=self._limit)
                    return
                if message is None:
                    return
                try:
                    answer = await self._handler(message, host)
                except SyncdError as exc:
                    # Not recorded: no ACK at all, so the sender sends it again later.
                    log.error("hl7.not_recorded", peer=host, error=str(exc))
                    return
                writer.write(frame(answer))
                await writer.drain()
        except (ConnectionError, ssl.SSLError) as exc:
            log.info("hl7.connection_lost", peer=host, error=type(exc).__name__)
        except asyncio.CancelledError:
            # `close()` ends the connection: finish quietly (asyncio's stream callback
            # would otherwise log the cancellation as an error on Python 3.11).
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class MllpClient:
    """A sender: one connection, one message at a time, each answered by its ACK.

    Used by the tests, the demo (`syncd demo --hl7`) and the benchmark, the way an
    interface engine (Mirth Connect) sends.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def connect(
        cls, host: str, port: int, *, tls: ssl.SSLContext | None = None
    ) -> MllpClient:
        """Open a connection to an MLLP listener."""
        reader, writer = await asyncio.open_connection(
            host, port, ssl=tls, limit=DEFAULT_MAX_MESSAGE_BYTES
        )
        return cls(reader, writer)

    async def send(self, message: bytes) -> bytes:
        """Send one message and return its ACK's bytes; ConnectionError if none came."""
        self._writer.write(frame(message))
        await self._writer.drain()
        answer = await read_frame(self._reader)
        if answer is None:
            raise ConnectionError("the listener closed the connection before acknowledging")
        return answer

    async def close(self) -> None:
        """Close the connection."""
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()


def ack_code(answer: bytes) -> str:
    """MSA-1 of an ACK's bytes ("" when there is no MSA segment)."""
    text = answer.decode("latin-1")
    for segment in text.replace("\n", "\r").split("\r"):
        if segment.startswith("MSA") and len(segment) > 4:
            return segment.split(segment[3])[1]
    return ""
