"""Every contract endpoint of the sandbox and every error status, over ASGI with raw httpx."""

from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from syncd.sandbox.app import create_app
from syncd.sandbox.clock import ManualClock
from syncd.sandbox.state import DEMO_API_KEY, Sandbox
from syncd.voxares.contract import API_PREFIX

ROOT = "http://sandbox"
MOBILE = "+385991234567"


@pytest.fixture
def clock() -> ManualClock:
    """A manual clock at 2025-05-20T09:15:00Z."""
    return ManualClock()


@pytest.fixture
def sandbox(clock: ManualClock) -> Sandbox:
    """A fresh sandbox on the manual clock."""
    return Sandbox(seed=1, clock=clock)


@pytest.fixture
def app(sandbox: Sandbox) -> Starlette:
    """The sandbox app without faults."""
    return create_app(sandbox)


@pytest.fixture
async def raw(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """An unauthenticated client at the server root."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ROOT) as client:
        yield client


@pytest.fixture
async def api(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the API base URL with the demo key."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url=ROOT + API_PREFIX,
        headers={"Authorization": f"Bearer {DEMO_API_KEY}"},
    ) as client:
        yield client


def assert_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response is a contract error body with `status`."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"statusCode", "message", "error"}
    assert body["statusCode"] == status
    assert isinstance(body["message"], str | list)
    return body


def patient(provider_id: str = "E-1", **extra: Any) -> dict[str, Any]:
    """A valid patient body."""
    return {"providerId": provider_id, "firstName": "Ana", "lastName": "Horvat", **extra}


ENDPOINTS = [
    ("POST", "/patients", patient()),
    ("GET", "/patients", None),
    ("GET", "/patients/syncd-demo/E-1", None),
    ("PATCH", "/patients/syncd-demo/E-1", {"firstName": "X"}),
    ("POST", "/messages/send", {"providerId": "E-1", "content": "Hi"}),
    ("GET", "/messages/3f2504e0-4f89-41d3-9a0c-0305e82c3301", None),
    ("GET", "/practice-templates", None),
    ("GET", "/forms", None),
    ("GET", "/documents", None),
    ("GET", "/form-submissions", None),
    ("GET", "/form-submissions/3f2504e0-4f89-41d3-9a0c-0305e82c3301", None),
]


# ------------------------------------------------------------------ auth


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
@pytest.mark.parametrize(
    "header", [None, "Bearer vox-demo-wrongsecret", f"Basic {DEMO_API_KEY}", "Bearer"]
)
async def test_missing_or_invalid_key_is_401(
    raw: httpx.AsyncClient, method: str, path: str, body: Any, header: str | None
) -> None:
    """No key, an unknown key or another scheme: 401 with the error body."""
    headers = {} if header is None else {"Authorization": header}
    response = await raw.request(method, API_PREFIX + path, json=body, headers=headers)
    assert_error(response, 401)


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
async def test_key_without_the_endpoint_scope_is_403(
    raw: httpx.AsyncClient, sandbox: Sandbox, method: str, path: str, body: Any
) -> None:
    """A key lacking the endpoint's scope is answered 403, whatever else it may do."""
    from syncd.sandbox.app import scope_for

    needed = scope_for(path)
    others = [s for s in ("patients", "messages", "content", "form-submissions") if s != needed]
    token = sandbox.issue_key(sandbox.demo_practice_id, "limited", others)
    response = await raw.request(
        method, API_PREFIX + path, json=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert needed in assert_error(response, 403)["message"]


# ------------------------------------------------------------------ patients


async def test_post_patient_creates_201_then_updates_200(api: httpx.AsyncClient) -> None:
    """The upsert answers 201 with the new patient, then 200 with the same id."""
    created = await api.post("/patients", json=patient(mobileNumber=MOBILE))
    assert created.status_code == 201
    body = created.json()
    assert set(body) == {
        "id",
        "firstName",
        "lastName",
        "mobileNumber",
        "email",
        "dateOfBirth",
        "createdAt",
        "updatedAt",
    }
    updated = await api.post("/patients", json=patient(firstName="Anna"))
    assert updated.status_code == 200
    assert updated.json()["id"] == body["id"]
    assert updated.json()["firstName"] == "Anna"


async def test_post_patient_validation_is_400_with_a_list(api: httpx.AsyncClient) -> None:
    """Bad fields give 400 with one message per problem, none echoing a value."""
    response = await api.post(
        "/patients",
        json={"providerId": "E-1", "firstName": "Ana", "mobileNumber": "0991", "extra": True},
    )
    body = assert_error(response, 400)
    assert sorted(body["message"]) == [
        "lastName should not be empty",
        "mobileNumber must be a valid E.164 phone number",
        "property extra should not exist",
    ]


@pytest.mark.parametrize("raw_body", [b"{not json", b"[1,2]", b'"text"'])
async def test_body_that_is_not_a_json_object_is_400(
    api: httpx.AsyncClient, raw_body: bytes
) -> None:
    """Unparseable JSON or a non-object body is 400."""
    response = await api.post(
        "/patients", content=raw_body, headers={"Content-Type": "application/json"}
    )
    assert_error(response, 400)


async def test_list_patients_pages_and_counts(api: httpx.AsyncClient, sandbox: Sandbox) -> None:
    """count is the total; pages are zero-based slices; pageSize over 100 is 400."""
    ids = sandbox.seed_patients(sandbox.demo_practice_id, 45)
    first = (await api.get("/patients")).json()
    assert (len(first["data"]), first["count"]) == (20, 45)
    last = (await api.get("/patients", params={"page": 2, "pageSize": 20})).json()
    assert (len(last["data"]), last["count"]) == (5, 45)
    everyone = []
    for page in range(3):
        everyone += (await api.get("/patients", params={"page": page})).json()["data"]
    assert sorted(p["id"] for p in everyone) == sorted(ids)
    beyond = (await api.get("/patients", params={"page": 9})).json()
    assert beyond == {"data": [], "count": 45}
    assert_error(await api.get("/patients", params={"pageSize": 101}), 400)
    assert_error(await api.get("/patients", params={"page": -1}), 400)


async def test_list_patients_search_term(api: httpx.AsyncClient) -> None:
    """searchTerm matches names, phone, email and providerId."""
    await api.post("/patients", json=patient("EHR-77", mobileNumber=MOBILE, email="a@example.org"))
    await api.post("/patients", json={"providerId": "Z", "firstName": "Ivo", "lastName": "Babić"})
    for term in ("horvat", "9912345", "a@example", "EHR-77", "Ana Horvat"):
        found = (await api.get("/patients", params={"searchTerm": term})).json()
        assert found["count"] == 1, term
    assert (await api.get("/patients", params={"searchTerm": "nobody"})).json()["count"] == 0


async def test_get_patient_by_external_id(api: httpx.AsyncClient) -> None:
    """GET by (provider, providerId) returns the patient; an unknown one is 404."""
    created = (await api.post("/patients", json=patient(dateOfBirth="1990-01-15"))).json()
    found = await api.get("/patients/syncd-demo/E-1")
    assert found.status_code == 200
    assert found.json() == created
    assert found.json()["dateOfBirth"] == "1990-01-15T00:00:00.000Z"
    assert_error(await api.get("/patients/syncd-demo/E-2"), 404)
    assert_error(await api.get("/patients/other-ehr/E-1"), 404)


async def test_explicit_provider_is_part_of_the_address(api: httpx.AsyncClient) -> None:
    """A patient posted with provider X is found under X, not under the key's name."""
    await api.post("/patients", json=patient(provider="acme-ehr"))
    assert (await api.get("/patients/acme-ehr/E-1")).status_code == 200
    assert_error(await api.get("/patients/syncd-demo/E-1"), 404)


async def test_patch_patient(api: httpx.AsyncClient, clock: ManualClock) -> None:
    """PATCH changes only the fields sent; unknown patient 404; bad field 400."""
    await api.post("/patients", json=patient(mobileNumber=MOBILE, email="a@example.org"))
    clock.advance(2)
    response = await api.patch(
        "/patients/syncd-demo/E-1", json={"email": None, "lastName": "Babić"}
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["firstName"], body["lastName"], body["email"], body["mobileNumber"]) == (
        "Ana",
        "Babić",
        None,
        MOBILE,
    )
    assert body["updatedAt"] == "2025-05-20T09:15:02.000Z"
    assert_error(await api.patch("/patients/syncd-demo/nobody", json={"firstName": "X"}), 404)
    assert_error(await api.patch("/patients/syncd-demo/E-1", json={"mobileNumber": "12"}), 400)
    assert_error(await api.patch("/patients/syncd-demo/E-1", json={"providerId": "E-2"}), 400)


# ------------------------------------------------------------------ messages


async def test_send_inline_message_and_read_its_progress(
    api: httpx.AsyncClient, clock: ManualClock
) -> None:
    """201 Pending with the documented fields; GET shows Sent, then Delivered, over time."""
    response = await api.post("/messages/send", json=patient(mobileNumber=MOBILE, content="Hello"))
    assert response.status_code == 201
    message = response.json()
    assert set(message) == {
        "messageId",
        "patientId",
        "status",
        "smsCount",
        "content",
        "sentOn",
        "createdAt",
        "updatedAt",
    }
    assert (message["status"], message["smsCount"], message["sentOn"]) == ("Pending", 1, None)
    clock.advance(1.5)
    sent = (await api.get(f"/messages/{message['messageId']}")).json()
    assert (sent["status"], sent["sentOn"]) == ("Sent", "2025-05-20T09:15:01.000Z")
    clock.advance(5)
    assert (await api.get(f"/messages/{message['messageId']}")).json()["status"] == "Delivered"


async def test_send_with_template_renders_variables_and_counts_ucs2(
    api: httpx.AsyncClient,
) -> None:
    """{{firstName}} is filled; a template with š is UCS-2 and counted by 70/67."""
    templates = (await api.get("/practice-templates")).json()["data"]
    by_name = {t["name"]: t for t in templates}
    await api.post("/patients", json=patient(mobileNumber=MOBILE))
    reminder = await api.post(
        "/messages/send",
        json={"providerId": "E-1", "practiceTemplateId": by_name["Appointment reminder"]["id"]},
    )
    assert reminder.status_code == 201
    assert reminder.json()["content"].startswith("Hi Ana, this is a reminder")
    lab = await api.post(
        "/messages/send",
        json={"providerId": "E-1", "practiceTemplateId": by_name["Lab results ready"]["id"]},
    )
    assert lab.json()["content"] == "Poštovani Horvat, vaši nalazi su spremni za preuzimanje."
    assert lab.json()["smsCount"] == 1
    long_text = await api.post("/messages/send", json={"providerId": "E-1", "content": "š" * 71})
    assert long_text.json()["smsCount"] == 2


@pytest.mark.parametrize(
    "body",
    [
        {"providerId": "E-1"},
        {"providerId": "E-1", "content": "Hi", "practiceTemplateId": "x"},
        {"content": "Hi"},
        {"providerId": "E-1", "content": ""},
        {"providerId": "E-1", "content": "Hi", "priority": "high"},
    ],
)
async def test_send_with_a_bad_body_is_400(api: httpx.AsyncClient, body: dict[str, Any]) -> None:
    """Neither or both of content/template, no providerId, empty text, unknown field: 400."""
    await api.post("/patients", json=patient(mobileNumber=MOBILE))
    assert_error(await api.post("/messages/send", json=body), 400)


async def test_send_with_unknown_template_is_404(api: httpx.AsyncClient) -> None:
    """A template id the practice does not have is 404."""
    await api.post("/patients", json=patient(mobileNumber=MOBILE))
    response = await api.post(
        "/messages/send", json={"providerId": "E-1", "practiceTemplateId": "nope"}
    )
    assert_error(response, 404)


async def test_send_to_unknown_patient(api: httpx.AsyncClient) -> None:
    """Without names and mobile: 422 naming the missing fields; with them: created."""
    missing = assert_error(
        await api.post("/messages/send", json={"providerId": "N-1", "content": "Hi"}), 422
    )
    assert any("mobileNumber" in m for m in missing["message"])
    sent = await api.post("/messages/send", json=patient("N-1", mobileNumber=MOBILE, content="Hi"))
    assert sent.status_code == 201
    assert (await api.get("/patients/syncd-demo/N-1")).json()["id"] == sent.json()["patientId"]


async def test_get_unknown_message_is_404(api: httpx.AsyncClient) -> None:
    """An unknown message id is 404."""
    assert_error(await api.get("/messages/3f2504e0-4f89-41d3-9a0c-0305e82c3301"), 404)
    assert_error(await api.get("/messages/not-a-uuid"), 404)


# ------------------------------------------------------------------ content


@pytest.mark.parametrize(
    ("path", "fields", "count"),
    [
        ("/practice-templates", {"id", "name", "content", "createdAt", "updatedAt"}, 4),
        ("/forms", {"id", "displayName"}, 3),
        ("/documents", {"id", "name"}, 3),
    ],
)
async def test_content_lists(
    api: httpx.AsyncClient, path: str, fields: set[str], count: int
) -> None:
    """Templates, forms and documents are lists with the documented fields and paging."""
    body = (await api.get(path)).json()
    assert body["count"] == count
    assert all(set(item) == fields for item in body["data"])
    paged = (await api.get(path, params={"pageSize": 1, "page": 1})).json()
    assert (len(paged["data"]), paged["count"]) == (1, count)
    assert_error(await api.get(path, params={"pageSize": 500}), 400)


async def test_content_search(api: httpx.AsyncClient) -> None:
    """searchTerm narrows the content lists."""
    assert (await api.get("/forms", params={"searchTerm": "intake"})).json()["count"] == 1
    found = (await api.get("/practice-templates", params={"searchTerm": "firstName"})).json()
    assert found["count"] == 2


# ------------------------------------------------------------------ form submissions


async def test_submission_list_and_detail(api: httpx.AsyncClient, sandbox: Sandbox) -> None:
    """List items have no data; the detail has the answers (Completed) or null (Pending)."""
    sandbox.seed_patients(sandbox.demo_practice_id, 2)
    completed = sandbox.seed_submissions(sandbox.demo_practice_id, 1, status="Completed")[0]
    pending = sandbox.seed_submissions(sandbox.demo_practice_id, 1)[0]
    listed = (await api.get("/form-submissions")).json()
    assert listed["count"] == 2
    item = listed["data"][0]
    assert set(item) == {
        "id",
        "submissionStatus",
        "createdAt",
        "updatedAt",
        "receivedAt",
        "requestedBy",
        "patient",
        "form",
    }
    assert set(item["patient"]) == {"id", "firstName", "lastName", "mobileNumber"}
    assert set(item["form"]) == {"id", "displayName"}
    detail = (await api.get(f"/form-submissions/{completed}")).json()
    assert detail["data"]["signature"].startswith("data:image/png;base64,")
    assert len(detail["data"]["signature"]) > 50_000
    assert (await api.get(f"/form-submissions/{pending}")).json()["data"] is None
    assert_error(await api.get("/form-submissions/3f2504e0-4f89-41d3-9a0c-0305e82c3301"), 404)


async def test_submission_filters_and_inclusive_bounds(
    api: httpx.AsyncClient, sandbox: Sandbox, clock: ManualClock
) -> None:
    """status/patientId/formId filter; updatedFrom and updatedTo include the boundary."""
    practice = sandbox.demo_practice_id
    first, second = sandbox.seed_patients(practice, 2)
    form_id = next(iter(sandbox.practices[practice].forms))
    early = sandbox.create_submission(practice, first, form_id)
    clock.advance(60)
    late = sandbox.create_submission(practice, second, form_id)
    sandbox.set_submission_status(late, "Opened")
    late_at = (await api.get(f"/form-submissions/{late}")).json()["updatedAt"]

    async def ids(**params: Any) -> set[str]:
        body = (await api.get("/form-submissions", params=params)).json()
        assert body["count"] == len(body["data"])
        return {s["id"] for s in body["data"]}

    assert await ids(updatedFrom=late_at) == {late}
    assert await ids(updatedTo=late_at) == {early, late}
    assert await ids(
        updatedFrom="2025-05-20T09:15:00.000Z", updatedTo="2025-05-20T09:15:00.000Z"
    ) == {early}
    assert await ids(status="Opened") == {late}
    assert await ids(patientId=first) == {early}
    assert await ids(formId=form_id) == {early, late}
    assert await ids(searchTerm="intake") == {early, late}
    for bad in ({"status": "Done"}, {"updatedFrom": "soon"}, {"patientId": "7"}, {"formId": "x"}):
        assert_error(await api.get("/form-submissions", params=bad), 400)


async def test_submissions_sharing_one_timestamp_page_completely(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    """250 submissions at one instant: a window on that instant pages through all of them."""
    sandbox.seed_patients(sandbox.demo_practice_id, 10)
    seeded = set(sandbox.seed_submissions(sandbox.demo_practice_id, 250, at=sandbox.now()))
    stamp = (await api.get("/form-submissions")).json()["data"][0]["updatedAt"]
    seen: set[str] = set()
    for page in range(3):
        body = (
            await api.get(
                "/form-submissions",
                params={"updatedFrom": stamp, "updatedTo": stamp, "page": page, "pageSize": 100},
            )
        ).json()
        assert body["count"] == 250
        seen |= {s["id"] for s in body["data"]}
    assert seen == seeded


# ------------------------------------------------------------------ isolation


async def test_two_practices_never_see_each_other(
    api: httpx.AsyncClient, raw: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    """Patients, messages and submissions of one practice are invisible to another's key."""
    other_practice = sandbox.add_practice("Other Clinic")
    other_key = sandbox.issue_key(other_practice, "syncd-demo")  # same key name on purpose
    other = {"Authorization": f"Bearer {other_key}"}
    await api.post("/patients", json=patient(mobileNumber=MOBILE))
    message = (await api.post("/messages/send", json={"providerId": "E-1", "content": "Hi"})).json()
    sandbox.seed_submissions(sandbox.demo_practice_id, 3)
    submission = (await api.get("/form-submissions")).json()["data"][0]

    async def get(path: str, **params: Any) -> httpx.Response:
        return await raw.get(API_PREFIX + path, headers=other, params=params)

    assert (await get("/patients")).json() == {"data": [], "count": 0}
    assert (await get("/form-submissions")).json() == {"data": [], "count": 0}
    assert_error(await get("/patients/syncd-demo/E-1"), 404)
    assert_error(await get(f"/messages/{message['messageId']}"), 404)
    assert_error(await get(f"/form-submissions/{submission['id']}"), 404)
    by_patient = await get("/form-submissions", patientId=submission["patient"]["id"])
    assert by_patient.json()["count"] == 0
    created = await raw.post(API_PREFIX + "/patients", headers=other, json=patient())
    assert created.status_code == 201  # same external id, other practice: a new patient
    assert created.json()["id"] != message["patientId"]


# ------------------------------------------------------------------ transport details


async def test_every_answer_carries_a_date_from_the_sandbox_clock(
    api: httpx.AsyncClient, raw: httpx.AsyncClient
) -> None:
    """Date (RFC 7231) is on successes, errors, unknown routes and admin answers."""
    responses = [
        await api.get("/patients"),
        await api.get("/patients/syncd-demo/none"),
        await raw.get(API_PREFIX + "/patients"),
        await api.get("/nowhere"),
        await raw.get("/_sandbox/stats"),
        await api.get("/openapi.json"),
    ]
    for response in responses:
        assert response.headers["date"] == "Tue, 20 May 2025 09:15:00 GMT"
        assert parsedate_to_datetime(response.headers["date"]).year == 2025


async def test_unknown_route_or_method_is_a_nest_style_404(api: httpx.AsyncClient) -> None:
    """An unknown path or an unsupported method answers 404 "Cannot METHOD path"."""
    body = assert_error(await api.get("/appointments"), 404)
    assert body["message"] == f"Cannot GET {API_PREFIX}/appointments"
    assert_error(await api.delete("/patients"), 404)
    assert_error(await api.get("/patients/"), 404)


async def test_openapi_document_is_served_without_admin_routes(raw: httpx.AsyncClient) -> None:
    """The OpenAPI doc lists the contract paths, a bearer scheme, and nothing under /_sandbox."""
    document = (await raw.get(API_PREFIX + "/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    assert "/patients/{provider}/{providerId}" in document["paths"]
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "_sandbox" not in str(document)
