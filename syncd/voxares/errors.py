"""Translation of HTTP statuses and httpx failures into the exceptions of `syncd.exceptions`.

Pure functions: the client calls them at its boundary so that no httpx exception, request
URL, body or key leaves it. Errors name the method and the path *template*
(`/patients/{provider}/{provider_id}`), never a concrete path or query string.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

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
from syncd.logging import mask_text
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


def api_message_of(
    body: Any, sent: Iterable[object] = (), secrets: Iterable[str] = ()
) -> str | None:
    """The `message` of an error body (string or list of strings), shortened; else None.

    Every value of `sent` (the request's path segments, body and query values, nested ones
    included), every one of `secrets` (the API key), and the path of a NestJS
    "Cannot GET /path" are cut out of it first, in every spelling `echo_forms` knows: an
    API may quote the value it refused ("firstName \"CANARY\\u017dFN\" is invalid") or the
    token it rejected, and that must not reach an exception's text, a log, the database or
    the CLI's `error:` line. What is left still goes through the log redactor's patterns
    (phone numbers, emails, keys, bearer tokens) for what was echoed in another shape.
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
    text = scrub_echoes(text, [*sent, *_with_parts(secrets)])
    text = mask_text(text)
    return text if len(text) <= API_MESSAGE_MAX else text[: API_MESSAGE_MAX - 1] + "…"


def scrub_echoes(text: str, sent: Iterable[object]) -> str:
    """`text` with each value of `sent` longer than two characters replaced, in any of its
    `echo_forms`, case-insensitively, longest first (shorter values would hit ordinary
    words and identify no one). Mappings and sequences in `sent` are walked to their leaves.
    """
    forms: set[str] = set()
    for value in _leaves(sent):
        if len(value) > 2:
            forms |= echo_forms(value)
    if not forms:
        return text
    pattern = "|".join(re.escape(form) for form in sorted(forms, key=len, reverse=True))
    return re.sub(pattern, ECHO_REDACTED, text, flags=re.IGNORECASE)


def echo_forms(value: str) -> set[str]:
    """The spellings in which an error message may quote `value`: as sent, in either Unicode
    normal form, JSON-escaped (`\\u017d` as well as raw non-ASCII), and percent-encoded as a
    path segment, a path or a form value."""
    forms: set[str] = set()
    for text in {value, unicodedata.normalize("NFC", value), unicodedata.normalize("NFD", value)}:
        forms.add(text)
        forms.add(json.dumps(text)[1:-1])
        forms.add(json.dumps(text, ensure_ascii=False)[1:-1])
        forms.add(quote(text, safe=""))
        forms.add(quote(text))
        forms.add(quote_plus(text))
    return {form for form in forms if len(form) > 2}


def _with_parts(secrets: Iterable[str]) -> list[str]:
    """Each secret, and each of its `-`/`_`/`.`-separated parts of eight characters or more
    (a key's secret part is echoed alone as often as the whole key)."""
    found: list[str] = []
    for secret in secrets:
        found.append(secret)
        found += [part for part in re.split(r"[-_.]", secret) if len(part) >= 8]
    return found


def _leaves(values: Iterable[object]) -> Iterator[str]:
    """Every scalar in `values`, as text, walking into mappings and sequences."""
    for value in values:
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, Mapping):
            yield from _leaves(value.values())
        elif isinstance(value, list | tuple | set | frozenset):
            yield from _leaves(value)
        else:
            yield str(value)


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
