"""Each kind of injected fault, over ASGI: what the client sees and what the server did."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from syncd.sandbox.app import create_app
from syncd.sandbox.clock import ManualClock
from syncd.sandbox.faults import FaultConfig, FaultRule, RateLimit
from syncd.sandbox.middleware import DroppedConnection
from syncd.sandbox.state import DEMO_API_KEY, Sandbox
from syncd.voxares.contract import API_PREFIX
from tests.waiting import async_wait_until

MOBILE = "+385991234567"
PATIENT = {"providerId": "E-1", "firstName": "Ana", "lastName": "Horvat", "mobileNumber": MOBILE}
SEND = {"providerId": "E-1", "content": "Your appointment is tomorrow"}


@pytest.fixture
def sandbox() -> Sandbox:
    """A fresh sandbox on a manual clock."""
    return Sandbox(seed=1, clock=ManualClock())


@pytest.fixture
def app(sandbox: Sandbox) -> Starlette:
    """The sandbox app; each test sets its faults through the admin endpoint. Its rate
    limit's clock stands still: a bucket refills only when a test says so."""
    return create_app(sandbox, fault_clock=lambda: 1000.0)


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """A client at the server root with the demo key."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://sandbox",
        headers={"Authorization": f"Bearer {DEMO_API_KEY}"},
    ) as http:
        yield http


async def set_faults(client: httpx.AsyncClient, faults: FaultConfig) -> None:
    """Configure faults at run time through the admin endpoint."""
    response = await client.put("/_sandbox/faults", json=faults.model_dump(mode="json"))
    assert response.status_code == 200, response.text


async def post(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> httpx.Response:
    """POST to a contract path."""
    return await client.post(API_PREFIX + path, json=body)


def patients(sandbox: Sandbox) -> int:
    """How many patients the demo practice has."""
    return len(sandbox.practices[sandbox.demo_practice_id].patients)


def sends(sandbox: Sandbox) -> int:
    """How many SMS the sandbox accepted."""
    return int(sandbox.stats()["sendsAccepted"])


async def test_faults_are_set_and_read_at_run_time(client: httpx.AsyncClient) -> None:
    """PUT replaces the config, GET returns it, an invalid one is 400 naming the field."""
    await set_faults(client, FaultConfig(error_rates={503: 0.5}, seed=9))
    current = (await client.get("/_sandbox/faults")).json()
    assert current["error_rates"] == {"503": 0.5}
    assert current["seed"] == 9
    bad = await client.put("/_sandbox/faults", json={"drop_rate": 2})
    assert bad.status_code == 400
    assert any("drop_rate" in m for m in bad.json()["message"])


async def test_error_before_processing_changes_nothing(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    """An injected 500 before processing: error body, no patient created, counted in stats."""
    await set_faults(client, FaultConfig(error_rates={500: 1.0}))
    response = await post(client, "/patients", PATIENT)
    assert response.status_code == 500
    assert response.json()["statusCode"] == 500
    assert patients(sandbox) == 0
    assert sandbox.stats()["requests"]["POST /patients 500"] == 1


async def test_error_after_processing_has_done_the_work(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    """An injected 502 after processing: the client sees an error, the SMS was accepted."""
    await set_faults(client, FaultConfig(error_rates={502: 1.0}, error_phase="after"))
    response = await post(client, "/messages/send", {**SEND, **PATIENT})
    assert response.status_code == 502
    assert sends(sandbox) == 1


async def test_injected_503_and_429_carry_retry_after(client: httpx.AsyncClient) -> None:
    """503 and 429 answers say when to come back."""
    await set_faults(client, FaultConfig(error_rates={503: 1.0}, retry_after_seconds=7))
    response = await client.get(API_PREFIX + "/patients")
    assert (response.status_code, response.headers["retry-after"]) == (503, "7")


async def test_rate_limit_answers_429_past_the_burst(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    """A token bucket of burst 2: the third quick request is 429 with Retry-After."""
    await set_faults(client, FaultConfig(rate_limit=RateLimit(rps=0.5, burst=2)))
    statuses = [(await client.get(API_PREFIX + "/forms")).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    limited = await client.get(API_PREFIX + "/forms")
    assert int(limited.headers["retry-after"]) >= 1
    assert sandbox.stats()["requests"]["GET /forms 429"] == 2


async def test_latency_delays_answers(client: httpx.AsyncClient) -> None:
    """A fixed latency of 150 ms makes each answer take at least that long."""
    await set_faults(client, FaultConfig(latency_ms=150))
    started = time.monotonic()
    response = await client.get(API_PREFIX + "/forms")
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.15


async def test_hang_before_processing_times_out_the_client_and_does_nothing(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    """A hang before processing: a client that gives up leaves no patient behind."""
    await set_faults(client, FaultConfig(hang_rate=1.0, hang_seconds=600))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(post(client, "/patients", PATIENT), 0.1)
    assert patients(sandbox) == 0


async def test_hang_before_processing_ends_in_504(client: httpx.AsyncClient) -> None:
    """A patient client gets a 504 once the hang is over."""
    await set_faults(client, FaultConfig(hang_rate=1.0, hang_seconds=0.1))
    response = await post(client, "/patients", PATIENT)
    assert response.status_code == 504


async def test_hang_after_processing_loses_the_answer_but_keeps_the_work(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    """A hang after processing: the client times out, yet the SMS was accepted."""
    await set_faults(client, FaultConfig(hang_rate=1.0, hang_seconds=600, hang_phase="after"))
    sending = asyncio.create_task(post(client, "/messages/send", {**SEND, **PATIENT}))
    # However long the processing takes here, the answer does not come after it.
    await async_wait_until(lambda: sends(sandbox) == 1, "the SMS to be accepted")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(sending, 0.1)
    assert sends(sandbox) == 1


async def test_drop_before_processing(client: httpx.AsyncClient, sandbox: Sandbox) -> None:
    """A dropped connection before processing is a transport error and nothing was sent."""
    await set_faults(client, FaultConfig(drop_rate=1.0))
    with pytest.raises(httpx.RemoteProtocolError):
        await post(client, "/messages/send", {**SEND, **PATIENT})
    assert sends(sandbox) == 0
    assert sandbox.stats()["requests"]["POST /messages/send dropped"] == 1


async def test_drop_after_processing(client: httpx.AsyncClient, sandbox: Sandbox) -> None:
    """A dropped connection after processing is the same error, but the SMS was accepted."""
    await set_faults(client, FaultConfig(drop_rate=1.0, drop_phase="after"))
    with pytest.raises(DroppedConnection):
        await post(client, "/messages/send", {**SEND, **PATIENT})
    assert sends(sandbox) == 1


async def test_malformed_json_body(client: httpx.AsyncClient, sandbox: Sandbox) -> None:
    """A 2xx whose body is not JSON; the upsert itself happened."""
    await set_faults(client, FaultConfig(malformed_json_rate=1.0))
    response = await post(client, "/patients", PATIENT)
    assert response.status_code == 201
    with pytest.raises(json.JSONDecodeError):
        response.json()
    assert patients(sandbox) == 1


async def test_truncated_body(client: httpx.AsyncClient, sandbox: Sandbox) -> None:
    """A 2xx whose body is the first half of the real one."""
    sandbox.seed_patients(sandbox.demo_practice_id, 3)
    whole = (await client.get(API_PREFIX + "/patients")).content
    await set_faults(client, FaultConfig(truncated_body_rate=1.0))
    response = await client.get(API_PREFIX + "/patients")
    assert response.status_code == 200
    assert response.content == whole[: len(whole) // 2]
    assert int(response.headers["content-length"]) == len(response.content)


async def test_rule_targets_only_sms_sends(client: httpx.AsyncClient, sandbox: Sandbox) -> None:
    """A rule on POST /messages/send loses only those answers; upserts pass untouched."""
    rule = FaultRule(method="POST", path_prefix="/messages/send", drop_rate=1.0, drop_phase="after")
    await set_faults(client, FaultConfig(rules=[rule]))
    assert (await post(client, "/patients", PATIENT)).status_code == 201
    with pytest.raises(httpx.RemoteProtocolError):
        await post(client, "/messages/send", SEND)
    assert sends(sandbox) == 1
    assert (await client.get(API_PREFIX + "/patients/syncd-demo/E-1")).status_code == 200


async def test_faults_never_touch_admin_or_openapi(client: httpx.AsyncClient) -> None:
    """With every contract request failing, /_sandbox and the OpenAPI doc still answer."""
    await set_faults(client, FaultConfig(error_rates={500: 1.0}))
    assert (await client.get("/_sandbox/stats")).status_code == 200
    assert (await client.get(API_PREFIX + "/openapi.json")).status_code == 200
    assert (await client.get(API_PREFIX + "/forms")).status_code == 500


async def test_shuffled_lists_change_order_but_not_content(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    """With shuffling on, the same page request comes back in different orders."""
    sandbox.seed_patients(sandbox.demo_practice_id, 30)
    await set_faults(client, FaultConfig(shuffle_lists=True, seed=3))
    orders = []
    for _ in range(5):
        body = (await client.get(API_PREFIX + "/patients", params={"pageSize": 100})).json()
        orders.append([p["id"] for p in body["data"]])
    assert len({tuple(o) for o in orders}) > 1
    assert len({frozenset(o) for o in orders}) == 1


async def test_list_order_by_updated_desc(client: httpx.AsyncClient, sandbox: Sandbox) -> None:
    """list_order=updated_desc puts the most recently updated submission first."""
    sandbox.seed_patients(sandbox.demo_practice_id, 3)
    ids = sandbox.seed_submissions(sandbox.demo_practice_id, 5)
    sandbox.set_submission_status(ids[2], "Opened")
    await set_faults(client, FaultConfig(list_order="updated_desc"))
    first = (await client.get(API_PREFIX + "/form-submissions")).json()["data"][0]
    assert first["id"] == ids[2]


async def test_clock_offset_moves_date_header_and_timestamps(
    client: httpx.AsyncClient,
) -> None:
    """A server clock one hour ahead shows in Date and in createdAt."""
    await set_faults(client, FaultConfig(clock_offset_seconds=3600))
    response = await post(client, "/patients", PATIENT)
    assert response.headers["date"] == "Tue, 20 May 2025 10:15:00 GMT"
    assert response.json()["createdAt"] == "2025-05-20T10:15:00.000Z"


async def test_mutation_between_pages(client: httpx.AsyncClient, sandbox: Sandbox) -> None:
    """With mutate_during_paging=1, asking for page 1 first changes some submissions."""
    sandbox.seed_patients(sandbox.demo_practice_id, 5)
    sandbox.seed_submissions(sandbox.demo_practice_id, 40)
    await set_faults(client, FaultConfig(mutate_during_paging=1.0, mutate_count=3, seed=2))
    versions = len(sandbox.submission_versions())
    await client.get(API_PREFIX + "/form-submissions", params={"status": "Pending"})
    assert len(sandbox.submission_versions()) == versions  # the first page is left alone
    await client.get(API_PREFIX + "/form-submissions", params={"status": "Pending", "page": 1})
    assert len(sandbox.submission_versions()) == versions + 3


async def test_same_fault_seed_replays_the_same_outcomes(sandbox: Sandbox) -> None:
    """Two apps with one fault seed answer the same request sequence with the same statuses."""
    faults = FaultConfig(seed=11, error_rates={500: 0.3, 503: 0.2})
    runs = []
    for _ in range(2):
        app = create_app(Sandbox(seed=1), faults)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://sandbox" + API_PREFIX,
            headers={"Authorization": f"Bearer {DEMO_API_KEY}"},
        ) as http:
            runs.append([(await http.get("/forms")).status_code for _ in range(40)])
    assert runs[0] == runs[1]
    assert {200, 500, 503} == set(runs[0])
