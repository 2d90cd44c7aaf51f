"""Pure ASGI middleware of the sandbox: the `Date` header, request counting, fault injection.

Plain ASGI (not Starlette's BaseHTTPMiddleware) to keep the per-request cost low: with no
faults configured a contract request costs one dict lookup and a wrapped `send`.

A dropped connection is emulated by starting the response and then raising
`DroppedConnection`: uvicorn closes the socket mid-answer (the client reads a truncated
response: httpx raises `RemoteProtocolError`), and in-process `httpx.ASGITransport` re-raises
the same exception type, so a client sees the same error class either way.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import unquote

import httpx
from starlette.routing import BaseRoute, Match

from syncd.sandbox.errors import error_body
from syncd.sandbox.faults import FaultInjector, FaultPlan
from syncd.sandbox.state import Sandbox
from syncd.voxares.contract import API_PREFIX

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPENAPI_PATH = API_PREFIX + "/openapi.json"
_MALFORMED_BODY = b"{'data': [None,], count: }<html>"


class DroppedConnection(httpx.RemoteProtocolError):
    """The sandbox closed the connection before the answer was complete (an injected fault)."""


def _json_bytes(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """Send a complete JSON answer."""
    raw = _json_bytes(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(raw)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": raw})


class DateHeaderMiddleware:
    """Adds an RFC 7231 `Date` from the sandbox clock (offset included) to every answer.

    Also answers an unexpected exception with the contract's 500 body (then re-raises it so
    it is logged, or surfaces in an in-process test).
    """

    def __init__(self, app: ASGIApp, sandbox: Sandbox) -> None:
        self.app = app
        self.sandbox = sandbox
        self._cached: tuple[int, bytes] = (-1, b"")

    def _date(self) -> bytes:
        now: datetime = self.sandbox.now()
        second = int(now.timestamp())
        if self._cached[0] != second:
            text = email.utils.format_datetime(now.replace(microsecond=0), usegmt=True)
            self._cached = (second, text.encode("ascii"))
        return self._cached[1]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_dated(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"date"]
                headers.append((b"date", self._date()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_dated)
        except Exception:
            if not started:
                await send_json(send_dated, 500, error_body(500, "Internal server error"))
            raise


# Stands for a "/" that arrived percent-encoded inside one path segment (a private-use
# character no provider name or id carries); `app.path_param` turns it back into "/".
SLASH_IN_SEGMENT = "\ue000"


def keep_encoded_slashes(scope: Scope) -> Scope:
    """Route like Express/NestJS: match the raw path, decode each parameter afterwards.

    ASGI servers hand over `path` already decoded, so `a%2Fb` would split into two
    segments and `GET /patients/ehr/a%2Fb` would 404; the real API finds patient `a/b`.
    """
    raw: bytes | None = scope.get("raw_path")
    if scope["type"] != "http" or not raw or b"%2f" not in raw.lower():
        return scope
    segments = raw.split(b"?", 1)[0].decode("latin-1").split("/")
    path = "/".join(unquote(segment).replace("/", SLASH_IN_SEGMENT) for segment in segments)
    return {**scope, "path": path}


class ContractMiddleware:
    """Counts contract requests by route template and status, and injects faults into them.

    Only paths under the API prefix are touched (not the OpenAPI document, not `/_sandbox`).
    """

    def __init__(
        self,
        app: ASGIApp,
        sandbox: Sandbox,
        injector: FaultInjector,
        routes: Sequence[BaseRoute],
    ) -> None:
        self.app = app
        self.sandbox = sandbox
        self.injector = injector
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope = keep_encoded_slashes(scope)
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(API_PREFIX) or path == OPENAPI_PATH:
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        plan = self.injector.plan(method, path[len(API_PREFIX) :], _authorization(scope))
        if plan is None:
            await self._counted(scope, receive, send)
            return
        if plan.delay:
            await asyncio.sleep(plan.delay)
        if plan.action is None:
            await self._counted(scope, receive, send)
        elif plan.processes:
            await self._after(plan, scope, receive, send)
        else:
            await self._before(plan, scope, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        status = 0

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            self._count(scope, status)

    async def _before(self, plan: FaultPlan, scope: Scope, send: Send) -> None:
        """A fault that rejects the request before the API logic sees it."""
        if plan.action == "hang":
            await asyncio.sleep(plan.hang_seconds)
            self._count(scope, 504)
            await send_json(send, 504, error_body(504, "Gateway Timeout"))
        elif plan.action == "drop":
            self._count(scope, "dropped")
            await _start_then_drop(send, 502, [], "before processing")
        else:
            status = plan.status or 500
            self._count(scope, status)
            await send_json(send, status, error_body(status, _fault_message(status)), _extra(plan))

    async def _after(self, plan: FaultPlan, scope: Scope, receive: Receive, send: Send) -> None:
        """A fault that lets the API logic run, then spoils or loses its answer."""
        status, headers, body = await self._buffered(scope, receive)
        if plan.action == "error":
            failed = plan.status or 500
            self._count(scope, failed)
            await send_json(send, failed, error_body(failed, _fault_message(failed)), _extra(plan))
            return
        if plan.action == "drop":
            self._count(scope, "dropped")
            await _start_then_drop(send, status, headers, "after processing")
            return
        if plan.action == "hang":
            await asyncio.sleep(plan.hang_seconds)
        elif plan.action == "malformed":
            body = _MALFORMED_BODY
        elif plan.action == "truncated":
            body = body[: len(body) // 2]
        self._count(scope, status)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*_without_length(headers), (b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _buffered(
        self, scope: Scope, receive: Receive
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        status = 500
        headers: list[tuple[bytes, bytes]] = []
        parts: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        return status, headers, b"".join(parts)

    def _count(self, scope: Scope, status: int | str) -> None:
        self.sandbox.count_request(f"{scope['method']} {self._template(scope)} {status}")

    def _template(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is None:
            for candidate in self.routes:
                match, _ = candidate.matches(scope)
                if match is Match.FULL:
                    route = candidate
                    break
        path = getattr(route, "path", None)
        if not isinstance(path, str):
            return "<unmatched>"
        return path[len(API_PREFIX) :] if path.startswith(API_PREFIX) else path


def _authorization(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            return str(value.decode("latin-1"))
    return ""


def _extra(plan: FaultPlan) -> list[tuple[bytes, bytes]]:
    if plan.retry_after is None:
        return []
    return [(b"retry-after", str(plan.retry_after).encode())]


def _fault_message(status: int) -> str:
    return "Too Many Requests" if status == 429 else "Injected fault"


def _without_length(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in headers if k.lower() != b"content-length"]


async def _start_then_drop(
    send: Send, status: int, headers: Sequence[tuple[bytes, bytes]], when: str
) -> None:
    """Start an answer that promises a body, then fail so the connection is cut."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*_without_length(headers), (b"content-length", b"1024")],
        }
    )
    raise DroppedConnection(f"sandbox fault: connection dropped {when}")
