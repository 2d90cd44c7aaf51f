"""A webhook receiver for B7: answers every POST 200 after a fixed delay (its latency).

`python -m bench.receiver --latency-ms 20` listens on a free loopback port, prints
`listening <port>` and serves until SIGTERM; `GET /count` answers how many POSTs it took.
Plain asyncio streams, TCP_NODELAY, keep-alive: as cheap per request as a receiver gets,
so that the figure measures the daemon, not the receiver.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket

_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


class Receiver:
    """Counts the POSTs it answers."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.received = 0
        self._connections: dict[asyncio.StreamWriter, asyncio.Task[None]] = {}

    async def close_connections(self) -> None:
        """Close every open connection and wait for its handler to end.

        Python 3.11's stream server logs a traceback for every handler task it finds
        cancelled at shutdown; closed sockets end the handlers normally instead.
        """
        for writer in self._connections:
            writer.close()
        await asyncio.gather(*self._connections.values(), return_exceptions=True)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one keep-alive connection."""
        task = asyncio.current_task()
        assert task is not None
        self._connections[writer] = task
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                if head.startswith(b"GET /count"):
                    body = str(self.received).encode()
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
                    )
                    continue
                await asyncio.sleep(self.latency)
                self.received += 1
                writer.write(_OK)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._connections.pop(writer, None)
            writer.close()


async def serve(latency_ms: float) -> None:
    """Listen, print the port, serve until SIGTERM."""
    receiver = Receiver(latency_ms / 1000)
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"listening {port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()
        server.close()
        await receiver.close_connections()


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.receiver")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    asyncio.run(serve(parser.parse_args().latency_ms))


if __name__ == "__main__":
    main()
