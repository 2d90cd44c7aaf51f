"""The pooled transport's cheap idle-connection check (syncd.http_transport)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import httpcore
import httpx
import pytest

from syncd.http_transport import (
    ExclusivePool,
    ReadableCheckBackend,
    ReadableCheckStream,
    pooled_transport,
)


class SocketStream(httpcore.AsyncNetworkStream):
    """A network stream over one end of a real socket pair (answers `is_readable` like httpcore)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True

    def get_extra_info(self, info: str) -> Any:
        if info == "socket":
            return self.sock
        if info == "is_readable":
            return "asked the wrapped stream"
        return None


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    yield left, right
    left.close()
    right.close()


def test_pooled_transport_wraps_the_pools_network_backend() -> None:
    """httpx's pool gets our backend (fails if httpx/httpcore move the attribute)."""
    transport = pooled_transport(httpx.Limits(max_connections=4))
    assert isinstance(transport._pool, ExclusivePool)
    assert isinstance(transport._pool._network_backend, ReadableCheckBackend)


def test_quiet_socket_is_not_readable(pair: tuple[socket.socket, socket.socket]) -> None:
    """An idle connection whose peer sent nothing is reusable."""
    stream = ReadableCheckStream(SocketStream(pair[0]))
    assert stream.get_extra_info("is_readable") is False


def test_peer_data_makes_it_readable(pair: tuple[socket.socket, socket.socket]) -> None:
    """Bytes from the server on an idle connection mark it readable (not reused)."""
    stream = ReadableCheckStream(SocketStream(pair[0]))
    pair[1].sendall(b"x")
    assert stream.get_extra_info("is_readable") is True


def test_peer_close_makes_it_readable(pair: tuple[socket.socket, socket.socket]) -> None:
    """A server that closed its end makes the idle connection readable (expired)."""
    stream = ReadableCheckStream(SocketStream(pair[0]))
    pair[1].close()
    assert stream.get_extra_info("is_readable") is True


async def test_closed_stream_asks_the_wrapped_stream(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """After aclose the kept poll object is dropped and the wrapped stream answers."""
    inner = SocketStream(pair[0])
    stream = ReadableCheckStream(inner)
    await stream.aclose()
    assert inner.closed
    assert stream.get_extra_info("is_readable") == "asked the wrapped stream"
    assert stream.get_extra_info("socket") is pair[0]
