"""The HTTP transport every outgoing pool uses (Voxares client, webhook sink).

An `httpx.AsyncBaseTransport`, so httpx stays the API and tests still inject theirs, that
serves requests on `syncd.http_connection.HTTP11Connection`s: asyncio's own transports
with llhttp parsing, instead of httpcore, h11 and anyio (which cost ~0.6 ms of CPU per
call at 16 in flight, most of a form-submission detail's; BENCHMARKS.md, B5).

The pool: a connection serves one request at a time, by construction. A request takes a
slot (at most `max_connections` at once, waiting at most the request's pool timeout, else
`httpx.PoolTimeout`), then pops an idle connection to its origin (the most recently used
first; one that is closed, expired, told not to persist or readable while idle is closed)
or opens one; the connection goes back when the response body was read to its end, and is
closed if the body was abandoned or failed. A request looks at one connection, not all of
them (httpcore's pool scanned every connection per request, 5 ms of CPU at 64).

`on_send`, a context variable the caller sets around a request, is called right before
the request is written (the Voxares client's rate limiter charges the rate then, see
`syncd.voxares.limits`).

HTTPS goes through the proxy `HTTPS_PROXY` names, as a tunnel (`syncd.http_proxy`). Not
supported: HTTP/2, Unix sockets.
"""

# ruff: noqa: ASYNC109 (timeouts are httpx's per phase, passed down from the request)
from __future__ import annotations

import asyncio
import contextvars
import re
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Final

import httpx

from syncd.http_connection import HTTP11Connection
from syncd.http_proxy import ProxyRoutes, routes_from_environment

# httpx.Limits allows max_connections=None (no bound); a pool of ours always has one.
DEFAULT_MAX_CONNECTIONS: Final = 100
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# RFC 9110 §5.1 (token) and §5.5 (no CR, LF or NUL in a value): a header that breaks
# these could split the request.
_FIELD_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE_FORBIDDEN = re.compile(rb"[\r\n\x00]")

# Called (no arguments, must be cheap and idempotent) when the current request is written.
on_send: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "syncd_http_on_send", default=None
)

Origin = tuple[str, str, int]


class PooledTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over pooled `HTTP11Connection`s; see the module docstring."""

    def __init__(
        self,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        keepalive_expiry: float | None = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        proxies: ProxyRoutes | None = None,
    ) -> None:
        self._max_connections = max_connections
        self._proxies = proxies or ProxyRoutes()
        self._keepalive_expiry = keepalive_expiry
        self._ssl_context = ssl_context
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[Origin, list[HTTP11Connection]] = {}

    @property
    def idle_connections(self) -> int:
        """Connections kept open for reuse right now."""
        return sum(len(stack) for stack in self._idle.values())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` on a connection of its own; the response returns it when read."""
        timeouts = request.extensions.get("timeout", {})
        await self._take_slot(timeouts.get("pool"), request)
        connection: HTTP11Connection | None = None
        try:
            data = await request_bytes(request)
            connection = await self._connection_for(request, timeouts.get("connect"))
            report = on_send.get()
            if report is not None:
                report()
            await connection.send(request, data, timeouts.get("write"))
            status, reason, headers = await connection.read_head(timeouts.get("read"))
        except BaseException:
            if connection is not None:
                connection.close()
            self._slots.release()
            raise
        return httpx.Response(
            status,
            headers=headers,
            stream=_ResponseBody(self, connection, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason},
        )

    async def _take_slot(self, timeout: float | None, request: httpx.Request) -> None:
        if not self._slots.locked():
            # A free slot is taken without suspending: no timer to arm and cancel.
            await self._slots.acquire()
            return
        try:
            async with asyncio.timeout(timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout(
                "no connection slot within the pool timeout", request=request
            ) from None

    async def _connection_for(
        self, request: httpx.Request, timeout: float | None
    ) -> HTTP11Connection:
        url = request.url
        scheme = url.scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"no {scheme!r} transport", request=request)
        origin = (scheme, url.host, url.port or _DEFAULT_PORTS[scheme])
        stack = self._idle.get(origin)
        while stack:
            connection = stack.pop()
            if connection.reusable(self._keepalive_expiry):
                return connection
            connection.close()
        if self.idle_connections >= self._max_connections:  # other origins hold them all
            self._close_one_idle()
        connection = HTTP11Connection(request)
        tls = self._tls_context() if scheme == "https" else None
        await connection.open(origin, tls, timeout, self._proxies.for_origin(scheme, url.host))
        return connection

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            # httpx's: certifi's CAs, or SSL_CERT_FILE / SSL_CERT_DIR when set.
            self._ssl_context = httpx.create_ssl_context()
        return self._ssl_context

    def _close_one_idle(self) -> None:
        for stack in self._idle.values():
            if stack:
                stack.pop(0).close()
                return

    def give_back(self, connection: HTTP11Connection, *, read_to_end: bool) -> None:
        """Keep a connection whose response was read to its end and may persist; close any
        other. Frees the request's slot."""
        try:
            if read_to_end:
                connection.release()
            if read_to_end and connection.reusable(self._keepalive_expiry):
                self._idle.setdefault(connection.origin, []).append(connection)
            else:
                connection.close()
        finally:
            self._slots.release()

    async def aclose(self) -> None:
        """Close every idle connection (in-flight ones close with their responses)."""
        stacks, self._idle = self._idle, {}
        for stack in stacks.values():
            for connection in stack:
                connection.close()


class _ResponseBody(httpx.AsyncByteStream):
    """A response body read from its connection, which it gives back once, when read to
    its end (reusable) or closed early or failed (closed)."""

    def __init__(
        self, pool: PooledTransport, connection: HTTP11Connection, timeout: float | None
    ) -> None:
        self._pool = pool
        self._connection: HTTP11Connection | None = connection
        self._timeout = timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        if connection is None:
            raise httpx.StreamClosed()
        try:
            while part := await connection.read_body(self._timeout):
                yield part
        except BaseException:
            self._finish(read_to_end=False)
            raise
        self._finish(read_to_end=True)

    async def aclose(self) -> None:
        """Abandon whatever is unread: the connection is closed, not reused."""
        self._finish(read_to_end=False)

    def _finish(self, *, read_to_end: bool) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool.give_back(connection, read_to_end=read_to_end)


async def request_bytes(request: httpx.Request) -> bytes:
    """The request as it goes on the wire: request line, headers, body (one buffer).

    Header names and values are checked first (`httpx.LocalProtocolError`): a CR or LF in
    a value would let it write a second request.
    """
    lines = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
    chunked = False
    for name, value in request.headers.raw:
        if not _FIELD_NAME.fullmatch(name) or _FIELD_VALUE_FORBIDDEN.search(value):
            raise httpx.LocalProtocolError("a header name or value is malformed", request=request)
        if name.lower() == b"transfer-encoding":
            chunked = value.lower() == b"chunked"
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    body = await request.aread()
    if chunked and body:
        lines += (b"%x\r\n" % len(body), body, b"\r\n0\r\n\r\n")
    elif chunked:
        lines.append(b"0\r\n\r\n")
    else:
        lines.append(body)
    return b"".join(lines)


def pooled_transport(limits: httpx.Limits) -> PooledTransport:
    """The transport for a pool of `limits.max_connections` connections, kept alive for
    `limits.keepalive_expiry` seconds when idle, tunnelling HTTPS through the proxy that
    `HTTPS_PROXY` names (`syncd.http_proxy`; a bad one is a `ConfigError`)."""
    return PooledTransport(
        max_connections=limits.max_connections or DEFAULT_MAX_CONNECTIONS,
        keepalive_expiry=limits.keepalive_expiry,
        proxies=routes_from_environment(),
    )
