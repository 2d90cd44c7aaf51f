"""The form-submission freedoms, set over `/_sandbox/faults` and seen through the API (ASGI)."""

import email.utils
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from syncd.sandbox.app import create_app
from syncd.sandbox.clock import ManualClock
from syncd.sandbox.state import DEMO_API_KEY, Sandbox
from syncd.voxares.contract import API_PREFIX, format_timestamp, parse_timestamp

SUBMISSIONS = API_PREFIX + "/form-submissions"
GONE = {"statusCode": 404, "message": "Form submission not found", "error": "Not Found"}


@pytest.fixture
def clock() -> ManualClock:
    """A manual clock at 2025-05-20T09:15:00Z."""
    return ManualClock()


@pytest.fixture
def sandbox(clock: ManualClock) -> Sandbox:
    """A fresh sandbox on the manual clock."""
    return Sandbox(seed=1, clock=clock)


@pytest.fixture
async def client(sandbox: Sandbox) -> AsyncIterator[httpx.AsyncClient]:
    """A client at the server root with the demo key (admin routes need none)."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(sandbox)),
        base_url="http://sandbox",
        headers={"Authorization": f"Bearer {DEMO_API_KEY}"},
    ) as http:
        yield http


async def admin(client: httpx.AsyncClient, method: str, path: str, **kw: Any) -> Any:
    """Call an admin endpoint; its JSON body (2xx expected)."""
    response = await client.request(method, "/_sandbox" + path, **kw)
    assert response.is_success, response.text
    return response.json()


async def seed(client: httpx.AsyncClient, count: int, status: str = "Pending") -> list[str]:
    """Three patients (once) and `count` submissions in `status`, through the admin API."""
    if not (await admin(client, "GET", "/stats"))["patients"]:
        await admin(client, "POST", "/patients", json={"count": 3})
    body = await admin(client, "POST", "/submissions", json={"count": count, "status": status})
    return list(body["ids"])


async def listing(client: httpx.AsyncClient, **params: Any) -> dict[str, tuple[str, str]]:
    """id -> (status, updatedAt) of every submission listed, page after page."""
    seen: dict[str, tuple[str, str]] = {}
    page = 0
    while True:
        response = await client.get(SUBMISSIONS, params={**params, "page": page, "pageSize": 50})
        assert response.status_code == 200, response.text
        body = response.json()
        seen |= {i["id"]: (i["submissionStatus"], i["updatedAt"]) for i in body["data"]}
        page += 1
        if page * 50 >= body["count"]:
            return seen


async def test_freedoms_are_set_read_back_and_validated(client: httpx.AsyncClient) -> None:
    """PUT /_sandbox/faults takes the freedoms, GET returns them, bad values are 400."""
    wanted = {
        "updated_at_precision": "us",
        "late_visibility": {"rate": 0.2, "distribution": "uniform", "max_seconds": 900},
        "detail_lag_rate": 0.1,
        "detail_lag_versions": 2,
        "detail_gone_rate": 0.01,
        "tie_rate": 0.5,
    }
    await admin(client, "PUT", "/faults", json=wanted)
    current = await admin(client, "GET", "/faults")
    assert {k: current[k] for k in wanted if k != "late_visibility"} == {
        k: v for k, v in wanted.items() if k != "late_visibility"
    }
    assert current["late_visibility"]["max_seconds"] == 900
    for bad in (
        {"updated_at_precision": "ns"},
        {"late_visibility": {"rate": 2}},
        {"late_visibility": {"max_seconds": 10**6}},
        {"detail_lag_versions": 0},
    ):
        response = await client.put("/_sandbox/faults", json=bad)
        assert response.status_code == 400, bad
    await admin(client, "POST", "/reset")
    assert (await admin(client, "GET", "/faults"))["updated_at_precision"] == "ms"


async def test_microsecond_storage_over_http(client: httpx.AsyncClient) -> None:
    """With "us", a window ending on the rendered ms misses the submissions stored just after
    it, while one ending 1 ms later finds them all; every timestamp renders milliseconds."""
    await admin(client, "PUT", "/faults", json={"updated_at_precision": "us", "seed": 3})
    ids = set(await seed(client, 20))
    everything = await listing(client)
    assert set(everything) == ids
    rendered = {at for _, at in everything.values()}
    assert len(rendered) == 1
    at = rendered.pop()
    next_ms = format_timestamp(parse_timestamp(at) + timedelta(milliseconds=1))
    assert len(await listing(client, updatedFrom=at, updatedTo=at)) <= 5
    assert set(await listing(client, updatedFrom=at, updatedTo=next_ms)) == ids
    assert not await listing(client, updatedFrom=next_ms)


async def test_late_visibility_over_http(client: httpx.AsyncClient, clock: ManualClock) -> None:
    """Late writes stay out of list and detail until their time; the ground truth says when
    they will all be visible, and publish-pending makes that now."""
    late = {"rate": 1.0, "distribution": "fixed", "mean_seconds": 600}
    await admin(client, "PUT", "/faults", json={"late_visibility": late})
    ids = await seed(client, 5)
    assert await listing(client) == {}
    assert (await client.get(f"{SUBMISSIONS}/{ids[0]}")).status_code == 404
    truth = await admin(client, "GET", "/final-versions")
    assert truth["pendingWrites"] == 5
    assert truth["allVisibleAt"] == "2025-05-20T09:25:00.000Z"
    assert {r["id"]: r["status"] for r in truth["data"]} == dict.fromkeys(ids, "Pending")
    clock.advance(600)
    assert set(await listing(client)) == set(ids)
    await admin(client, "POST", f"/submissions/{ids[0]}/transition", json={"status": "Opened"})
    assert (await listing(client))[ids[0]][0] == "Pending"
    detail = (await client.get(f"{SUBMISSIONS}/{ids[0]}")).json()
    assert detail["submissionStatus"] == "Pending"
    assert await admin(client, "POST", "/publish-pending", json={}) == {"published": 1}
    assert (await listing(client))[ids[0]][0] == "Opened"
    assert (await admin(client, "GET", "/final-versions"))["pendingWrites"] == 0


async def test_lagging_detail_over_http(client: httpx.AsyncClient) -> None:
    """With detail_lag_rate=1, the detail is a version older than the list item."""
    submission_id = (await seed(client, 1, status="Completed"))[0]
    await admin(client, "PUT", "/faults", json={"detail_lag_rate": 1.0})
    status, listed_at = (await listing(client))[submission_id]
    detail = (await client.get(f"{SUBMISSIONS}/{submission_id}")).json()
    assert status == "Completed"
    assert detail["submissionStatus"] == "Pending"
    assert parse_timestamp(detail["updatedAt"]) < parse_timestamp(listed_at)


async def test_gone_detail_over_http(client: httpx.AsyncClient) -> None:
    """With detail_gone_rate=1, a listed submission's detail is the contract's 404 and it is
    gone from later lists; the ground truth marks it deleted."""
    ids = await seed(client, 3, status="Completed")
    await admin(client, "PUT", "/faults", json={"detail_gone_rate": 1.0})
    assert set(await listing(client)) == set(ids)
    response = await client.get(f"{SUBMISSIONS}/{ids[1]}")
    assert (response.status_code, response.json()) == (404, GONE)
    assert set(await listing(client)) == {ids[0], ids[2]}
    truth = {r["id"]: r for r in (await admin(client, "GET", "/final-versions"))["data"]}
    assert [truth[i]["deleted"] for i in ids] == [False, True, False]
    assert truth[ids[1]]["status"] == "Completed"


async def test_ties_over_http(client: httpx.AsyncClient, clock: ManualClock) -> None:
    """With tie_rate and "us", simulated writes 1 ms apart pile onto shared milliseconds:
    a width-0 window on such a millisecond misses most of its group, [t, t + 1 ms] has all."""
    await admin(client, "POST", "/patients", json={"count": 20})
    await admin(client, "PUT", "/faults", json={"tie_rate": 0.9, "updated_at_precision": "us"})
    for _ in range(200):
        clock.advance(0.001)
        await admin(client, "POST", "/tick", json={"events": 1})
    everything = await listing(client)
    groups = Counter(at for _, at in everything.values())
    at, size = groups.most_common(1)[0]
    assert size >= 5  # of the versions still listed; a tie group holds ~10 writes
    group = {i for i, (_, stamp) in everything.items() if stamp == at}
    next_ms = format_timestamp(parse_timestamp(at) + timedelta(milliseconds=1))
    assert len(await listing(client, updatedFrom=at, updatedTo=at)) < size
    assert group <= set(await listing(client, updatedFrom=at, updatedTo=next_ms))


async def test_freedoms_work_with_shuffle_mutation_and_clock_offset(
    client: httpx.AsyncClient, sandbox: Sandbox, clock: ManualClock
) -> None:
    """Every freedom at once with shuffled lists, page mutation and a skewed server clock: a
    list item or detail is always a version already visible; a 404 detail is gone for good;
    once all writes are visible a full listing equals the ground truth."""
    faults = {
        "seed": 9,
        "updated_at_precision": "us",
        "late_visibility": {"rate": 0.3, "distribution": "uniform", "max_seconds": 120},
        "detail_lag_rate": 0.2,
        "detail_gone_rate": 0.05,
        "tie_rate": 0.5,
        "shuffle_lists": True,
        "mutate_during_paging": 0.5,
        "clock_offset_seconds": -3600,
    }
    await admin(client, "PUT", "/faults", json=faults)
    await seed(client, 40)
    gone: set[str] = set()
    lagged = 0

    def visible_version(submission_id: str, status: str, at: str) -> bool:
        now = sandbox.now()
        return any(
            (v.status, format_timestamp(v.updated_at)) == (status, at) and v.visible_at <= now
            for v in sandbox.submissions[submission_id].versions
        )

    for _ in range(10):
        clock.advance(7)
        await admin(client, "POST", "/tick", json={"events": 10})
        listed = await listing(client)
        assert not gone & set(listed)
        for submission_id, (status, at) in listed.items():
            assert visible_version(submission_id, status, at)
            response = await client.get(f"{SUBMISSIONS}/{submission_id}")
            if response.status_code == 404:
                assert response.json() == GONE
                gone.add(submission_id)
                continue
            detail = response.json()
            assert visible_version(submission_id, detail["submissionStatus"], detail["updatedAt"])
            lagged += parse_timestamp(detail["updatedAt"]) < parse_timestamp(at)
    assert gone
    assert lagged
    date = email.utils.parsedate_to_datetime(response.headers["date"])
    assert abs(date - (clock.now - timedelta(hours=1))) < timedelta(seconds=1)
    assert (await admin(client, "GET", "/final-versions"))["pendingWrites"]
    await admin(client, "POST", "/publish-pending", json={})
    truth = await admin(client, "GET", "/final-versions")
    assert truth["pendingWrites"] == 0
    assert abs(parse_timestamp(truth["now"]) - date) < timedelta(seconds=1)
    expected = {r["id"]: (r["status"], r["updatedAt"]) for r in truth["data"] if not r["deleted"]}
    assert {r["id"] for r in truth["data"] if r["deleted"]} == gone
    await admin(client, "PUT", "/faults", json={"clock_offset_seconds": -3600})
    assert await listing(client) == expected
