"""The client builds each request itself (cheaper); it must be the request httpx would build.

The reference is `AsyncClient.build_request` on a client configured as `VoxaresClient`
configured its httpx client before it built requests itself: base URL, the client's
headers plus the key's `Authorization`, the timeouts, params and JSON body as given.
"""

from __future__ import annotations

import contextlib
from http.cookiejar import CookieJar
from typing import Any

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.exceptions import VoxaresMalformedResponse
from syncd.voxares import ClientLimits, RetryPolicy, SubmissionFilters, VoxaresClient, contract
from syncd.voxares.client import USER_AGENT, Timeouts
from syncd.voxares.replies import ResponseCookies
from syncd.voxares.urls import render_path

KEY = "vox-k1-requests-test"
BASES = (
    "http://sandbox/api/v1/integration",
    "http://sandbox/api/v1/integration/",
    "https://api.voxares.example/api/v1/integration",
    "http://127.0.0.1:8123",
    "http://[::1]:8123/v1",
    "https://API.Voxares.example:443/api/v1/integration",
)
# Ids and search terms as an EHR could hold them: any text, slashes, dots, percent signs,
# spaces, non-ASCII letters (control characters are refused by httpx either way).
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30)


def reference(base_url: str) -> httpx.AsyncClient:
    """An httpx client set up as `VoxaresClient` sets up its own."""
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=Timeouts().to_httpx(),
        headers={"Accept": "application/json", "User-Agent": USER_AGENT},
        follow_redirects=False,
    )


def expected(
    base_url: str,
    method: str,
    path: str,
    *,
    params: dict[str, str] | None = None,
    json: Any = None,
) -> httpx.Request:
    return reference(base_url).build_request(
        method, path, params=params, json=json, headers={"Authorization": f"Bearer {KEY}"}
    )


async def sent_by(base_url: str, call: Any) -> httpx.Request:
    """The one request `call(client)` sends, answered with an empty JSON object."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"data": [], "count": 0})

    client = VoxaresClient(
        base_url=base_url,
        api_key=KEY,
        transport=httpx.MockTransport(answer),
        limits=ClientLimits(requests_per_second=None),
        retry=RetryPolicy.no_wait(attempts=1),
    )
    async with client:
        # Only the request matters here; a detail or patient does not parse from this body.
        with contextlib.suppress(VoxaresMalformedResponse):
            await call(client)
    assert len(seen) == 1
    return seen[0]


def assert_same(actual: httpx.Request, wanted: httpx.Request) -> None:
    assert actual.method == wanted.method
    assert actual.url == wanted.url
    assert str(actual.url) == str(wanted.url)
    assert actual.url.raw_path == wanted.url.raw_path
    assert actual.headers.raw == wanted.headers.raw
    assert actual.read() == wanted.read()
    assert actual.extensions["timeout"] == wanted.extensions["timeout"]


@settings(max_examples=60, deadline=None)
@given(base_url=st.sampled_from(BASES), submission_id=texts)
async def test_a_detail_get_is_the_request_httpx_would_build(
    base_url: str, submission_id: str
) -> None:
    actual = await sent_by(base_url, lambda c: c.get_form_submission(submission_id))
    path = render_path(contract.FORM_SUBMISSION_BY_ID, submission_id=submission_id)
    assert_same(actual, expected(base_url, "GET", path))


@settings(max_examples=60, deadline=None)
@given(
    base_url=st.sampled_from(BASES),
    term=st.none() | texts,
    page=st.integers(0, 10_000),
    page_size=st.integers(1, contract.MAX_PAGE_SIZE),
)
async def test_a_list_get_with_params_is_the_request_httpx_would_build(
    base_url: str, term: str | None, page: int, page_size: int
) -> None:
    actual = await sent_by(
        base_url, lambda c: c.list_patients(search_term=term, page=page, page_size=page_size)
    )
    params = {"page": str(page), "pageSize": str(page_size)}
    if term is not None:
        params["searchTerm"] = term
    assert_same(actual, expected(base_url, "GET", contract.PATIENTS, params=params))


async def test_a_filtered_submission_list_is_the_request_httpx_would_build() -> None:
    filters = SubmissionFilters(status="Completed", form_id="form 1/ü")
    actual = await sent_by(BASES[0], lambda c: c.list_form_submissions(filters, page=2))
    params = {
        "page": "2",
        "pageSize": str(contract.MAX_PAGE_SIZE),
        **filters.to_params(),
    }
    assert_same(actual, expected(BASES[0], "GET", contract.FORM_SUBMISSIONS, params=params))


@settings(max_examples=40, deadline=None)
@given(
    base_url=st.sampled_from(BASES),
    provider_id=texts,
    changes=st.dictionaries(st.sampled_from(["firstName", "lastName", "email"]), texts),
)
async def test_a_patch_with_a_json_body_is_the_request_httpx_would_build(
    base_url: str, provider_id: str, changes: dict[str, str]
) -> None:
    actual = await sent_by(base_url, lambda c: c.patch_patient("ehr", provider_id, changes))
    path = render_path(contract.PATIENT_BY_EXTERNAL_ID, provider="ehr", provider_id=provider_id)
    assert_same(actual, expected(base_url, "PATCH", path, json=changes))


async def test_a_cookie_the_server_set_is_sent_back_as_httpx_would() -> None:
    """httpx keeps cookies a response sets and sends them on later requests; so does the client."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        headers = {"Set-Cookie": "affinity=node-2; Path=/"} if len(seen) == 1 else {}
        return httpx.Response(200, json={"data": [], "count": 0}, headers=headers)

    client = VoxaresClient(
        base_url=BASES[0],
        api_key=KEY,
        transport=httpx.MockTransport(answer),
        limits=ClientLimits(requests_per_second=None),
        retry=RetryPolicy.no_wait(attempts=1),
    )
    async with client:
        await client.list_forms()
        await client.list_forms(page=1)
    assert "cookie" not in seen[0].headers
    assert seen[1].headers["cookie"] == "affinity=node-2"
    wanted = reference(BASES[0])
    wanted.cookies.set("affinity", "node-2", domain="sandbox.local", path="/")
    built = wanted.build_request(
        "GET",
        contract.FORMS,
        params={"page": "1", "pageSize": str(contract.DEFAULT_PAGE_SIZE)},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert_same(seen[1], built)


async def test_responses_are_read_for_cookies_only_when_they_set_some() -> None:
    """The jar skips responses without Set-Cookie (the cheap path) and keeps the others'.

    Also fails if httpx stops keeping its jar in `AsyncClient._cookies`, where the client
    puts the skipping jar (the public setter would copy it into a plain `Cookies`).
    """
    read_by_the_jar: list[int] = []

    class WatchingJar(CookieJar):
        def extract_cookies(self, response: Any, request: Any) -> None:
            read_by_the_jar.append(len(read_by_the_jar))
            super().extract_cookies(response, request)

    replies = [
        httpx.Response(200, json={"data": [], "count": 0}),
        httpx.Response(200, json={"data": [], "count": 0}, headers={"Set-Cookie": "a=1"}),
        httpx.Response(200, json={"data": [], "count": 0}, headers={"set-cookie2": "b=2"}),
    ]
    client = VoxaresClient(
        base_url=BASES[0],
        api_key=KEY,
        transport=httpx.MockTransport(lambda request: replies.pop(0)),
        limits=ClientLimits(requests_per_second=None),
        retry=RetryPolicy.no_wait(attempts=1),
    )
    assert isinstance(client._http.cookies, ResponseCookies)
    client._http._cookies = ResponseCookies(WatchingJar())
    async with client:
        for page in range(3):
            await client.list_forms(page=page)
    assert read_by_the_jar == [0, 1]  # the second and third responses; the first set none
    assert dict(client._http.cookies) == {"a": "1"}  # Set-Cookie2 is off in the default policy
