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
"""

# ruff: noqa: ASYNC109 (the `timeout` parameters are httpcore's stream and backend interface)
from __future__ import annotations

import select
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

NO_DELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
_POLL_READABLE = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP


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
        """Write to the wrapped stream."""
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


def pooled_transport(limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """httpx's transport with TCP_NODELAY and the cheap readability check (module docstring).

    httpx does not take a network backend as an argument, so the pool's backend is wrapped
    after construction (httpx 0.28 / httpcore 1.0; `tests/unit/test_http_transport.py`
    fails if that attribute moves).
    """
    transport = httpx.AsyncHTTPTransport(limits=limits, socket_options=[NO_DELAY])
    pool = transport._pool
    pool._network_backend = ReadableCheckBackend(pool._network_backend)
    return transport
