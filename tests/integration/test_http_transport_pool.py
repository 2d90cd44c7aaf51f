"""The pooled transport against a real loopback HTTP/1.1 server (syncd.http_transport)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest

from syncd.http_transport import PooledTransport, on_send, pooled_transport
from tests.waiting import async_wait_until


@dataclass
class Server:
    """A keep-alive HTTP/1.1 server: `/slow` answers after 50 ms, `/held` once the test
    sets `release`, `/bye` closes after answering."""

    url: str = ""
    accepted: int = 0
    open_now: int = 0
    most_open: int = 0
    holding: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                if path == b"/slow":
                    await asyncio.sleep(0.05)
                if path == b"/held":
                    self.holding += 1
                    await self.release.wait()
                    self.holding -= 1
                body = b"x" * 100_000 if path == b"/big" else b"ok"
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                await writer.drain()
                if path == b"/bye":
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open_now -= 1
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server()
    listener = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    state.url = f"http://127.0.0.1:{port}"
    yield state
    state.release.set()
    for writer in state.writers:
        writer.close()
    listener.close()
    await listener.wait_closed()


def client_for(server: Server, connections: int, pool_timeout: float = 5.0) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(
        base_url=server.url,
        transport=pooled_transport(limits),
        timeout=httpx.Timeout(30.0, pool=pool_timeout),
    )


async def test_concurrent_requests_reuse_at_most_max_connections(server: Server) -> None:
    """64 requests through 8 connections: all answered, 8 connections opened and reused."""
    async with client_for(server, 8) as client:
        for _ in range(2):
            replies = await asyncio.gather(*(client.get("/slow") for _ in range(32)))
            assert [r.text for r in replies] == ["ok"] * 32
    assert server.accepted == 8
    assert server.most_open == 8


async def test_pool_timeout_when_every_slot_is_busy(server: Server) -> None:
    """A request that gets no slot within the pool timeout fails with httpx.PoolTimeout."""
    async with client_for(server, 1, pool_timeout=0.01) as client:
        held = asyncio.create_task(client.get("/held"))
        await async_wait_until(lambda: server.holding, "the first request to hold the slot")
        with pytest.raises(httpx.PoolTimeout):
            await client.get("/")
        server.release.set()
        assert (await held).text == "ok"
        assert (await client.get("/")).text == "ok"  # the slot came back


async def test_connection_closed_by_the_server_is_not_reused(server: Server) -> None:
    """After the server closes an idle keep-alive connection, the next request opens a new one."""
    async with client_for(server, 1) as client:
        assert (await client.get("/bye")).text == "ok"
        await async_wait_until(lambda: not server.open_now, "the server to close")
        await asyncio.sleep(0.05)  # a loop turn: the socket closes and its FIN arrives
        assert (await client.get("/")).text == "ok"
    assert server.accepted == 2


async def test_unread_response_frees_its_slot(server: Server) -> None:
    """A streamed response closed before its body is read gives the slot back."""
    async with client_for(server, 1, pool_timeout=30.0) as client:
        async with client.stream("GET", "/big") as response:
            assert response.status_code == 200
        assert (await client.get("/")).text == "ok"
        pool = client._transport
        assert isinstance(pool, PooledTransport)
        assert pool.idle_connections == 1


async def test_cancelled_request_frees_its_slot(server: Server) -> None:
    """Cancelling a request in flight gives its slot back (the next one is not starved)."""
    async with client_for(server, 1, pool_timeout=30.0) as client:
        held = asyncio.create_task(client.get("/held"))
        await async_wait_until(lambda: server.holding, "the request to be in flight")
        held.cancel()
        with pytest.raises(asyncio.CancelledError):
            await held
        assert (await client.get("/")).text == "ok"


async def test_on_send_is_called_for_the_request_that_set_it(server: Server) -> None:
    """`on_send` set around a request is called when its bytes are written (before the
    server could answer), and only for that request: a request in another task without it
    reports nothing."""
    reports: list[str] = []

    async def reported(name: str) -> None:
        token = on_send.set(lambda: reports.append(name))
        try:
            await client.get("/held")
        finally:
            on_send.reset(token)

    async with client_for(server, 2) as client:
        held = asyncio.create_task(reported("first"))
        await async_wait_until(lambda: server.holding, "the reported request to reach the server")
        assert set(reports) == {"first"}  # written, though not yet answered
        server.release.set()
        await held
        assert (await client.get("/")).text == "ok"  # sets nothing: reports nothing
    assert set(reports) == {"first"}
