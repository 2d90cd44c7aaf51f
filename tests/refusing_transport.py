"""The in-process sandbox over ASGI, refusing the upserts of chosen patients: how a test
makes Voxares fail one patient's push and not the others'."""

from __future__ import annotations

import json
from typing import Any

import httpx


class RefusingTransport(httpx.AsyncBaseTransport):
    """Counts `POST`s (upserts); answers `status` for a providerId in `refused`."""

    def __init__(self, app: Any, *, status: int = 500) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.status = status
        self.upserts = 0
        self.refused: set[str] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            self.upserts += 1
            if self.refused and json.loads(request.content).get("providerId") in self.refused:
                body = {"statusCode": self.status, "message": "refused by the test"}
                return httpx.Response(self.status, json=body)
        return await self.inner.handle_async_request(request)
