"""A scripted fake of the Voxares HTTP port, for unit tests of code that uses the client.

`ScriptedTransport` is an `httpx.MockTransport` that answers each request with the next step
of a script (a response, an exception to raise, or a function of the request) and records
every request it saw. It fakes the transport, not httpx: the client runs unchanged on top.
For behaviour (patients that persist, submissions that change) use `syncd.sandbox` instead.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx

Step = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]

SERVER_DATE = "Tue, 20 May 2025 09:15:00 GMT"


def json_response(
    status: int, body: Any, *, headers: Mapping[str, str] | None = None
) -> httpx.Response:
    """A JSON answer with a `Date` header, as the API gives."""
    merged = {"Date": SERVER_DATE, **(headers or {})}
    return httpx.Response(status, json=body, headers=merged)


class _BrokenStream(httpx.AsyncByteStream):
    """A body that stops after `head`, as when the connection drops mid-body."""

    def __init__(self, head: bytes) -> None:
        self._head = head

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._head
        raise httpx.RemoteProtocolError("peer closed connection without sending complete body")


def truncated_response(status: int, body: Any) -> httpx.Response:
    """An answer whose body breaks off halfway (the connection dropped while reading it)."""
    text = json.dumps(body).encode()
    return httpx.Response(status, stream=_BrokenStream(text[: len(text) // 2]))


class ScriptedTransport(httpx.MockTransport):
    """Answers requests from a script, in order, then with `default` (if given).

    A response object answers one request only, so `default` must be an exception or a
    function that builds a fresh response.
    """

    def __init__(self, *steps: Step, default: Step | None = None) -> None:
        if isinstance(default, httpx.Response):
            raise TypeError("default must be an exception or a function of the request")
        self.requests: list[httpx.Request] = []
        self._steps: deque[Step] = deque(steps)
        self._default = default
        super().__init__(self._answer)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self._steps.popleft() if self._steps else self._default
        if step is None:
            raise AssertionError(f"no scripted answer for request #{len(self.requests)}")
        if isinstance(step, Exception):
            raise step
        if isinstance(step, httpx.Response):
            return step
        return step(request)

    @property
    def calls(self) -> int:
        """How many requests reached the transport."""
        return len(self.requests)

    def json_bodies(self) -> list[Any]:
        """The JSON bodies of the recorded requests (None for requests without a body)."""
        return [json.loads(r.content) if r.content else None for r in self.requests]
