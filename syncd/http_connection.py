"""One HTTP/1.1 client connection on asyncio's own transport, parsed by httptools (llhttp).

Why not httpcore: at 16 requests in flight to a local peer, a 74 KB GET cost ~0.8 ms of
the client's CPU through httpx → httpcore → h11 → anyio, most of it framework: anyio
locks that always yield, a cancel scope around every read and write, h11 validating and
assembling every header in Python (BENCHMARKS.md, B5). Here the loop calls the protocol
when bytes arrive, llhttp (C, the parser Node.js and uvicorn use) frames the response, and
a request waits on one future per event. httpx stays the API: `syncd.http_transport`
serves `httpx.Request`s on these connections and answers `httpx.Response`s.

A connection serves one request at a time. Its failures are httpx's exceptions, with
httpcore's meaning, because callers decide on them (`syncd.voxares.errors`): `ConnectError`
and `ConnectTimeout` only before a byte of the request was written (the request provably
did not reach the server), `WriteError`/`WriteTimeout` while writing, `ReadError`,
`ReadTimeout` and `RemoteProtocolError` (closed early, malformed) after.
"""

# ruff: noqa: ASYNC109 (timeouts are per network operation, as httpx defines them)
from __future__ import annotations

import asyncio
import select
import ssl
from collections import deque
from typing import Any, Final

import httptools
import httpx

from syncd.http_proxy import Proxy

# Body bytes buffered before the socket stops being read (back-pressure to the server).
READ_BUFFER_LIMIT: Final = 1024 * 1024
_POLL_READABLE = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP
# Statuses whose responses carry no body whatever their headers say (RFC 9110 §6.4.1).
_NO_BODY_STATUSES = frozenset({204, 304})
# A proxy's answer to CONNECT longer than this is not one.
_TUNNEL_HEAD_LIMIT: Final = 16 * 1024


class HTTP11Connection(asyncio.Protocol):
    """A keep-alive HTTP/1.1 connection to one origin: open, send, read, reuse or close.

    Use: `await open_connection(...)`, then per request `await send(head, body, timeouts)`,
    `await read_head(timeout)` → (status, reason, headers), `await read_body(timeout)` until
    it returns b"", then `release()` (reusable if `reusable()`) or `close()`.
    """

    def __init__(self, request: httpx.Request) -> None:
        self._request = request  # the request in flight: httpx's exceptions carry it
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False
        self._lost = False  # the transport is gone (closed by either side)
        self._eof = False
        self._failure: httpx.TransportError | None = None
        self._in_flight = False
        self._head_method = False
        self._status = 0
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_done = False
        self._message_done = False
        self._keep_alive = False  # the response may be followed by another on this connection
        self._framed = False  # the response says where its body ends (length or chunked)
        self._received = 0
        self._expected: int | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._poll: Any = None  # select.poll has no public type name
        self.idle_since = 0.0
        self.origin: tuple[str, str, int] = ("", "", 0)  # scheme, host, port

    # The protocol side, called by the event loop.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and hasattr(select, "poll"):
            self._poll = select.poll()
            self._poll.register(sock.fileno(), select.POLLIN)

    def data_received(self, data: bytes) -> None:
        if not self._in_flight:
            # An idle keep-alive connection is never spoken to: the server is closing it or
            # broken. It is not reused.
            self._fail(httpx.RemoteProtocolError("unexpected data on an idle connection"))
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("the server switched protocols"))
            self.close()
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed response ({type(exc).__name__})"))
            self.close()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        if self._in_flight and self._head_done and not self._framed and not self._message_done:
            # A body delimited by the connection's close (RFC 9112 §6.3, item 8) is complete.
            self._message_done = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._poll = None
        if exc is not None and self._in_flight:
            self._fail(httpx.ReadError(f"the connection broke ({type(exc).__name__})"))
        self._wake()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # httptools' callbacks.

    def on_message_begin(self) -> None:
        self._status, self._reason, self._headers = 0, b"", []

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            return  # an interim response (100 Continue, 103 Early Hints): the real one follows
        self._status = status
        self._head_done = True
        for name, value in self._headers:
            lowered = name.lower()
            if lowered == b"content-length":
                self._framed = True
                self._expected = int(value)  # llhttp has refused a malformed length already
            elif lowered == b"transfer-encoding":
                self._framed = True
        if self._head_method or status in _NO_BODY_STATUSES:
            self._framed = True
            self._message_done = True

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        self._received += len(body)
        if self._buffered > READ_BUFFER_LIMIT and not self._read_paused and self._transport:
            self._read_paused = True
            self._transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._head_done:
            # Asked here: llhttp resets its flags for the next message once this returns.
            self._keep_alive = self._parser.should_keep_alive()
            self._message_done = True

    # The caller's side.

    async def open(
        self,
        origin: tuple[str, str, int],
        ssl_context: ssl.SSLContext | None,
        timeout: float | None,
        proxy: Proxy | None = None,
    ) -> None:
        """Connect (through `proxy`'s tunnel if given; TLS handshake included), within
        `timeout` for all of it; `ConnectError`/`ConnectTimeout` on failure."""
        self.origin = origin
        _, host, port = origin
        try:
            async with asyncio.timeout(timeout):
                if proxy is None:
                    await self._loop.create_connection(
                        lambda: self,
                        host,
                        port,
                        ssl=ssl_context,
                        server_hostname=host if ssl_context is not None else None,
                    )
                else:
                    await self._open_tunnel(proxy, host, port, ssl_context)
        except TimeoutError:
            self.close()
            raise httpx.ConnectTimeout("timed out connecting", request=self._request) from None
        except _TunnelRefused as exc:
            self.close()
            raise httpx.ConnectError(
                f"the proxy refused the tunnel ({exc.status})", request=self._request
            ) from None
        except OSError as exc:
            # Refused, unreachable, name not resolved, TLS refused, a proxy that hung up.
            self.close()
            raise httpx.ConnectError(
                f"could not connect ({type(exc).__name__})", request=self._request
            ) from None

    async def _open_tunnel(
        self, proxy: Proxy, host: str, port: int, ssl_context: ssl.SSLContext | None
    ) -> None:
        """`CONNECT host:port` through an HTTP proxy, then TLS inside the tunnel: the proxy
        sees where we connect, never what we send."""
        handshake = _TunnelHandshake(self._loop)
        transport, _ = await self._loop.create_connection(lambda: handshake, proxy.host, proxy.port)
        try:
            target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            head = [f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n".encode("ascii")]
            if proxy.authorization is not None:
                head.append(b"Proxy-Authorization: " + proxy.authorization + b"\r\n")
            transport.write(b"".join(head) + b"\r\n")
            status = await handshake.status
            if status != 200:
                raise _TunnelRefused(status)
            if ssl_context is not None:
                upgraded = await self._loop.start_tls(
                    transport, handshake, ssl_context, server_hostname=host
                )
                if upgraded is None:
                    raise ConnectionError("the tunnel closed during the TLS handshake")
                transport = upgraded
        except BaseException:
            transport.close()
            raise
        transport.set_protocol(self)
        self.connection_made(transport)

    async def send(self, request: httpx.Request, data: bytes, timeout: float | None) -> None:
        """Write a whole request (head and body in one buffer), waiting while the server
        reads slower than we write."""
        if self._transport is None or self._lost:
            raise httpx.WriteError("the connection is closed", request=request)
        self._request = request
        self._in_flight = True
        self._head_method = request.method == "HEAD"
        self._head_done = self._message_done = self._framed = self._keep_alive = False
        self._received, self._expected = 0, None
        self._transport.write(data)
        if self._write_paused:
            self._writable = self._loop.create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._writable
            except TimeoutError:
                self.close()
                raise httpx.WriteTimeout("timed out writing", request=request) from None
            finally:
                self._writable = None
            if self._lost:
                raise httpx.WriteError("the connection broke while writing", request=request)

    async def read_head(
        self, timeout: float | None
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """The response's status, reason phrase and headers."""
        while not self._head_done:
            await self._wait(timeout, "Server disconnected without sending a response.")
        return self._status, self._reason, self._headers

    async def read_body(self, timeout: float | None) -> bytes:
        """The next part of the body; b"" once it is complete."""
        while not self._chunks:
            if self._message_done:
                return b""
            await self._wait(
                timeout, "peer closed connection without sending complete message body"
            )
        part = self._chunks.popleft()
        self._buffered -= len(part)
        if self._read_paused and self._buffered <= READ_BUFFER_LIMIT // 2 and self._transport:
            self._read_paused = False
            self._transport.resume_reading()
        return part

    def release(self) -> None:
        """The response was read to its end: the connection is idle again."""
        self._in_flight = False
        self.idle_since = self._loop.time()

    def reusable(self, keepalive_expiry: float | None) -> bool:
        """Whether another request may go on this idle connection.

        Not if it is closed, was spoken to while idle, was told not to persist, or expired;
        nor if the socket is readable although nothing was read: the server's FIN (or a
        stray byte) is waiting for a loop iteration that has not run yet.
        """
        if self._lost or self._eof or self._failure is not None or self._in_flight:
            return False
        if not self._message_done or not self._keep_alive:
            return False
        if keepalive_expiry is not None and self._loop.time() - self.idle_since > keepalive_expiry:
            return False
        return self._poll is None or not any(ev & _POLL_READABLE for _, ev in self._poll.poll(0))

    def close(self) -> None:
        """Close now; a request waiting on this connection fails."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        self._lost = True
        self._wake()

    # Waiting.

    async def _wait(self, timeout: float | None, closed_early: str) -> None:
        if self._failure is not None:
            raise self._failure
        if self._lost or self._eof:
            self.close()
            if self._head_done and self._expected is not None:
                closed_early = (
                    f"{closed_early}: received {self._received} bytes, expected {self._expected}"
                )
            raise httpx.RemoteProtocolError(closed_early, request=self._request)
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(timeout, _time_out, waiter) if timeout is not None else None
        try:
            await waiter
        except TimeoutError:
            self.close()
            raise httpx.ReadTimeout("timed out reading", request=self._request) from None
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, failure: httpx.TransportError) -> None:
        if self._failure is None:
            failure.request = self._request
            self._failure = failure


class _TunnelHandshake(asyncio.Protocol):
    """The proxy's answer to CONNECT: `status` resolves to its status code once the head
    has arrived (0 when unreadable); a proxy that hangs up first is a ConnectionError."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.status: asyncio.Future[int] = loop.create_future()
        self._head = b""

    def data_received(self, data: bytes) -> None:
        if self.status.done():
            return  # nothing may follow the head before our TLS hello
        self._head += data
        if b"\r\n\r\n" in self._head:
            parts = self._head.split(b"\r\n", 1)[0].split(b" ", 2)
            code = parts[1] if len(parts) > 1 else b""
            self.status.set_result(int(code) if code.isdigit() else 0)
        elif len(self._head) > _TUNNEL_HEAD_LIMIT:
            self.status.set_result(0)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.status.done():
            self.status.set_exception(ConnectionError("the proxy closed the connection"))


class _TunnelRefused(Exception):
    """The proxy answered CONNECT with another status than 200."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
