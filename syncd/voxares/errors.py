"""Translation of HTTP statuses and httpx failures into the exceptions of `syncd.exceptions`.

Pure functions: the client calls them at its boundary so that no httpx exception, request
URL, body or key leaves it. Errors name the method and the path *template*
(`/patients/{provider}/{provider_id}`), never a concrete path or query string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from syncd.exceptions import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
    VoxaresHTTPError,
    VoxaresTransportError,
)
from syncd.voxares.models import ApiErrorBody

# The API's own message is kept (it explains a 400 or a 403) but cut short.
API_MESSAGE_MAX = 300
# NestJS answers an unknown route with "Cannot GET /the/concrete/path": drop the path.
_UNKNOWN_ROUTE = re.compile(r"(Cannot [A-Z]+) /.*")
# What a value the request sent becomes when the API's message quotes it.
ECHO_REDACTED = "<redacted>"

_BY_STATUS: dict[int, type[VoxaresHTTPError]] = {
    400: Invalid,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: Invalid,
}

# httpx failures after which the request provably never reached the server.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def api_message_of(body: Any, sent: Iterable[object] = ()) -> str | None:
    """The `message` of an error body (string or list of strings), shortened; else None.

    Every value of `sent` (the request's path segments, body and query values) and the path
    of a NestJS "Cannot GET /path" are cut out of it first: an API may quote the value it
    refused ("mobileNumber +385... is invalid"), and that is patient data, which must not
    reach an exception's text, a log or the database.
    """
    if not isinstance(body, dict):
        return None
    try:
        text = ApiErrorBody.model_validate(body).text
    except ValidationError:
        return None
    if text is None:
        return None
    text = _UNKNOWN_ROUTE.sub(r"\1 <path>", text)
    text = scrub_echoes(text, sent)
    return text if len(text) <= API_MESSAGE_MAX else text[: API_MESSAGE_MAX - 1] + "…"


def scrub_echoes(text: str, sent: Iterable[object]) -> str:
    """`text` with each value of `sent` longer than two characters replaced, longest first
    (shorter values would hit ordinary words and identify no one), as sent and as it
    appears percent-encoded in a path."""
    values = {str(v) for v in sent if v is not None and not isinstance(v, bool)}
    for value in sorted((v for v in values if len(v) > 2), key=len, reverse=True):
        text = text.replace(value, ECHO_REDACTED).replace(quote(value, safe=""), ECHO_REDACTED)
    return text


def error_for_status(
    status: int,
    *,
    method: str,
    path: str,
    api_message: str | None = None,
    retry_after: float | None = None,
) -> VoxaresHTTPError:
    """The exception for an error status (anything not 2xx)."""
    where: dict[str, Any] = {
        "method": method,
        "path": path,
        "status": status,
        "api_message": api_message,
    }
    if status == 429:
        return RateLimited(retry_after=retry_after, **where)
    if 500 <= status <= 599:
        return ServerError(retry_after=retry_after, **where)
    kind = _BY_STATUS.get(status)
    if kind is not None:
        return kind(**where)
    return VoxaresHTTPError(f"The API answered an unexpected status {status}.", **where)


def reached_server(failure: BaseException) -> bool:
    """Whether the request may have reached the server before `failure`.

    Only a refused or timed-out connect and a pool timeout prove it did not; a read timeout,
    a write timeout (bytes may have left), a dropped connection or anything unknown may
    have delivered the request.
    """
    return not isinstance(failure, _NOT_SENT)


def transport_error(failure: BaseException, *, method: str, path: str) -> VoxaresTransportError:
    """The exception for a request that got no (complete) answer.

    Names the failure's class only: httpx messages can carry the URL, which can carry
    patient ids or search terms.
    """
    return VoxaresTransportError(
        f"The request did not complete ({type(failure).__name__}).",
        reached_server=reached_server(failure),
        method=method,
        path=path,
    )


def validation_summary(error: ValidationError, *, limit: int = 5) -> str:
    """Where a body failed validation, as `loc (type)` pairs: never the offending values."""
    parts = []
    for item in error.errors(include_input=False, include_url=False)[:limit]:
        loc = ".".join(str(part) for part in item["loc"]) or "<body>"
        parts.append(f"{loc} ({item['type']})")
    more = error.error_count() - limit
    if more > 0:
        parts.append(f"and {more} more")
    return ", ".join(parts)
