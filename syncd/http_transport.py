"""The HTTP transport every outgoing pool uses (Voxares client, webhook sink).

httpx's default transport with two changes, both about cost per request, not behaviour:

- TCP_NODELAY on every connection. httpcore writes a request's headers and body
  separately; without it Nagle holds each body until the server's delayed ACK (up to
  40 ms per request on Linux).
- A cheap "is this idle connection readable?" check. On every request and on every
  response close, httpcore's pool asks each of its connections `has_expired()`, which
  asks the anyio stream for `is_readable`; anyio answers through `extra_attributes`,
  which rebuilds a dict of every socket attribute and calls `getpeername()` each time,
  and httpcore then builds a new `select.poll` object. That is ~30 µs per connection,
  twice per request: O(connections) per request, so at 64 connections the daemon spent
  5 ms of CPU per call in it and B1 fell from 594 to 191 patients/s (BENCHMARKS.md).
  `ReadableCheckBackend` keeps each connection's socket and one registered poll object,
  so the same check is one `poll(0)` system call.

The check keeps httpcore's meaning: an idle HTTP/1.1 connection whose socket is readable
was closed (or spoken to) by the server and is not reused.

And one report: `on_send`, a context variable the caller sets around a request, is called
on each write to the connection (the first one is the request's headers leaving). The
Voxares client's rate limiter charges a request at that moment rather than when it let
the request go (`syncd.voxares.limits`). httpcore writes an HTTP/1.1 request in the
caller's task, so the variable set there is the one seen here.
"""

# ruff: noqa: ASYNC109 (the `timeout` parameters are httpcore's stream and backend interface)
from __future__ import annotations

import asyncio
import contextvars
import select
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import Any

import httpcore
import httpx

NO_DELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
# httpx.Limits allows max_connections=None (no bound); a pool of ours always has one.
DEFAULT_MAX_CONNECTIONS = 100
_POLL_READABLE = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP

# Called (no arguments, must be cheap and idempotent) on every write of the current request.
on_send: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "syncd_http_on_send", default=None
)


class ReadableCheckStream(httpcore.AsyncNetworkStream):
    """A network stream that answers `is_readable` with one `poll(0)` on a kept poll object.

    Everything else is passed to the wrapped stream unchanged.
    """

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._poll: Any = None  # select.poll has no public type name
        # anyio hands out asyncio's TransportSocket here, not a socket.socket.
        fileno = getattr(inner.get_extra_info("socket"), "fileno", None)
        if fileno is not None and hasattr(select, "poll"):
            self._poll = select.poll()
            self._poll.register(fileno(), select.POLLIN)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Read from the wrapped stream."""
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Write to the wrapped stream, reporting it to the current request's `on_send`."""
        report = on_send.get()
        if report is not None:
            report()
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        """Close the wrapped stream; later readability checks say "readable" (expired)."""
        self._poll = None
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """TLS over the wrapped stream; the TLS stream gets the same cheap check."""
        tls = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        return ReadableCheckStream(tls)

    def get_extra_info(self, info: str) -> Any:
        """As the wrapped stream's, except `is_readable`, answered from the kept poll object."""
        if info == "is_readable":
            if self._poll is None:
                # Closed, or no poll() on this platform: ask the wrapped stream.
                return self._inner.get_extra_info(info)
            return any(events & _POLL_READABLE for _, events in self._poll.poll(0))
        return self._inner.get_extra_info(info)


class ReadableCheckBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend whose streams are `ReadableCheckStream`s."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """A TCP connection through the wrapped backend."""
        stream = await self._inner.connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )
        return ReadableCheckStream(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """A Unix socket connection through the wrapped backend."""
        stream = await self._inner.connect_unix_socket(
            path, timeout=timeout, socket_options=socket_options
        )
        return ReadableCheckStream(stream)

    async def sleep(self, seconds: float) -> None:
        """Sleep as the wrapped backend does."""
        await self._inner.sleep(seconds)


class ExclusivePool:
    """A connection pool in which a connection serves one request at a time, by construction.

    httpcore's `AsyncConnectionPool` assigns a queued request to the first idle connection
    it sees, and a connection stays "idle" until the task it was given to runs; a second
    request arriving meanwhile gets the same connection, loses the race
    (`ConnectionNotAvailable`), and is assigned again, each pass scanning every connection
    (`has_expired`, `is_available`). With responses arriving in bursts (a fixed latency wakes
    them together) that thrash grows with the number of connections: 0.4 retries per request
    at 16 connections, 5.8 at 64, where B1 fell to 0.06 of C/L (BENCHMARKS.md).

    Here a request takes a slot (at most `max_connections` at once, waiting at most the
    request's pool timeout), then pops an idle connection to its origin (the most recently
    used first; expired ones are closed) or opens one; the connection is pushed back when
    the response is closed. Nothing is shared, so nothing is retried, and a request looks
    at one connection, not all of them.
    """

    def __init__(
        self,
        *,
        max_connections: int,
        keepalive_expiry: float | None,
        ssl_context: ssl.SSLContext | None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None,
        network_backend: httpcore.AsyncNetworkBackend,
    ) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._ssl_context = ssl_context
        self._socket_options = socket_options
        self._network_backend = network_backend
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[tuple[bytes, bytes, int], list[httpcore.AsyncHTTPConnection]] = {}

    @property
    def idle_connections(self) -> int:
        """Connections kept open for reuse right now."""
        return sum(len(stack) for stack in self._idle.values())

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        """Send `request` on a connection of its own; the response returns it when closed."""
        if self._slots.locked():
            timeouts = request.extensions.get("timeout", {})
            try:
                async with asyncio.timeout(timeouts.get("pool")):
                    await self._slots.acquire()
            except TimeoutError:
                raise httpcore.PoolTimeout("no connection slot within the pool timeout") from None
        else:
            # A free slot is taken without suspending: no timer to arm and cancel.
            await self._slots.acquire()
        connection: httpcore.AsyncHTTPConnection | None = None
        try:
            connection = await self._connection_for(request.url.origin)
            response = await connection.handle_async_request(request)
        except BaseException:
            await self._give_back(connection)
            raise
        assert isinstance(response.stream, AsyncIterable)
        response.stream = _ReturningStream(response.stream, self, connection)
        return response

    async def _connection_for(self, origin: httpcore.Origin) -> httpcore.AsyncHTTPConnection:
        stack = self._idle.get(_origin_key(origin), [])
        while stack:
            connection = stack.pop()
            if connection.is_available() and not connection.has_expired():
                return connection
            await connection.aclose()
        if self.idle_connections >= self._max_connections:  # other origins hold them all
            await self._close_one_idle()
        return httpcore.AsyncHTTPConnection(
            origin,
            ssl_context=self._ssl_context,
            keepalive_expiry=self._keepalive_expiry,
            network_backend=self._network_backend,
            socket_options=self._socket_options,
        )

    async def _close_one_idle(self) -> None:
        for stack in self._idle.values():
            if stack:
                await stack.pop(0).aclose()
                return

    async def _give_back(self, connection: httpcore.AsyncHTTPConnection | None) -> None:
        """Keep a reusable connection, close any other; free the slot whatever happens."""
        try:
            if connection is None:
                return
            if connection.is_available():
                origin = connection._origin
                self._idle.setdefault(_origin_key(origin), []).append(connection)
            elif not connection.is_closed():
                await connection.aclose()
        finally:
            self._slots.release()

    async def aclose(self) -> None:
        """Close every idle connection (in-flight ones close with their responses)."""
        stacks, self._idle = self._idle, {}
        for stack in stacks.values():
            for connection in stack:
                await connection.aclose()

    async def __aenter__(self) -> ExclusivePool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _ReturningStream:
    """A response body that gives its connection back to the pool once closed."""

    def __init__(
        self,
        stream: AsyncIterable[bytes],
        pool: ExclusivePool,
        connection: httpcore.AsyncHTTPConnection,
    ) -> None:
        self._stream = stream
        self._pool = pool
        self._connection: httpcore.AsyncHTTPConnection | None = connection

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._stream:
                yield part
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Close the body (httpcore then marks the connection idle or closes it), once."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            closer = getattr(self._stream, "aclose", None)
            if closer is not None:
                await closer()
        finally:
            await self._pool._give_back(connection)


def _origin_key(origin: httpcore.Origin) -> tuple[bytes, bytes, int]:
    return (origin.scheme, origin.host, origin.port)


def pooled_transport(limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """httpx's transport with TCP_NODELAY, the cheap readability check and `ExclusivePool`.

    httpx takes neither a pool nor a network backend as an argument, so its pool is replaced
    after construction, keeping its TLS context and keep-alive expiry (httpx 0.28 / httpcore
    1.0; `tests/unit/test_http_transport.py` fails if those attributes move).
    """
    transport = httpx.AsyncHTTPTransport(limits=limits, socket_options=[NO_DELAY])
    default = transport._pool
    assert isinstance(default, httpcore.AsyncConnectionPool)
    transport._pool = ExclusivePool(  # type: ignore[assignment]
        max_connections=limits.max_connections or DEFAULT_MAX_CONNECTIONS,
        keepalive_expiry=default._keepalive_expiry,
        ssl_context=default._ssl_context,
        socket_options=default._socket_options,
        network_backend=ReadableCheckBackend(default._network_backend),
    )
    return transport
