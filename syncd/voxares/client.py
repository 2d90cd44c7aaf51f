"""The async client of the Voxares integration API: the only code that talks HTTP to Voxares.

Every call goes through one pipeline: limiter slot (concurrency, then rate) → one HTTP
attempt → status/transport translation → retry decision (`retry.py`, waited here).
What leaves the client is a parsed model or an exception from `syncd.exceptions`; httpx
exceptions do not escape, and errors name the path *template*, never ids or search terms.

SMS sends are the exception to retrying: `POST /messages/send` has no idempotency key, so
once the request may have reached the server (read or write timeout, dropped connection,
5xx, malformed or truncated 2xx) the client raises `SendOutcomeUnknown` after that single
attempt. It retries a send only when the request provably did not get through: a refused
or timed-out connect, a pool timeout, or 429.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar

import httpx
import structlog
from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.alias_generators import to_camel

from syncd import metrics
from syncd.exceptions import (
    ConfigError,
    RateLimited,
    SendOutcomeUnknown,
    ServerError,
    VoxaresError,
    VoxaresMalformedResponse,
)
from syncd.http_dates import parse_http_date
from syncd.http_transport import on_send, pooled_transport
from syncd.voxares import contract
from syncd.voxares.errors import (
    api_message_of,
    error_for_status,
    reached_server,
    transport_error,
    validation_summary,
)
from syncd.voxares.limits import ClientLimits, Limiter, limiter_for
from syncd.voxares.models import (
    Document,
    Form,
    Message,
    Page,
    Patient,
    PatientUpsert,
    PracticeTemplate,
    SendMessage,
    SubmissionDetail,
    SubmissionFilters,
    SubmissionSummary,
    UpsertResult,
)
from syncd.voxares.replies import NOT_JSON, Reply, ResponseCookies, json_or_none
from syncd.voxares.retry import RetryPolicy, next_delay, parse_retry_after
from syncd.voxares.urls import check_base_url, render_path

log = structlog.get_logger(__name__)

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T", bound=BaseModel)

USER_AGENT = "voxares-syncd"
# An API key travels in a header: printable ASCII without spaces.
_KEY_SHAPE = re.compile(r"[\x21-\x7e]+")
_PAGING = frozenset({"page", "pageSize"})
# Wire names of patient fields, so that `patch_patient` callers may use snake_case.
_PATIENT_WIRE_NAMES = frozenset(contract.PATIENT_FIELDS)


@dataclass(frozen=True)
class Timeouts:
    """Seconds allowed for each phase of one attempt.

    connect/read/write/pool are httpx's (read and write per network operation); `attempt`
    caps one whole attempt, which also holds for in-process transports that ignore the others.
    """

    connect: float = 5.0
    read: float = 30.0
    write: float = 30.0
    pool: float = 10.0
    attempt: float = 90.0

    def to_httpx(self) -> httpx.Timeout:
        """The httpx form of these timeouts."""
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.write, pool=self.pool)


class AttemptDeadlineExceeded(Exception):
    """The whole-attempt deadline passed (stands in for an httpx timeout)."""


def _check_page(page: int, page_size: int) -> None:
    if page < 0:
        raise ValueError("page must be >= 0")
    if not 1 <= page_size <= contract.MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be between 1 and {contract.MAX_PAGE_SIZE}")


class VoxaresClient:
    """The Voxares integration API, one method per endpoint.

    Build one per API key and share it (the daemon's compose step does); clients built with
    the same key in one event loop share one limiter anyway (see `limits.py`). Use it as an
    async context manager or call `aclose()`.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: SecretStr | str,
        transport: httpx.AsyncBaseTransport | None = None,
        limits: ClientLimits | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        limiter: Limiter | None = None,
    ) -> None:
        check_base_url(base_url, transport_injected=transport is not None)
        key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        if not _KEY_SHAPE.fullmatch(key.get_secret_value()):
            raise ConfigError(["voxares.api_key is empty or holds characters a header cannot"])
        self._api_key = key
        self._base_url = base_url
        self._limits = limits or ClientLimits()
        self._timeouts = timeouts or Timeouts()
        self._retry = retry or RetryPolicy()
        self._limiter = limiter
        # Our own transport reports when each request is written; the limiter charges the
        # rate then (an injected transport may not, and is charged at release).
        self._send_reported = transport is None
        self._server_date: datetime | None = None
        pool = httpx.Limits(
            max_connections=self._limits.max_concurrency,
            max_keepalive_connections=self._limits.max_concurrency,
        )
        self._http = httpx.AsyncClient(
            base_url=base_url,
            # Ours unless one is injected: asyncio connections parsed by llhttp, one request
            # per connection at a time (syncd.http_transport).
            transport=transport or pooled_transport(pool),
            timeout=self._timeouts.to_httpx(),
            limits=pool,
            headers={"Accept": "application/json", "User-Agent": USER_AGENT},
            follow_redirects=False,
        )
        # httpx reads every response for cookies through urllib's cookie machinery (a
        # urllib Request per response, its URL parsed again: ~4 % of a call's CPU) whether
        # or not it sets any; this jar skips the responses that set none.
        # (The public `cookies` setter would copy it back into a plain `httpx.Cookies`.)
        self._http._cookies = ResponseCookies(self._http.cookies.jar)
        # What `AsyncClient.request` would merge into every request, merged once here: the
        # client's headers with the key's, the base URL's prefix, the timeouts. Building the
        # request from these and handing it to `send` skips httpx's per-request parsing of
        # the base URL and merging of headers and params (~12 % of a call's CPU),
        # for the same request (`tests/unit/test_client_requests.py` compares them).
        self._request_headers = httpx.Headers(self._http.headers)
        self._request_headers["Authorization"] = f"Bearer {key.get_secret_value()}"
        base = self._http.base_url  # httpx's: the path ends in "/"; no query (checked above)
        self._url_prefix = f"{base.scheme}://{base.netloc.decode()}{base.raw_path.decode()}"
        self._timeout_extension = self._http.timeout.as_dict()

    @property
    def max_concurrency(self) -> int:
        """How many calls this client runs at once (its key's limiter may allow fewer)."""
        return self._limits.max_concurrency

    def __repr__(self) -> str:
        return f"VoxaresClient(base_url={self._base_url!r}, api_key='**********')"

    async def __aenter__(self) -> VoxaresClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    def server_time(self) -> datetime | None:
        """The server's clock as of the last response (its `Date` header), if any."""
        return self._server_date

    # Patients

    async def upsert_patient(self, patient: PatientUpsert) -> UpsertResult:
        """Create the patient, or update the one with the same (provider, providerId)."""
        reply = await self._call("POST", contract.PATIENTS, body=patient.to_body())
        stored = self._parse(Patient, reply, "POST", contract.PATIENTS)
        return UpsertResult(patient=stored, created=reply.status == contract.PATIENT_CREATED_STATUS)

    async def list_patients(
        self,
        *,
        search_term: str | None = None,
        page: int = 0,
        page_size: int = contract.DEFAULT_PAGE_SIZE,
    ) -> Page[Patient]:
        """One page of patients, optionally matching a full-text search term."""
        extra = {"searchTerm": search_term} if search_term is not None else {}
        return await self._list(Patient, contract.PATIENTS, page, page_size, extra)

    async def get_patient(self, provider: str, provider_id: str) -> Patient:
        """The patient with this external id; `NotFound` if there is none."""
        template = contract.PATIENT_BY_EXTERNAL_ID
        segments = {"provider": provider, "provider_id": provider_id}
        reply = await self._call("GET", template, segments=segments)
        return self._parse(Patient, reply, "GET", template)

    async def patch_patient(
        self, provider: str, provider_id: str, changes: Mapping[str, Any]
    ) -> Patient:
        """Change only the given fields (snake_case or camelCase names) of one patient."""
        template = contract.PATIENT_BY_EXTERNAL_ID
        segments = {"provider": provider, "provider_id": provider_id}
        body = {_wire_name(name): value for name, value in changes.items()}
        reply = await self._call("PATCH", template, segments=segments, body=body)
        return self._parse(Patient, reply, "PATCH", template)

    # Messages

    async def send_message(self, message: SendMessage) -> Message:
        """Send one SMS. Never retried once it may have reached Voxares: then it raises
        `SendOutcomeUnknown`, and only a human or a status check may decide what happened.
        """
        template = contract.MESSAGES_SEND
        reply = await self._call("POST", template, body=message.to_body(), send=True)
        try:
            return Message.model_validate(reply.body)
        except ValidationError as exc:
            raise self._send_unknown(
                f"The send was answered {reply.status} with a body that does not match the "
                f"contract ({validation_summary(exc)}).",
                status=reply.status,
            ) from None

    async def get_message(self, message_id: str) -> Message:
        """One sent message and its delivery status."""
        template = contract.MESSAGE_BY_ID
        reply = await self._call("GET", template, segments={"message_id": message_id})
        return self._parse(Message, reply, "GET", template)

    # Content

    async def list_practice_templates(
        self, *, page: int = 0, page_size: int = contract.DEFAULT_PAGE_SIZE
    ) -> Page[PracticeTemplate]:
        """One page of practice templates."""
        return await self._list(PracticeTemplate, contract.PRACTICE_TEMPLATES, page, page_size)

    async def list_forms(
        self, *, page: int = 0, page_size: int = contract.DEFAULT_PAGE_SIZE
    ) -> Page[Form]:
        """One page of forms."""
        return await self._list(Form, contract.FORMS, page, page_size)

    async def list_documents(
        self, *, page: int = 0, page_size: int = contract.DEFAULT_PAGE_SIZE
    ) -> Page[Document]:
        """One page of documents."""
        return await self._list(Document, contract.DOCUMENTS, page, page_size)

    # Form submissions

    async def list_form_submissions(
        self,
        filters: SubmissionFilters | None = None,
        *,
        page: int = 0,
        page_size: int = contract.MAX_PAGE_SIZE,
    ) -> Page[SubmissionSummary]:
        """One page of form submissions (without answers) matching the filters."""
        extra = filters.to_params() if filters is not None else {}
        return await self._list(
            SubmissionSummary, contract.FORM_SUBMISSIONS, page, page_size, extra
        )

    async def get_form_submission(self, submission_id: str) -> SubmissionDetail:
        """One form submission with the patient's answers."""
        template = contract.FORM_SUBMISSION_BY_ID
        reply = await self._call("GET", template, segments={"submission_id": submission_id})
        return self._parse(SubmissionDetail, reply, "GET", template)

    # Pagination

    async def iter_pages(
        self, method: Callable[..., Awaitable[Page[T]]], /, **kwargs: Any
    ) -> AsyncIterator[Page[T]]:
        """Walk a list method page by page from page 0 until `count` items were seen.

        `method` is one of this client's list methods; `kwargs` are its other arguments
        (`page_size` defaults to the maximum). Stops early on an empty page, so a shrinking
        list cannot loop forever. Offset pages shift when items change meanwhile: callers
        that need completeness (the poller) must allow for that.
        """
        kwargs.setdefault("page_size", contract.MAX_PAGE_SIZE)
        page_number = 0
        seen = 0
        while True:
            page = await method(page=page_number, **kwargs)
            yield page
            seen += len(page.data)
            if not page.data or seen >= page.count:
                return
            page_number += 1

    # The pipeline

    async def _list(
        self,
        item: type[T],
        template: str,
        page: int,
        page_size: int,
        extra: Mapping[str, str] | None = None,
    ) -> Page[T]:
        _check_page(page, page_size)
        params = {"page": str(page), "pageSize": str(page_size), **(extra or {})}
        reply = await self._call("GET", template, params=params)
        result = self._parse(Page[item], reply, "GET", template)  # type: ignore[valid-type]
        result.server_date = reply.server_date
        return result

    def _parse(self, model: type[M], reply: Reply, method: str, template: str) -> M:
        try:
            return model.model_validate(reply.body)
        except ValidationError as exc:
            raise VoxaresMalformedResponse(
                f"The body does not match the contract ({validation_summary(exc)}).",
                method=method,
                path=template,
                status=reply.status,
            ) from None

    async def _call(
        self,
        method: str,
        template: str,
        *,
        segments: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        send: bool = False,
    ) -> Reply:
        """One API call with its retries. `template` names the call in errors, logs, metrics."""
        path = render_path(template, **segments) if segments else template
        # What this call sent that an error message could echo back (ids, names, search).
        sent_values = [
            *(segments or {}).values(),
            *(value for name, value in (params or {}).items() if name not in _PAGING),
            *(body or {}).values(),
        ]
        started = time.monotonic()
        # A plain loop, not stamina: `next_delay` already makes every decision (which errors,
        # how long, Retry-After, the attempt and time budgets), and a stamina retry context
        # per call cost ~10 % of the CPU of a call and ~25 objects in reference cycles, which
        # piled up as second-generation garbage and stalled the event loop in 100-200 ms
        # collections (BENCHMARKS.md, B2).
        failures = 0
        while True:
            try:
                return await self._attempt(
                    method, template, path, params, body, send, failures + 1, sent_values
                )
            except Exception as error:
                failures += 1
                delay = next_delay(
                    error,
                    policy=self._retry,
                    retry_number=failures,
                    elapsed=time.monotonic() - started,
                )
                if delay is None:
                    raise
                self._retry_scheduled(method, template, failures, delay, error)
            if self._retry.wait:
                await asyncio.sleep(delay)

    def _retry_scheduled(
        self, method: str, template: str, failures: int, delay: float, error: Exception
    ) -> None:
        metrics.API_RETRIES.labels(template).inc()
        log.info(
            "voxares.retry_scheduled",
            method=method,
            endpoint=template,
            attempt=failures,
            delay_s=round(delay, 3),
            caused_by=type(error).__name__,
            status=getattr(error, "status", None),
        )

    async def _attempt(
        self,
        method: str,
        template: str,
        path: str,
        params: Mapping[str, str] | None,
        body: Mapping[str, Any] | None,
        send: bool,
        number: int,
        sent_values: Sequence[object],
    ) -> Reply:
        if self._limiter is None:
            self._limiter = limiter_for(self._api_key.get_secret_value(), self._limits)
        async with self._limiter.slot(send_reported=self._send_reported) as release:
            started = time.monotonic()
            reporting = on_send.set(release.sent if release is not None else None)
            try:
                async with asyncio.timeout(self._timeouts.attempt):
                    response = await self._http.send(self._request(method, path, params, body))
            except TimeoutError:
                failure: BaseException = AttemptDeadlineExceeded()
            except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
                failure = exc
            except Exception as exc:
                if not send:
                    raise
                failure = exc  # an unknown fault mid-send leaves the outcome unknown too
            else:
                return self._reply(response, method, template, send, number, started, sent_values)
            finally:
                on_send.reset(reporting)
        elapsed_ms = round((time.monotonic() - started) * 1000)
        metrics.API_CALLS.labels(method, template, "0").inc()
        log.debug(
            "voxares.request",
            method=method,
            endpoint=template,
            status=0,
            error=type(failure).__name__,
            elapsed_ms=elapsed_ms,
            attempt=number,
        )
        if send and reached_server(failure):
            raise self._send_unknown(
                f"The send got no complete answer ({type(failure).__name__})."
            ) from None
        raise transport_error(failure, method=method, path=template) from None

    def _request(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        body: Mapping[str, Any] | None,
    ) -> httpx.Request:
        """The request `AsyncClient.build_request` would build for this call, built cheaper.

        `path` is relative to the base URL (httpx appends it to the base URL's path, which
        ends in "/"); the headers and timeouts are the client's, merged once; the cookies are
        the client's jar as it is now.
        """
        return httpx.Request(
            method,
            self._url_prefix + path.lstrip("/"),
            params=params or None,
            json=body,
            headers=self._request_headers,
            # Cookies a response set go back as httpx would send them (none from Voxares
            # today; an empty jar costs one check).
            cookies=self._http.cookies,
            extensions={"timeout": self._timeout_extension},
        )

    def _reply(
        self,
        response: httpx.Response,
        method: str,
        template: str,
        send: bool,
        number: int,
        started: float,
        sent_values: Sequence[object],
    ) -> Reply:
        status = response.status_code
        metrics.API_CALLS.labels(method, template, str(status)).inc()
        log.debug(
            "voxares.request",
            method=method,
            endpoint=template,
            status=status,
            elapsed_ms=round((time.monotonic() - started) * 1000),
            attempt=number,
        )
        server_date = parse_http_date(response.headers.get("Date"))
        if server_date is not None:
            self._server_date = server_date
        body = json_or_none(response)
        if status >= 300:
            retry_after = parse_retry_after(
                response.headers.get("Retry-After"), now=server_date or datetime.now(UTC)
            )
            error = error_for_status(
                status,
                method=method,
                path=template,
                api_message=api_message_of(
                    body, sent_values, secrets=[self._api_key.get_secret_value()]
                ),
                retry_after=retry_after,
            )
            if isinstance(error, RateLimited) and self._limiter is not None:
                self._limiter.rate_limited(retry_after)
            if send and isinstance(error, ServerError):
                raise self._send_unknown(
                    "The send was answered with a server error.", status=status
                ) from None
            raise error
        if body is NOT_JSON:
            if send:
                raise self._send_unknown(
                    f"The send was answered {status} with a body that is not JSON.", status=status
                )
            raise VoxaresMalformedResponse(
                "The body is not JSON.", method=method, path=template, status=status
            )
        return Reply(status=status, body=body, server_date=server_date)

    def _send_unknown(self, detail: str, *, status: int | None = None) -> VoxaresError:
        log.error("voxares.send_outcome_unknown", endpoint=contract.MESSAGES_SEND, status=status)
        return SendOutcomeUnknown(
            f"{detail} The SMS may or may not have been sent; it is not retried.",
            method="POST",
            path=contract.MESSAGES_SEND,
            status=status,
        )


def _wire_name(name: str) -> str:
    """A patient field's wire name; unknown names pass through for the API to judge."""
    camel = to_camel(name)
    return camel if camel in _PATIENT_WIRE_NAMES else name
