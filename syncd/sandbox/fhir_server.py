"""A small FHIR R4 server for tests, the docs and the benchmarks: `Patient` search only.

It does what a FHIR source relies on, the way real servers (HAPI, Firely) do it:

* `GET /fhir/metadata`: a `CapabilityStatement` listing `Patient` with its `search-type`
  interaction and the `_lastUpdated` parameter (or not, `lists_patient_search=False`);
* `GET /fhir/Patient?_lastUpdated=geT&_count=N`: a `searchset` Bundle with
  `meta.lastUpdated` (the server's clock, which may be set apart from ours), sorted by
  `_lastUpdated` then id, paged by an opaque `next` link over a snapshot taken when the search
  ran (so paging is stable while resources change, as HAPI's cached searches are);
  `_lastUpdated` prefixes `ge`, `gt`, `le`, `lt`, `eq` (repeatable); stored instants keep
  microseconds while the resources show milliseconds;
* errors as `OperationOutcome`: a bad parameter is 400, a missing or wrong credential 401,
  and `fail_next` queues statuses for the next requests (fault injection);
* auth: none, basic, a bearer token, or SMART Backend Services: `POST /auth/token` verifies
  the client's JWT assertion with PyJWT against the registered public key (signature,
  `iss` = `sub` = client id, `aud` = the token URL, `exp` at most 5 minutes away, a `jti`
  never seen before) and hands out access tokens that expire.

Resources are handed in (`put`) as JSON objects; `put` stamps `meta.lastUpdated` with the
server's clock. Nothing here is patient data of anyone: the tests' resources are modelled on
HL7's published examples.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal
from urllib.parse import parse_qs, unquote, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

FHIR_PREFIX: Final = "/fhir"
TOKEN_PATH: Final = "/auth/token"  # noqa: S105 - a path, not a secret
AuthMode = Literal["none", "basic", "bearer", "smart"]
_FHIR_JSON: Final = "application/fhir+json"


def fhir_instant(moment: datetime) -> str:
    """An instant as FHIR shows it here: UTC, milliseconds."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def outcome(code: str, diagnostics: str, severity: str = "error") -> dict[str, Any]:
    """An OperationOutcome with one issue."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


@dataclass
class SmartClient:
    """A registered backend client: its id and its public key (PEM)."""

    client_id: str
    public_key_pem: str
    algorithm: str = "RS384"


@dataclass
class FhirFixture:
    """The server's state; `app()` serves it. Thread-safe (served from a uvicorn thread)."""

    auth: AuthMode = "none"
    username: str = "syncd"
    password: str = ""
    bearer_token: str = ""
    smart_clients: dict[str, SmartClient] = field(default_factory=dict)
    token_seconds: int = 300
    lists_patient_search: bool = True
    # The server's clock is ours plus this (a server may be minutes apart from us).
    clock_offset: timedelta = timedelta(0)
    max_page_size: int = 500
    fail_next: list[int] = field(default_factory=list)
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    _patients: dict[str, tuple[datetime, dict[str, Any]]] = field(default_factory=dict)
    _snapshots: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _tokens: dict[str, datetime] = field(default_factory=dict)
    _seen_jti: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    requests: list[str] = field(default_factory=list)  # "GET /fhir/Patient?..." as received

    def server_now(self) -> datetime:
        return self.now() + self.clock_offset

    def put(self, resource: Mapping[str, Any], *, at: datetime | None = None) -> datetime:
        """Create or update a Patient, stamped now (server clock) or `at`."""
        stamp = at or self.server_now()
        stored = dict(resource)
        stored["meta"] = {**dict(stored.get("meta") or {}), "lastUpdated": fhir_instant(stamp)}
        with self._lock:
            self._patients[str(stored["id"])] = (stamp, stored)
        return stamp

    def put_all(self, resources: Iterable[Mapping[str, Any]]) -> None:
        for resource in resources:
            self.put(resource)

    def delete(self, resource_id: str) -> None:
        with self._lock:
            self._patients.pop(resource_id, None)

    def app(self) -> Starlette:
        """The ASGI app (base URL `http://host:port/fhir`)."""
        return Starlette(
            routes=[
                Route(f"{FHIR_PREFIX}/metadata", self._metadata),
                Route(f"{FHIR_PREFIX}/Patient", self._search),
                Route(TOKEN_PATH, self._token, methods=["POST"]),
            ]
        )

    # --- endpoints -----------------------------------------------------------------------

    async def _metadata(self, request: Request) -> Response:
        self.requests.append(f"GET {request.url.path}")
        resources = [
            {
                "type": "Patient",
                "interaction": [{"code": "read"}]
                + ([{"code": "search-type"}] if self.lists_patient_search else []),
                "searchParam": [{"name": "_lastUpdated", "type": "date"}],
            }
        ]
        body = {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": "2026-12-04",
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "rest": [{"mode": "server", "resource": resources}],
        }
        return _fhir(body)

    async def _search(self, request: Request) -> Response:
        self.requests.append(f"GET {request.url.path}?{unquote(request.url.query)}")
        refused = self._refused(request)
        if refused is not None:
            return refused
        if self.fail_next:
            status = self.fail_next.pop(0)
            return _fhir(outcome("transient", f"injected failure {status}"), status)
        params = request.query_params
        page_token = params.get("_getpages")
        if page_token is not None:
            return self._page(request, page_token, params)
        try:
            size = min(int(params.get("_count", "20")), self.max_page_size)
        except ValueError:
            return _fhir(outcome("invalid", "_count must be an integer"), 400)
        if size < 1:
            return _fhir(outcome("invalid", "_count must be at least 1"), 400)
        try:
            tests = [_instant_test(value) for value in params.getlist("_lastUpdated")]
        except ValueError as exc:
            return _fhir(outcome("invalid", f"_lastUpdated: {exc}"), 400)
        with self._lock:
            matches = sorted(
                (stamp, rid, resource)
                for rid, (stamp, resource) in self._patients.items()
                if all(test(stamp) for test in tests)
            )
            snapshot = [resource for _, _, resource in matches]
            token = secrets.token_hex(8)
            self._snapshots[token] = snapshot
        return self._bundle(request, token, snapshot, 0, size)

    def _page(self, request: Request, token: str, params: Mapping[str, str]) -> Response:
        snapshot = self._snapshots.get(token)
        if snapshot is None:
            return _fhir(outcome("not-found", "this search has expired; search again"), 410)
        offset, size = int(params.get("_offset", "0")), int(params.get("_count", "20"))
        return self._bundle(request, token, snapshot, offset, size)

    def _bundle(
        self, request: Request, token: str, snapshot: list[dict[str, Any]], offset: int, size: int
    ) -> Response:
        base = f"{request.url.scheme}://{request.url.netloc}{FHIR_PREFIX}"
        page = snapshot[offset : offset + size]
        links = [{"relation": "self", "url": str(request.url)}]
        if offset + size < len(snapshot):
            query = urlencode({"_getpages": token, "_offset": offset + size, "_count": size})
            links.append({"relation": "next", "url": f"{base}/Patient?{query}"})
        body = {
            "resourceType": "Bundle",
            "id": secrets.token_hex(8),
            "meta": {"lastUpdated": fhir_instant(self.server_now())},
            "type": "searchset",
            "total": len(snapshot),
            "link": links,
            "entry": [
                {
                    "fullUrl": f"{base}/Patient/{resource['id']}",
                    "resource": resource,
                    "search": {"mode": "match"},
                }
                for resource in page
            ],
        }
        return _fhir(body)

    def _refused(self, request: Request) -> Response | None:
        """A 401 OperationOutcome when the request's credentials do not fit the mode."""
        header = request.headers.get("authorization", "")
        ok = True
        if self.auth == "basic":
            expected = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            ok = secrets.compare_digest(header, f"Basic {expected}")
        elif self.auth == "bearer":
            ok = secrets.compare_digest(header, f"Bearer {self.bearer_token}")
        elif self.auth == "smart":
            token = header.removeprefix("Bearer ")
            with self._lock:
                expires = self._tokens.get(token)
            ok = header.startswith("Bearer ") and expires is not None and expires > self.now()
        if ok:
            return None
        return _fhir(outcome("login", "authentication required or refused"), 401)

    async def _token(self, request: Request) -> Response:
        """SMART Backend Services token endpoint (client_credentials + JWT assertion)."""
        import jwt

        self.requests.append(f"POST {request.url.path}")
        # application/x-www-form-urlencoded, parsed by the standard library (starlette's
        # form parser needs python-multipart, which nothing else here does).
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8")).items()}
        if form.get("grant_type") != "client_credentials":
            return _oauth_error("unsupported_grant_type")
        if form.get("client_assertion_type") != (
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        ):
            return _oauth_error("invalid_request")
        assertion = str(form.get("client_assertion") or "")
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
            client = self.smart_clients[str(unverified.get("iss"))]
            claims = jwt.decode(
                assertion,
                client.public_key_pem,
                algorithms=[client.algorithm],
                audience=str(request.url),
                issuer=client.client_id,
                options={"require": ["exp", "jti", "sub", "iss", "aud"]},
            )
        except (jwt.PyJWTError, KeyError):
            return _oauth_error("invalid_client", 401)
        now = datetime.now(UTC).timestamp()
        if claims["sub"] != client.client_id or claims["exp"] > now + 300:
            return _oauth_error("invalid_client", 401)
        with self._lock:
            if claims["jti"] in self._seen_jti:
                return _oauth_error("invalid_client", 401)
            self._seen_jti.add(claims["jti"])
            token = secrets.token_urlsafe(24)
            self._tokens[token] = self.now() + timedelta(seconds=self.token_seconds)
        scope = str(form.get("scope") or "system/Patient.read")
        return JSONResponse(
            {
                "access_token": token,
                "token_type": "bearer",
                "expires_in": self.token_seconds,
                "scope": scope,
            }
        )

    def revoke_tokens(self) -> None:
        """Forget every access token (a client must fetch a new one)."""
        with self._lock:
            self._tokens.clear()


def _instant_test(value: str) -> Callable[[datetime], bool]:
    """A `_lastUpdated` value (`ge2026-12-04T10:00:00.000Z`) as a test on a stored instant.

    The search value covers its whole precision (a millisecond here), as FHIR says: `ge T`
    matches what is at or after the start of T's millisecond, `le T` what is before its end.
    """
    prefix, text = (value[:2], value[2:]) if value[:2].isalpha() else ("eq", value)
    try:
        start = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("not a FHIR instant") from None
    if start.tzinfo is None:
        raise ValueError("an instant needs a time zone")
    end = start + timedelta(milliseconds=1)
    tests: dict[str, Callable[[datetime], bool]] = {
        "ge": lambda t: t >= start,
        "gt": lambda t: t >= end,
        "le": lambda t: t < end,
        "lt": lambda t: t < start,
        "eq": lambda t: start <= t < end,
    }
    if prefix not in tests:
        raise ValueError(f"unsupported prefix {prefix!r}")
    return tests[prefix]


def _fhir(body: Mapping[str, Any], status: int = 200) -> Response:
    response = JSONResponse(dict(body), status_code=status, media_type=_FHIR_JSON)
    return response


def _oauth_error(error: str, status: int = 400) -> Response:
    return JSONResponse({"error": error}, status_code=status)


@contextmanager
def serve_in_thread(fixture: FhirFixture, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve the fixture with uvicorn on a free port in a daemon thread; yields the server's
    root URL (`http://127.0.0.1:PORT`; the FHIR base is that + `/fhir`)."""
    import uvicorn

    from syncd.sandbox.server import bind_socket

    sock = bind_socket(host, 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(fixture.app(), log_level="warning", lifespan="off", access_log=False)
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="fhir-fixture"
    )
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the FHIR fixture server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()
