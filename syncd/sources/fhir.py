"""Patients from a FHIR R4 server's `Patient` search, incrementally by `_lastUpdated`.

A read is `GET [base]/Patient?_count=N` (a full read) or, once a cursor is saved,
`GET [base]/Patient?_lastUpdated=geT&_count=N` (an incremental read, see `fhir_cursor` for
the window and when a full read happens), then every `next` link as the server gives it
(only on the base URL's own origin: the credentials go nowhere else). Each `Patient` is
mapped by `fhir_mapping` (validated with `fhir.resources`). Pages are fetched one at a time
as the push job asks for rows, so memory holds one page.

Guarantees, as for the CSV source: a resource that cannot be used becomes a quarantined row
(row, element, reason, never a value); rows are hash-diffed by the push job; the cursor is
saved by `SourceRead.on_pushed`, i.e. only after every row the read gave was pushed or
recorded, so a crash or a failed push re-reads rather than skips. Only a full read that
reached its last page is `complete`. A read that ends (no `next` link) with fewer resources
than the first page's `Bundle.total` is neither complete nor moves the cursor
(`fhir.read_short`): some servers do not page at all.

Errors become `SourceError`: the HTTP status with the server's `OperationOutcome` in one
line, a transport error's class, a page that is not a Bundle. A 5xx, 429 or connection error
is tried three times (stamina) before it fails the read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import httpx
import stamina
import structlog

from syncd.exceptions import SourceError
from syncd.http_dates import parse_http_date
from syncd.sources.base import SourceRead, SourceRow
from syncd.sources.fhir_bundle import (
    NotABundle,
    outcome_summary,
    parse_page,
    same_origin,
)
from syncd.sources.fhir_cursor import (
    Cursor,
    CursorStore,
    ReadPlan,
    format_instant,
    next_cursor,
    plan_read,
)
from syncd.sources.fhir_mapping import Validator, map_patient, patient_validator

log = structlog.get_logger(__name__)

FHIR_JSON: Final = "application/fhir+json"
_RETRIED_STATUSES: Final = frozenset({429, 500, 502, 503, 504})


class _Transient(Exception):
    """Internal: a status or transport error worth trying again (carries the final error)."""

    def __init__(self, error: SourceError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(slots=True)
class ReadStats:
    """What one read did (logged as `fhir.read_finished`; ids and counts only)."""

    pages: int = 0
    patients: int = 0
    problems: int = 0
    partial_birth_dates: int = 0
    warnings: int = 0


class FhirPatientSource:
    """A `Source` reading `Patient` resources from a FHIR R4 server (module docstring).

    `http` is the client to use (tests hand a `starlette.testclient.TestClient` or a client
    with a mock transport); by default one is made per read with `auth` and `timeout`.
    `cursors` keeps the `_lastUpdated` position; without it every read is a full read.
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        identifier_system: str,
        auth: httpx.Auth | None = None,
        page_size: int = 100,
        overlap: timedelta = timedelta(minutes=5),
        full_read_every: timedelta | None = timedelta(days=1),
        cursors: CursorStore | None = None,
        http: httpx.Client | None = None,
        timeout: float = 30.0,
        attempts: int = 3,
        validate: bool = True,
    ) -> None:
        self._name = name
        self._base_url = base_url.rstrip("/")
        self._system = identifier_system
        self._auth = auth
        self._page_size = page_size
        self._overlap = overlap
        self._full_read_every = full_read_every
        self._cursors = cursors
        self._http = http
        self._timeout = timeout
        self._attempts = attempts
        self._validate = validate
        self.last_stats: ReadStats | None = None

    @property
    def name(self) -> str:
        """The source's configured name."""
        return self._name

    @property
    def base_url(self) -> str:
        """The FHIR server's base URL (no trailing slash)."""
        return self._base_url

    def __repr__(self) -> str:
        return f"FhirPatientSource(name={self._name!r}, base_url={self._base_url!r})"

    def rows(self) -> SourceRead:
        """Start a read (full or incremental, see `fhir_cursor`); `SourceError` when
        iterated if the server cannot be read."""
        cursor = self._cursors.load() if self._cursors is not None else None
        plan = plan_read(cursor, overlap=self._overlap, full_read_every=self._full_read_every)
        read = SourceRead()
        read.incremental = not plan.full
        return read.of(self._rows(read, plan, cursor))

    def client(self) -> httpx.Client:
        """A client for this server (the injected one, or a new one the caller closes)."""
        if self._http is not None:
            return self._http
        return httpx.Client(auth=self._auth, timeout=self._timeout, follow_redirects=False)

    def _rows(self, read: SourceRead, plan: ReadPlan, cursor: Cursor | None) -> Iterator[SourceRow]:
        validator = patient_validator() if self._validate else None
        stats = ReadStats()
        self.last_stats = stats
        first: dict[str, str] = {"_count": str(self._page_size)}
        if plan.since is not None:
            first["_lastUpdated"] = f"ge{format_instant(plan.since)}"
        params: dict[str, str] | None = first
        url: str | None = f"{self._base_url}/Patient"
        began: datetime | None = None
        total: int | None = None
        client = self.client()
        try:
            while url is not None:
                response = self.get(client, url, params)
                # A next link is followed as given: httpx would replace its query with even
                # an empty `params`.
                params = None
                try:
                    page = parse_page(_json(response))
                except NotABundle as exc:
                    raise SourceError(
                        f"source {self._name}: the FHIR server answered {response.status_code} "
                        f"with {exc}"
                    ) from None
                if page.error is not None:
                    raise SourceError(f"source {self._name}: the FHIR search failed: {page.error}")
                stats.pages += 1
                stats.warnings += page.warnings
                if stats.pages == 1:
                    began = page.server_time or parse_http_date(response.headers.get("date"))
                    total = page.total
                for resource in page.resources:
                    stats.patients += 1
                    yield self._row(resource, stats, validator)
                url = page.next_url
                if url is not None and not same_origin(url, self._base_url):
                    raise SourceError(
                        f"source {self._name}: the FHIR server's next link points to another "
                        "server than base_url (a proxy rewriting the base URL?); not followed"
                    )
        finally:
            if client is not self._http:
                client.close()
        if total is not None and stats.patients < total:
            # Fewer resources than the first page's `total`, and no next link left: a
            # server that does not page (or lost a page). Nothing may be concluded from
            # this read: it is not complete and the cursor stays where it was.
            log.warning("fhir.read_short", source=self._name, read=stats.patients, total=total)
            return
        if began is None:
            log.warning("fhir.no_server_clock", source=self._name)
        if plan.full:
            read.complete = True
        new = next_cursor(cursor, plan, began)
        if self._cursors is not None and new is not None and new != cursor:
            store = self._cursors
            read.on_pushed = lambda: store.save(new)
        log.info(
            "fhir.read_finished",
            source=self._name,
            full=plan.full,
            pages=stats.pages,
            patients=stats.patients,
            problems=stats.problems,
            partial_birth_dates=stats.partial_birth_dates,
            outcome_warnings=stats.warnings,
        )

    def _row(
        self, resource: Mapping[str, Any], stats: ReadStats, validator: Validator | None
    ) -> SourceRow:
        resource_id = resource.get("id")
        origin = f"Patient/{resource_id}" if isinstance(resource_id, str) else None
        mapped = map_patient(
            resource,
            identifier_system=self._system,
            line=stats.patients,
            origin=origin,
            invalid=validator,
        )
        stats.problems += mapped.row.problem is not None
        stats.partial_birth_dates += mapped.partial_birth_date
        return mapped.row

    def get(
        self, client: httpx.Client, url: str, params: Mapping[str, str] | None = None
    ) -> httpx.Response:
        """GET one FHIR URL; 5xx/429/transport errors tried `attempts` times; any other
        non-2xx is a `SourceError` with the server's OperationOutcome."""
        try:
            for attempt in stamina.retry_context(
                on=_Transient, attempts=self._attempts, timeout=None, wait_max=10.0
            ):
                with attempt:
                    return self._get_once(client, url, params)
        except _Transient as exc:
            raise exc.error from None
        raise AssertionError("unreachable: stamina re-raises the last failure")

    def _get_once(
        self, client: httpx.Client, url: str, params: Mapping[str, str] | None
    ) -> httpx.Response:
        try:
            response = client.get(url, params=params, headers={"Accept": FHIR_JSON})
        except httpx.TransportError as exc:
            raise _Transient(
                SourceError(
                    f"source {self._name}: cannot reach the FHIR server ({type(exc).__name__})"
                )
            ) from None
        if response.is_success:
            return response
        error = SourceError(self._status_problem(response))
        if response.status_code in _RETRIED_STATUSES:
            raise _Transient(error)
        raise error

    def _status_problem(self, response: httpx.Response) -> str:
        status = response.status_code
        text = f"source {self._name}: the FHIR server answered {status}"
        outcome = outcome_summary(_json_or_none(response))
        if outcome is not None:
            text += f": {outcome}"
        if status in (401, 403):
            text += " (check patients.source.auth: the credentials were refused)"
        return text


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise NotABundle("a body that is not JSON") from None


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
