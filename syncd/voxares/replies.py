"""What the Voxares client reads from a response: its JSON body, and the cookies it sets.

Pure functions and small types: the client's pipeline (`client.py`) decides what an
answer means; this module only reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx


@dataclass(frozen=True)
class Reply:
    """One HTTP answer, parsed: status, JSON body, the server's `Date`."""

    status: int
    body: Any
    server_date: datetime | None


class ResponseCookies(httpx.Cookies):
    """httpx's cookie jar, which reads a response's cookies only when it sets some.

    `CookieJar.extract_cookies` takes cookies from `Set-Cookie` and `Set-Cookie2` headers
    only, so a response without either leaves the jar as it was: skipping it changes
    nothing but the cost.
    """

    def extract_cookies(self, response: httpx.Response) -> None:
        """Keep the cookies `response` sets, as httpx does, if it sets any."""
        headers = response.headers
        if "set-cookie" in headers or "set-cookie2" in headers:
            super().extract_cookies(response)


# What `json_or_none` answers for a body that is not JSON (None is an empty body).
NOT_JSON: Any = object()


def json_or_none(response: httpx.Response) -> Any:
    """The response's JSON, None for an empty body, `NOT_JSON` when it does not parse."""
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both
        return NOT_JSON
