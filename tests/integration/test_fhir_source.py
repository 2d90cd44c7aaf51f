"""The FHIR R4 Patient source against the fixture FHIR server (syncd.sandbox.fhir_server).

The server runs on a real port (uvicorn in a thread); the cursor lives in a real state
database (SQLite, then PostgreSQL).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr
from sqlalchemy import Engine
from starlette.responses import JSONResponse
from structlog.testing import capture_logs

from syncd.exceptions import SourceError
from syncd.sandbox.fhir_server import TOKEN_PATH, FhirFixture, SmartClient, serve_in_thread
from syncd.sources.base import SourceRow
from syncd.sources.fhir import FhirPatientSource
from syncd.sources.fhir_auth import BearerAuth, SmartBackendAuth, basic_auth
from syncd.sources.fhir_cursor import Cursor, CursorStore, format_instant
from tests.fhir_examples import SYSTEM, examples, synthetic


@pytest.fixture
def fixture() -> FhirFixture:
    server = FhirFixture()
    _put_examples(server)
    return server


def _put_examples(server: FhirFixture) -> None:
    """The examples, last updated a day ago on the server's clock (outside any overlap)."""
    for resource in examples():
        server.put(resource, at=server.server_now() - timedelta(days=1))


@pytest.fixture
def root(fixture: FhirFixture) -> Iterator[str]:
    with serve_in_thread(fixture) as url:
        yield url


class Client(httpx.Client):
    """An httpx client that knows the fixture server's FHIR base URL."""

    base = ""


@pytest.fixture
def http(root: str) -> Iterator[Client]:
    with Client(timeout=60) as client:
        client.base = f"{root}/fhir"
        yield client


def _source(http: Client, **options: Any) -> FhirPatientSource:
    options.setdefault("page_size", 2)
    return FhirPatientSource("fhir", http.base, identifier_system=SYSTEM, http=http, **options)


def _read_all(source: FhirPatientSource) -> tuple[list[SourceRow], Any]:
    read = source.rows()
    return list(read), read


def _searches(fixture: FhirFixture) -> list[str]:
    return [r for r in fixture.requests if r.startswith("GET /fhir/Patient")]


def test_full_read_follows_every_next_link_and_is_complete(
    fixture: FhirFixture, http: Client
) -> None:
    """Six examples, two per page: three searches, every patient once, complete."""
    rows, read = _read_all(_source(http))
    assert sorted(r.origin or "" for r in rows) == sorted(f"Patient/{r['id']}" for r in examples())
    assert len(_searches(fixture)) == 3
    assert "_count=2" in _searches(fixture)[0]
    assert "_getpages=" in _searches(fixture)[1]  # the next link, as the server gave it
    assert read.complete is True
    assert read.incremental is False
    inactive = [r for r in rows if not r.active]
    assert [r.origin for r in inactive] == ["Patient/pat3"]


def test_incremental_read_asks_from_the_servers_clock_minus_the_overlap(
    fixture: FhirFixture, http: Client, state_engine: Engine
) -> None:
    """The cursor is the server's clock at the read's start; the next read asks ge(it -
    overlap), is incremental, never complete, and finds a change made after the first."""
    fixture.clock_offset = timedelta(hours=-3)  # the server is 3 hours behind us
    _put_examples(fixture)  # stamped on its clock
    cursors = CursorStore(state_engine, "fhir", http.base)
    source = _source(http, cursors=cursors, overlap=timedelta(minutes=5))
    _, first = _read_all(source)
    assert cursors.load() is None  # nothing is saved before the rows are pushed
    assert first.on_pushed is not None
    first.on_pushed()
    saved = cursors.load()
    assert saved is not None
    assert abs(saved.position - fixture.server_now()) < timedelta(minutes=1)
    assert saved.full_read_at == saved.position

    fixture.put({**synthetic(1), "id": "new"})
    rows, second = _read_all(source)
    assert [r.origin for r in rows] == ["Patient/new"]
    assert second.incremental is True
    assert second.complete is False
    query = _searches(fixture)[-1]
    expected = format_instant(saved.position - timedelta(minutes=5))
    assert f"_lastUpdated=ge{expected}" in query


def test_a_change_made_visible_late_is_found_within_the_overlap(
    fixture: FhirFixture, http: Client, state_engine: Engine
) -> None:
    """A resource stamped before the cursor but visible only after the read (a slow
    transaction), and one stamped on the cursor's own millisecond, are both read next time."""
    cursors = CursorStore(state_engine, "fhir", http.base)
    source = _source(http, cursors=cursors, overlap=timedelta(minutes=2))
    _, read = _read_all(source)
    read.on_pushed()
    position = cursors.load().position  # type: ignore[union-attr]
    fixture.put({**synthetic(2), "id": "late"}, at=position - timedelta(seconds=90))
    fixture.put({**synthetic(3), "id": "tie"}, at=position)
    fixture.put({**synthetic(4), "id": "too-late"}, at=position - timedelta(minutes=3))
    rows, _ = _read_all(source)
    assert sorted(r.origin or "" for r in rows) == ["Patient/late", "Patient/tie"]


def test_cursor_for_another_base_url_is_not_used(
    fixture: FhirFixture, http: Client, state_engine: Engine
) -> None:
    """A cursor saved for another endpoint means a full read."""
    CursorStore(state_engine, "fhir", "https://old.example/fhir").save(
        Cursor(datetime.now(UTC), datetime.now(UTC))
    )
    _, read = _read_all(_source(http, cursors=CursorStore(state_engine, "fhir", http.base)))
    assert read.complete is True
    assert "_lastUpdated" not in _searches(fixture)[0]


def test_full_read_again_when_due(fixture: FhirFixture, http: Client, state_engine: Engine) -> None:
    """With full_read_every elapsed on the server's clock, the next read is full again."""
    cursors = CursorStore(state_engine, "fhir", http.base)
    source = _source(http, cursors=cursors, full_read_every=timedelta(hours=1))
    _read_all(source)[1].on_pushed()
    fixture.clock_offset = timedelta(hours=2)
    _, read = _read_all(source)
    assert read.incremental is True  # the position is still the first read's
    read.on_pushed()
    _, read = _read_all(source)
    assert read.complete is True
    assert "_lastUpdated" not in _searches(fixture)[-3]


def test_operation_outcome_error_is_shown_in_one_line(fixture: FhirFixture, http: Client) -> None:
    """A 400 with an OperationOutcome fails the read naming status, code and diagnostics."""
    fixture.fail_next = [400]
    with pytest.raises(SourceError) as caught:
        _read_all(_source(http))
    assert str(caught.value) == (
        "source fhir: the FHIR server answered 400: OperationOutcome error transient: "
        "injected failure 400"
    )


def test_bad_search_parameter_answer(http: Client, fixture: FhirFixture) -> None:
    """The server's own 400 for a bad parameter reaches the operator as it said it."""
    source = _source(http)
    with pytest.raises(SourceError, match="answered 400: OperationOutcome error invalid: _count"):
        source.get(http, f"{source.base_url}/Patient", {"_count": "lots"})


def test_server_errors_are_retried_then_reported(fixture: FhirFixture, http: Client) -> None:
    """Two 503s are retried and the read succeeds; three fail it."""
    fixture.fail_next = [503, 503]
    rows, _ = _read_all(_source(http, page_size=10))
    assert len(rows) == 6
    fixture.fail_next = [503, 503, 503]
    with pytest.raises(SourceError, match="answered 503"):
        _read_all(_source(http, page_size=10))


def test_a_next_link_to_another_server_is_not_followed(http: Client) -> None:
    """A next link off the base URL's origin fails the read (credentials stay home)."""
    # The server builds its next links from the Host it was asked with.
    http.headers["host"] = "elsewhere.test"
    with pytest.raises(SourceError, match="next link points to another server"):
        _read_all(_source(http))


def test_basic_and_bearer_auth(fixture: FhirFixture, http: Client) -> None:
    """Wrong or missing credentials: 401 named, no secret in the message; right ones read."""
    fixture.auth, fixture.password = "basic", "s3cret-pass"
    with pytest.raises(SourceError, match=r"answered 401.*credentials were refused"):
        _read_all(_source(http))
    http.auth = basic_auth("syncd", SecretStr("wrong-pass"))
    with pytest.raises(SourceError) as caught:
        _read_all(_source(http))
    assert "wrong-pass" not in str(caught.value)
    http.auth = basic_auth("syncd", SecretStr("s3cret-pass"))
    assert len(_read_all(_source(http))[0]) == 6
    fixture.auth, fixture.bearer_token = "bearer", "tok-123456"
    http.auth = BearerAuth(SecretStr("tok-123456"))
    assert len(_read_all(_source(http))[0]) == 6
    assert "tok-123456" not in repr(http.auth)


def _rsa_pem() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def test_smart_backend_services(fixture: FhirFixture, http: Client, root: str) -> None:
    """A signed JWT assertion gets a token (verified by PyJWT on the server); the token is
    reused, renewed when it expires or is revoked; a client the server does not know is
    refused with the OAuth error, and the private key is in no message."""
    private, public = _rsa_pem()
    fixture.auth = "smart"
    fixture.smart_clients["syncd-backend"] = SmartClient("syncd-backend", public)
    clock = [1_000_000.0]
    auth = SmartBackendAuth(
        client_id="syncd-backend",
        token_url=f"{root}{TOKEN_PATH}",
        private_key=SecretStr(private),
        key_id="key-1",
        scope="system/Patient.read",
        clock=lambda: clock[0],
    )
    http.auth = auth
    assert len(_read_all(_source(http))[0]) == 6
    assert auth.tokens_fetched == 1
    _read_all(_source(http))
    assert auth.tokens_fetched == 1  # cached
    clock[0] += 600  # past expires_in (300 s) minus the margin
    _read_all(_source(http))
    assert auth.tokens_fetched == 2
    fixture.revoke_tokens()
    assert len(_read_all(_source(http))[0]) == 6
    assert auth.tokens_fetched == 3  # a 401 on a cached token fetched one new token

    _, stranger_public = _rsa_pem()
    fixture.smart_clients["syncd-backend"] = SmartClient("syncd-backend", stranger_public)
    fixture.revoke_tokens()
    with pytest.raises(SourceError) as caught:
        _read_all(_source(http))
    assert "token endpoint refused the client: HTTP 401 (invalid_client)" in str(caught.value)
    assert private.splitlines()[1] not in str(caught.value)
    assert "syncd-backend" in repr(auth)
    assert "PRIVATE" not in repr(auth)


def test_smart_assertion_claims(fixture: FhirFixture) -> None:
    """The assertion carries iss = sub = client id, aud = token URL, exp <= 5 min, a kid."""
    import jwt

    private, public = _rsa_pem()
    auth = SmartBackendAuth(
        client_id="c1",
        token_url="https://ehr.example/token",
        private_key=SecretStr(private),
        key_id="k1",
        scope="system/Patient.read",
    )
    token = auth.assertion()
    claims = jwt.decode(token, public, algorithms=["RS384"], audience="https://ehr.example/token")
    assert (claims["iss"], claims["sub"]) == ("c1", "c1")
    assert 0 < claims["exp"] - claims["iat"] <= 300
    assert jwt.get_unverified_header(token)["kid"] == "k1"
    assert auth.assertion() != token  # a fresh jti each time
    bad = SmartBackendAuth(
        client_id="c1",
        token_url="https://ehr.example/token",
        private_key=SecretStr("not a key"),
        key_id="k1",
        scope="s",
    )
    with pytest.raises(SourceError, match="not a usable RS384 private key"):
        bad.assertion()


def test_read_logs_counts_only(fixture: FhirFixture, http: Client) -> None:
    """The read's log line holds counts; no name, phone or birth date."""
    with capture_logs() as logs:
        _read_all(_source(http))
    finished = [e for e in logs if e["event"] == "fhir.read_finished"]
    assert finished == [
        {
            "event": "fhir.read_finished",
            "log_level": "info",
            "source": "fhir",
            "full": True,
            "pages": 3,
            "patients": 6,
            "problems": 1,  # xcda: no identifier of the system
            "partial_birth_dates": 1,
            "outcome_warnings": 0,
        }
    ]


def test_unreachable_server(tmp_path: Path) -> None:
    """A connection error is named by class after the retries."""
    source = FhirPatientSource(
        "fhir", "http://127.0.0.1:9/fhir", identifier_system=SYSTEM, attempts=1, timeout=5
    )
    with pytest.raises(SourceError, match=r"cannot reach the FHIR server \(ConnectError\)"):
        list(source.rows())


def test_a_read_shorter_than_the_bundle_total_is_not_complete_and_keeps_the_cursor(
    fixture: FhirFixture, http: Client, state_engine: Engine
) -> None:
    """A server that says total=6 but gives no next link after two (it does not page):
    the read is not complete and does not move the cursor."""
    original = fixture._bundle

    def without_next(*args: Any, **kwargs: Any) -> Any:
        response = original(*args, **kwargs)
        body = json.loads(bytes(response.body))
        body["link"] = [link for link in body["link"] if link["relation"] != "next"]
        return JSONResponse(body, media_type="application/fhir+json")

    fixture._bundle = without_next  # type: ignore[method-assign]
    cursors = CursorStore(state_engine, "fhir", http.base)
    with capture_logs() as logs:
        rows, read = _read_all(_source(http, cursors=cursors))
    assert len(rows) == 2
    assert read.complete is False
    assert read.on_pushed is None
    assert {
        "event": "fhir.read_short",
        "log_level": "warning",
        "source": "fhir",
        "read": 2,
        "total": 6,
    } in logs
