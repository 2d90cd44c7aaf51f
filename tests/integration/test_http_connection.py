"""The asyncio HTTP/1.1 transport (syncd.http_connection, syncd.http_transport) against a
real loopback server that answers as scripted: each failure is the httpx exception a caller
decides on (`syncd.voxares.errors`), and a connection is reused only when it may be."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from syncd import http_connection
from syncd.http_proxy import ProxyRoutes, parse_proxy_url
from syncd.http_transport import PooledTransport, on_send
from tests.certificates import write_certificate
from tests.waiting import async_wait_until

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Scripted:
    """A loopback server whose connections are answered by `handler`; it counts them."""

    handler: Handler
    url: str = ""
    accepted: int = 0
    requests: list[bytes] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.append(writer)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def read_request(reader: asyncio.StreamReader, requests: list[bytes]) -> bytes:
    """One request's head (and its Content-Length body), recorded; b"" at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return b""
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length) if length else b""
    requests.append(head + body)
    return head


def ok(body: bytes = b"ok", *extra: bytes) -> bytes:
    """A 200 response with a Content-Length."""
    headers = b"".join(header + b"\r\n" for header in extra)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), headers, body)


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Handler], Awaitable[Scripted]]]:
    servers: list[asyncio.Server] = []
    states: list[Scripted] = []

    async def start(handler: Handler, tls: ssl.SSLContext | None = None) -> Scripted:
        state = Scripted(handler)
        server = await asyncio.start_server(state.serve, "127.0.0.1", 0, ssl=tls)
        servers.append(server)
        states.append(state)
        scheme = "https" if tls else "http"
        state.url = f"{scheme}://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return state

    yield start
    for state in states:
        for writer in state.writers:
            writer.close()
    for server in servers:
        server.close()


def client(
    url: str,
    *,
    connections: int = 4,
    read: float = 30.0,
    write: float = 30.0,
    connect: float = 30.0,
    keepalive: float | None = 5.0,
    tls: ssl.SSLContext | None = None,
) -> httpx.AsyncClient:
    transport = PooledTransport(
        max_connections=connections, keepalive_expiry=keepalive, ssl_context=tls
    )
    return httpx.AsyncClient(
        base_url=url,
        transport=transport,
        timeout=httpx.Timeout(30.0, read=read, write=write, connect=connect),
    )


def pool_of(http: httpx.AsyncClient) -> PooledTransport:
    transport = http._transport
    assert isinstance(transport, PooledTransport)
    return transport


def keep_alive(server: Scripted) -> Handler:
    """A handler answering every request of a connection with "ok"."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader, server.requests):
            writer.write(ok())
            await writer.drain()

    return handler


async def test_requests_on_one_connection_in_turn(
    scripted: Callable[..., Awaitable[Scripted]],
) -> None:
    """Sequential requests reuse one keep-alive connection; each request is written as sent
    (method, target with query, Host, body)."""
    server = await scripted(lambda r, w: None)
    server.handler = keep_alive(server)
    async with client(server.url) as http:
        for n in range(3):
            reply = await http.post(f"/a b/{n}", params={"q": "x y"}, json={"n": n})
            assert (reply.status_code, reply.text) == (200, "ok")
    assert server.accepted == 1
    first = server.requests[0]
    assert first.startswith(b"POST /a%20b/0?q=x+y HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:" in first
    assert first.endswith(b'\r\n\r\n{"n":0}')


async def test_chunked_and_close_delimited_bodies_are_read_whole(
    scripted: Callable[..., Awaitable[Scripted]],
) -> None:
    """A chunked body is joined; a body without a length ends at the server's close, and
    that connection is not reused."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await read_request(reader, server.requests):
            if b"/chunked" in head:
                writer.write(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
                )
                await writer.drain()
            else:
                writer.write(b"HTTP/1.1 200 OK\r\n\r\n" + b"z" * 100_000)
                await writer.drain()
                return

    server = await scripted(handler)
    async with client(server.url) as http:
        assert (await http.get("/chunked")).content == b"abcdefg"
        assert pool_of(http).idle_connections == 1
        assert (await http.get("/eof")).content == b"z" * 100_000
        assert pool_of(http).idle_connections == 0
    assert server.accepted == 1


async def test_interim_responses_are_skipped(scripted: Callable[..., Awaitable[Scripted]]) -> None:
    """A 100 Continue or 103 Early Hints before the response is not the response."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader, server.requests)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok(b"final"))
        await writer.drain()
        await reader.read()

    server = await scripted(handler)
    async with client(server.url) as http:
        reply = await http.get("/")
    assert (reply.status_code, reply.text) == (200, "final")
    assert "link" not in reply.headers


async def test_no_content_and_connection_close(
    scripted: Callable[..., Awaitable[Scripted]],
) -> None:
    """A 204 has no body whatever follows; `Connection: close` is honoured (not reused)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader, server.requests)
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await read_request(reader, server.requests)
        writer.write(ok(b"bye", b"Connection: close"))
        await writer.drain()
        await reader.read()

    server = await scripted(handler)
    async with client(server.url) as http:
        assert (await http.get("/")).status_code == 204
        reply = await http.get("/")
        assert reply.text == "bye"
        assert pool_of(http).idle_connections == 0
    assert server.accepted == 1


async def test_server_closing_before_answering(
    scripted: Callable[..., Awaitable[Scripted]],
) -> None:
    """A connection closed after the request and before any response is a RemoteProtocolError
    (the request may have reached the server)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader, server.requests)

    server = await scripted(handler)
    async with client(server.url) as http:
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await http.get("/")


async def test_truncated_body(scripted: Callable[..., Awaitable[Scripted]]) -> None:
    """A body cut short of its Content-Length is a RemoteProtocolError naming the counts,
    never a shorter body."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader, server.requests)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 600)
        await writer.drain()

    server = await scripted(handler)
    async with client(server.url) as http:
        with pytest.raises(httpx.RemoteProtocolError, match="received 600 bytes, expected 1000"):
            await http.get("/")
        assert pool_of(http).idle_connections == 0


async def test_malformed_response(scripted: Callable[..., Awaitable[Scripted]]) -> None:
    """Bytes that are not HTTP/1.1 are a RemoteProtocolError, and the connection is closed."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader, server.requests)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        await reader.read()

    server = await scripted(handler)
    async with client(server.url) as http:
        with pytest.raises(httpx.RemoteProtocolError, match="malformed response"):
            await http.get("/")
        assert pool_of(http).idle_connections == 0


async def test_read_timeout_while_waiting_for_the_answer(
    scripted: Callable[..., Awaitable[Scripted]],
) -> None:
    """No response within the read timeout is a ReadTimeout; the connection is closed."""
    answered = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader, server.requests)
        await answered.wait()

    server = await scripted(handler)
    async with client(server.url, read=0.2) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get("/")
        assert pool_of(http).idle_connections == 0
    answered.set()


async def test_write_timeout_when_the_server_stops_reading(
    scripted: Callable[..., Awaitable[Scripted]],
) -> None:
    """A body the server does not read fills the socket buffers: WriteTimeout, not a hang."""
    done = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await done.wait()  # never reads

    server = await scripted(handler)
    async with client(server.url, write=0.3) as http:
        with pytest.raises(httpx.WriteTimeout):
            await http.post("/", content=b"x" * (64 * 1024 * 1024))
    done.set()


async def test_connect_refused_is_a_connect_error() -> None:
    """Nobody listening: ConnectError (the request provably did not reach a server)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: refused
        async with client(f"http://127.0.0.1:{port}") as http:
            with pytest.raises(httpx.ConnectError):
                await http.get("/")


async def test_connect_timeout_when_the_server_accepts_nothing() -> None:
    """A listener whose accept queue is full leaves the handshake unanswered: ConnectTimeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        fillers = []
        try:
            for _ in range(4):  # fill the accept queue (never accepted)
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(address)
                fillers.append(filler)
            async with client(f"http://127.0.0.1:{address[1]}", connect=0.3) as http:
                with pytest.raises(httpx.ConnectTimeout):
                    await http.get("/")
        finally:
            for filler in fillers:
                filler.close()


async def test_idle_connection_closed_by_the_server_is_not_reused(
    scripted: Callable[..., Awaitable[Scripted]],
) -> None:
    """After the server closes an idle keep-alive connection, the next request opens a new
    one instead of failing on the dead one."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader, server.requests)
        writer.write(ok())
        await writer.drain()

    server = await scripted(handler)
    async with client(server.url) as http:
        assert (await http.get("/")).text == "ok"
        await async_wait_until(lambda: server.writers, "the server to accept")
        await server.writers[0].wait_closed()  # its socket is closed: the FIN is on its way
        assert (await http.get("/")).text == "ok"
    assert server.accepted == 2


def test_readable_idle_socket_is_not_reusable() -> None:
    """The idle check also sees bytes (or a FIN) the loop has not read yet: a socket that
    polls readable is not reused, one that is quiet is."""

    async def check() -> tuple[bool, bool]:
        left, right = socket.socketpair()
        loop = asyncio.get_running_loop()
        connection = http_connection.HTTP11Connection(httpx.Request("GET", "http://x/"))
        transport, _ = await loop.create_connection(lambda: connection, sock=left)
        connection._message_done = connection._keep_alive = True
        quiet = connection.reusable(None)
        transport.pause_reading()  # the loop does not read: as if it had not run yet
        right.send(b"x")
        await asyncio.sleep(0)
        readable = connection.reusable(None)
        transport.close()
        right.close()
        return quiet, readable

    assert asyncio.run(check()) == (True, False)


async def test_keepalive_expiry(scripted: Callable[..., Awaitable[Scripted]]) -> None:
    """An idle connection older than the keep-alive expiry is closed, not reused."""
    server = await scripted(lambda r, w: None)
    server.handler = keep_alive(server)
    async with client(server.url, keepalive=0.0) as http:
        assert (await http.get("/")).text == "ok"
        await asyncio.sleep(0.01)
        assert (await http.get("/")).text == "ok"
    assert server.accepted == 2


async def test_abandoned_body_closes_its_connection(
    scripted: Callable[..., Awaitable[Scripted]],
) -> None:
    """A streamed response closed before its body was read frees the slot and closes the
    connection (its unread bytes would be taken for the next response)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader, server.requests):
            writer.write(ok(b"y" * 3_000_000))
            await writer.drain()

    server = await scripted(handler)
    async with client(server.url, connections=1) as http:
        async with http.stream("GET", "/") as response:
            assert response.status_code == 200
        reply = await http.get("/")
        assert len(reply.content) == 3_000_000
        assert pool_of(http).idle_connections == 1
    assert server.accepted == 2


async def test_a_slow_reader_pauses_the_socket(
    scripted: Callable[..., Awaitable[Scripted]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Body bytes buffered beyond the limit stop the socket being read until they are
    consumed (memory stays bounded); the body still arrives whole."""
    monkeypatch.setattr(http_connection, "READ_BUFFER_LIMIT", 64 * 1024)
    size = 8 * 1024 * 1024

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader, server.requests)
        writer.write(ok(b"z" * size))
        await writer.drain()
        await reader.read()

    largest = 0
    on_body = http_connection.HTTP11Connection.on_body

    def recording(connection: http_connection.HTTP11Connection, body: bytes) -> None:
        nonlocal largest
        on_body(connection, body)
        largest = max(largest, connection._buffered)

    monkeypatch.setattr(http_connection.HTTP11Connection, "on_body", recording)
    server = await scripted(handler)
    async with client(server.url) as http, http.stream("GET", "/") as response:
        received = 0
        async for part in response.aiter_raw():
            received += len(part)
            await asyncio.sleep(0.001)  # slower than loopback
    assert received == size
    # At most the limit plus what one read of the socket can add (asyncio reads 256 KiB).
    assert largest <= 64 * 1024 + 256 * 1024


async def test_cancelled_request_closes_its_connection_and_frees_the_slot(
    scripted: Callable[..., Awaitable[Scripted]],
) -> None:
    """Cancelling a request in flight closes its connection (a late answer must not be read
    as the next request's) and the next request gets the slot."""
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await read_request(reader, server.requests):
            if b"/held" in head:
                await release.wait()
            writer.write(ok())
            await writer.drain()

    server = await scripted(handler)
    async with client(server.url, connections=1) as http:
        held = asyncio.create_task(http.get("/held"))
        await async_wait_until(lambda: server.requests, "the request to reach the server")
        held.cancel()
        with pytest.raises(asyncio.CancelledError):
            await held
        release.set()
        assert (await http.get("/")).text == "ok"
    assert server.accepted == 2


async def test_pool_timeout_when_every_slot_is_busy(
    scripted: Callable[..., Awaitable[Scripted]],
) -> None:
    """A request that gets no slot within the pool timeout fails with httpx.PoolTimeout."""
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader, server.requests):
            await release.wait()
            writer.write(ok())
            await writer.drain()

    server = await scripted(handler)
    transport = PooledTransport(max_connections=1)
    timeout = httpx.Timeout(30.0, pool=0.05)
    async with httpx.AsyncClient(base_url=server.url, transport=transport, timeout=timeout) as http:
        held = asyncio.create_task(http.get("/"))
        await async_wait_until(lambda: server.requests, "the first request to hold the slot")
        with pytest.raises(httpx.PoolTimeout):
            await http.get("/")
        release.set()
        assert (await held).text == "ok"
        assert (await http.get("/")).text == "ok"


async def test_on_send_is_reported_before_the_request_is_written(
    scripted: Callable[..., Awaitable[Scripted]],
) -> None:
    """`on_send` set around a request is called once, before the server has its bytes."""
    server = await scripted(lambda r, w: None)
    server.handler = keep_alive(server)
    seen: list[int] = []
    async with client(server.url) as http:
        token = on_send.set(lambda: seen.append(len(server.requests)))
        try:
            await http.post("/", json={"a": 1})
        finally:
            on_send.reset(token)
        await http.get("/")  # no report set: none made
    assert seen == [0]


@pytest.mark.parametrize(
    "headers",
    [{"X-Evil": "a\r\nX-Injected: 1"}, {"X-Evil": "a\nb"}, {"Bad Name": "x"}],
    ids=["crlf", "lf", "space-in-name"],
)
async def test_header_that_would_split_the_request_is_refused(
    scripted: Callable[..., Awaitable[Scripted]], headers: dict[str, str]
) -> None:
    """A header name or value that could end the head early is a LocalProtocolError and
    nothing is written."""
    server = await scripted(lambda r, w: None)
    server.handler = keep_alive(server)
    async with client(server.url) as http:
        with pytest.raises(httpx.LocalProtocolError):
            await http.get("/", headers=headers)
    assert server.requests == []


async def test_streamed_request_body_is_sent_chunked(
    scripted: Callable[..., Awaitable[Scripted]],
) -> None:
    """A request body of unknown length goes with chunked framing, as httpx declared it."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        body = await reader.readuntil(b"0\r\n\r\n")
        server.requests.append(head + body)
        writer.write(ok())
        await writer.drain()

    async def parts() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"de"

    server = await scripted(handler)
    async with client(server.url) as http:
        assert (await http.post("/", content=parts())).text == "ok"
    assert b"Transfer-Encoding: chunked" in server.requests[0]
    assert server.requests[0].endswith(b"\r\n\r\n5\r\nabcde\r\n0\r\n\r\n")


async def test_tls_with_a_trusted_certificate_and_refused_without(
    scripted: Callable[..., Awaitable[Scripted]], tmp_path: Path
) -> None:
    """https: a server whose certificate is trusted is spoken to over TLS and its
    connection reused; one that is not trusted is a ConnectError before anything is sent."""
    cert_file, key_file = write_certificate(tmp_path)
    serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    serving.load_cert_chain(cert_file, key_file)
    server = await scripted(lambda r, w: None, serving)
    server.handler = keep_alive(server)
    trusting = ssl.create_default_context(cafile=str(cert_file))
    async with client(server.url, tls=trusting) as http:
        for _ in range(2):
            assert (await http.get("/")).text == "ok"
    assert server.accepted == 1
    async with client(server.url) as http:  # the system's CAs: not this one
        with pytest.raises(httpx.ConnectError):
            await http.get("/")
    assert len(server.requests) == 2


async def test_unsupported_scheme() -> None:
    """Only http and https are spoken."""
    async with httpx.AsyncClient(transport=PooledTransport()) as http:
        with pytest.raises(httpx.UnsupportedProtocol):
            await http.get("ftp://127.0.0.1/")


async def test_connections_do_not_wait_for_delayed_acks(
    scripted: Callable[..., Awaitable[Scripted]],
) -> None:
    """TCP_NODELAY is on (asyncio's default, relied on): a small write is not held back by
    Nagle's algorithm until the peer's delayed ACK (up to 40 ms on Linux)."""
    server = await scripted(lambda r, w: None)
    server.handler = keep_alive(server)
    async with client(server.url) as http:
        assert (await http.get("/")).text == "ok"
        [connection] = pool_of(http)._idle[("http", "127.0.0.1", int(server.url.rsplit(":", 1)[1]))]
        sock = connection._transport.get_extra_info("socket")  # type: ignore[union-attr]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


async def test_ssl_cert_file_names_the_trusted_authorities(
    scripted: Callable[..., Awaitable[Scripted]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`SSL_CERT_FILE` (deploy/README.md: a clinic's own CA, a TLS-inspecting firewall)
    replaces the bundled CAs: a server whose certificate it holds is trusted."""
    cert_file, key_file = write_certificate(tmp_path)
    serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    serving.load_cert_chain(cert_file, key_file)
    server = await scripted(lambda r, w: None, serving)
    server.handler = keep_alive(server)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    async with client(server.url) as http:
        assert (await http.get("/")).text == "ok"


@dataclass
class TunnellingProxy:
    """An HTTP proxy that answers CONNECT by piping to `target_port` on loopback, whatever
    host was asked for (as a proxy resolving a public name would); it keeps what it saw."""

    target_port: int
    require: bytes | None = None  # a Proxy-Authorization value it insists on
    heads: list[bytes] = field(default_factory=list)
    piped: bytearray = field(default_factory=bytearray)
    port: int = 0
    tunnels_closed: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        if self.require is not None and b"Proxy-Authorization: " + self.require not in head:
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    self.piped += data
                    sink.write(data)
                    await sink.drain()
            except ConnectionError:
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        await up_writer.wait_closed()
        self.tunnels_closed += 1


async def start_proxy(proxy: TunnellingProxy) -> asyncio.Server:
    server = await asyncio.start_server(proxy.serve, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    return server


async def test_https_through_a_proxy_is_a_tunnel_with_tls_end_to_end(
    scripted: Callable[..., Awaitable[Scripted]], tmp_path: Path
) -> None:
    """Through `HTTPS_PROXY` the client asks for `CONNECT host:443` (with its credentials),
    checks the real server's certificate for that name inside the tunnel, and reuses the
    tunnel; the proxy never sees the request in clear."""
    cert_file, key_file = write_certificate(tmp_path, "api.voxares.test")
    serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    serving.load_cert_chain(cert_file, key_file)
    server = await scripted(lambda r, w: None, serving)
    server.handler = keep_alive(server)
    proxy = TunnellingProxy(int(server.url.rsplit(":", 1)[1]), require=b"Basic aXQ6cHc=")
    listener = await start_proxy(proxy)
    routes = ProxyRoutes(https=parse_proxy_url(f"http://it:pw@127.0.0.1:{proxy.port}"))
    transport = PooledTransport(
        ssl_context=ssl.create_default_context(cafile=str(cert_file)), proxies=routes
    )
    async with httpx.AsyncClient(transport=transport) as http:
        for _ in range(2):
            reply = await http.get("https://api.voxares.test/form-submissions?x=secret")
            assert reply.text == "ok"
    await async_wait_until(lambda: proxy.tunnels_closed, "the tunnel to close")
    listener.close()
    assert len(proxy.heads) == 1  # one tunnel, reused
    assert proxy.heads[0].startswith(b"CONNECT api.voxares.test:443 HTTP/1.1\r\n")
    assert server.requests[0].startswith(b"GET /form-submissions?x=secret HTTP/1.1")
    assert b"form-submissions" not in proxy.piped
    assert b"secret" not in proxy.piped


async def test_a_refused_tunnel_is_a_connect_error(tmp_path: Path) -> None:
    """A proxy answering CONNECT with 407 (or any other refusal) is a ConnectError: the
    request provably never reached Voxares, so even an SMS send may be retried."""
    proxy = TunnellingProxy(target_port=1, require=b"Basic c29tZW9uZTplbHNl")
    listener = await start_proxy(proxy)
    routes = ProxyRoutes(https=parse_proxy_url(f"http://127.0.0.1:{proxy.port}"))
    async with httpx.AsyncClient(transport=PooledTransport(proxies=routes)) as http:
        with pytest.raises(httpx.ConnectError, match="refused the tunnel \\(407\\)"):
            await http.get("https://api.voxares.test/")
    listener.close()
    assert b"Proxy-Authorization" not in proxy.heads[0]
