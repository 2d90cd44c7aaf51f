"""The sandbox's `/_sandbox` admin endpoints, over ASGI."""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from syncd.sandbox.app import create_app
from syncd.sandbox.clock import ManualClock
from syncd.sandbox.state import DEMO_API_KEY, Sandbox
from syncd.voxares.contract import API_PREFIX


@pytest.fixture
def sandbox() -> Sandbox:
    """A fresh sandbox on a manual clock."""
    return Sandbox(seed=1, clock=ManualClock())


@pytest.fixture
def app(sandbox: Sandbox) -> Starlette:
    """The sandbox app."""
    return create_app(sandbox)


@pytest.fixture
async def admin(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the admin base URL."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://sandbox/_sandbox"
    ) as client:
        yield client


@pytest.fixture
async def api(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the API with the demo key."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://sandbox" + API_PREFIX,
        headers={"Authorization": f"Bearer {DEMO_API_KEY}"},
    ) as client:
        yield client


async def call(
    client: httpx.AsyncClient, method: str, path: str, status: int = 200, **kw: Any
) -> Any:
    """Call an admin endpoint and check its status."""
    response = await client.request(method, path, **kw)
    assert response.status_code == status, response.text
    return response.json()


async def test_health(admin: httpx.AsyncClient) -> None:
    """health answers ok."""
    assert await call(admin, "GET", "/health") == {"ok": True}


async def test_create_practice_with_scoped_keys(admin: httpx.AsyncClient, app: Starlette) -> None:
    """A new practice's keys work against the API with exactly their scopes."""
    created = await call(
        admin,
        "POST",
        "/practices",
        201,
        json={"name": "Clinic B", "keys": [{"name": "ehr-b", "scopes": ["patients"]}]},
    )
    key = created["keys"][0]["key"]
    assert key.startswith("vox-")
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://sandbox" + API_PREFIX,
        headers=headers,
    ) as api:
        assert (await api.get("/patients")).status_code == 200
        assert (await api.get("/forms")).status_code == 403
    listed = await call(admin, "GET", "/practices")
    names = {p["name"]: p for p in listed["data"]}
    assert names["Clinic B"]["keys"] == [
        {"keyId": key.split("-")[1], "name": "ehr-b", "scopes": ["patients"]}
    ]
    assert key not in str(listed)  # keys are shown once, at creation


async def test_issue_key_and_bad_requests(admin: httpx.AsyncClient, sandbox: Sandbox) -> None:
    """A key for an existing practice; unknown practice 404; unknown scope or no name 400."""
    issued = await call(
        admin, "POST", f"/practices/{sandbox.demo_practice_id}/keys", 201, json={"name": "second"}
    )
    assert sandbox.authenticate(issued["key"]) is not None
    await call(admin, "POST", "/practices/nope/keys", 404, json={"name": "x"})
    await call(
        admin,
        "POST",
        f"/practices/{sandbox.demo_practice_id}/keys",
        400,
        json={"name": "x", "scopes": ["everything"]},
    )
    await call(admin, "POST", "/practices", 400, json={})


async def test_seed_patients_and_submissions_then_transition(
    admin: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    """Bulk seeding creates patients and submissions (one shared timestamp) visible in the API."""
    seeded = await call(admin, "POST", "/patients", 201, json={"count": 25})
    assert seeded["created"] == 25
    assert (await api.get("/patients")).json()["count"] == 25
    explicit = await call(
        admin,
        "POST",
        "/patients",
        201,
        json={"patients": [{"providerId": "X-1", "firstName": "Iva", "lastName": "Novak"}]},
    )
    assert (await api.get("/patients/syncd-demo/X-1")).json()["id"] == explicit["ids"][0]
    at = "2025-05-01T00:00:00.000Z"
    subs = await call(admin, "POST", "/submissions", 201, json={"count": 10, "at": at})
    listed = (await api.get("/form-submissions", params={"updatedTo": at})).json()
    assert listed["count"] == 10
    moved = await call(
        admin,
        "POST",
        f"/submissions/{subs['ids'][0]}/transition",
        json={"status": "Completed", "data": {"answer": 42}},
    )
    assert moved["submissionStatus"] == "Completed"
    detail = (await api.get(f"/form-submissions/{subs['ids'][0]}")).json()
    assert detail["data"] == {"answer": 42}
    await call(admin, "POST", f"/submissions/{subs['ids'][0]}/transition", 400, json={})
    await call(admin, "POST", "/submissions/nope/transition", 404, json={"status": "Opened"})
    await call(admin, "POST", "/submissions", 400, json={"count": 1, "status": "Done"})


async def test_submission_versions_list_every_version(admin: httpx.AsyncClient) -> None:
    """Every status a submission went through is listed with its updatedAt."""
    await call(admin, "POST", "/patients", 201, json={"count": 2})
    ids = (await call(admin, "POST", "/submissions", 201, json={"count": 1}))["ids"]
    await call(admin, "POST", f"/submissions/{ids[0]}/transition", json={"status": "Opened"})
    await call(admin, "POST", f"/submissions/{ids[0]}/transition", json={"status": "Rejected"})
    versions = await call(admin, "GET", "/submission-versions")
    assert versions["count"] == 3
    assert [v["status"] for v in versions["data"]] == ["Pending", "Opened", "Rejected"]
    assert {v["id"] for v in versions["data"]} == {ids[0]}


async def test_activity_toggle_and_tick(admin: httpx.AsyncClient, api: httpx.AsyncClient) -> None:
    """The simulator can be switched and rated; a tick creates or moves submissions."""
    assert await call(admin, "GET", "/activity") == {"enabled": False, "rate": 2.0}
    assert await call(admin, "PUT", "/activity", json={"enabled": True, "rate": 5}) == {
        "enabled": True,
        "rate": 5.0,
    }
    await call(admin, "PUT", "/activity", 400, json={"rate": -1})
    await call(admin, "POST", "/patients", 201, json={"count": 5})
    assert (await call(admin, "POST", "/tick", json={"events": 30}))["changed"] == 30
    assert (await api.get("/form-submissions")).json()["count"] > 0


async def test_stats_count_requests_by_template_and_sends_by_fingerprint(
    admin: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    """Requests are counted by METHOD, route template and status; sends by fingerprint."""
    body = {
        "providerId": "E-1",
        "firstName": "Ana",
        "lastName": "Horvat",
        "mobileNumber": "+385991234567",
        "content": "Hi",
    }
    await api.post("/messages/send", json=body)
    await api.get("/patients/syncd-demo/E-1")
    await api.get("/patients/syncd-demo/E-404")
    stats = await call(admin, "GET", "/stats")
    assert stats["requests"] == {
        "POST /messages/send 201": 1,
        "GET /patients/{provider}/{provider_id} 200": 1,
        "GET /patients/{provider}/{provider_id} 404": 1,
    }
    assert stats["sendsAccepted"] == 1
    assert list(stats["sendsPerFingerprint"].values()) == [1]
    assert "sendsPerFingerprint" not in await call(admin, "GET", "/stats?fingerprints=false")


async def test_reset_restores_seed_data_and_switches_faults_off(
    admin: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    """reset forgets data and faults; the demo key still works."""
    await call(admin, "POST", "/patients", 201, json={"count": 3})
    await call(admin, "PUT", "/faults", json={"error_rates": {"500": 1.0}})
    await call(admin, "POST", "/reset", json={})
    assert (await api.get("/patients")).json()["count"] == 0
    assert (await call(admin, "GET", "/faults"))["error_rates"] == {}


async def test_snapshot_without_a_persist_path_is_409(admin: httpx.AsyncClient) -> None:
    """Asking for a snapshot of a sandbox that does not persist is a conflict."""
    await call(admin, "POST", "/snapshot", 409)
