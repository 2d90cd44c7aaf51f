"""VoxaresClient builds each endpoint's request as the contract says and parses its answer."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest

from syncd.voxares import (
    ClientLimits,
    Page,
    PatientUpsert,
    RetryPolicy,
    SendMessage,
    SubmissionFilters,
    VoxaresClient,
)
from syncd.voxares.testing import ScriptedTransport, json_response

BASE = "http://sandbox/api/v1/integration"
KEY = "vox-k1-s3cr3tvalue"

PATIENT = {
    "id": "0b5f2c1e-1111-4c1e-9f00-000000000001",
    "firstName": "Ana",
    "lastName": "Kovač",
    "mobileNumber": "+385991234567",
    "email": "ana@example.org",
    "dateOfBirth": "1990-01-15T00:00:00.000Z",
    "createdAt": "2025-05-20T09:15:00.000Z",
    "updatedAt": "2025-05-20T09:15:00.000Z",
}
MESSAGE = {
    "messageId": "m-1",
    "patientId": PATIENT["id"],
    "status": "Pending",
    "smsCount": 1,
    "content": "Hello Ana",
    "sentOn": None,
    "createdAt": "2025-05-20T09:15:00.000Z",
    "updatedAt": "2025-05-20T09:15:00.000Z",
}
SUBMISSION = {
    "id": "s-1",
    "submissionStatus": "Completed",
    "createdAt": "2025-05-20T09:00:00.000Z",
    "updatedAt": "2025-05-20T09:15:00.123Z",
    "receivedAt": "2025-05-20T09:15:00.123Z",
    "requestedBy": "u-1",
    "patient": {"id": PATIENT["id"], "firstName": "Ana", "lastName": "Kovač"},
    "form": {"id": "f-1", "displayName": "Intake"},
}


def make_client(transport: ScriptedTransport, **kwargs: object) -> VoxaresClient:
    """A client on a scripted transport, without rate limit or retry waits."""
    kwargs.setdefault("limits", ClientLimits(requests_per_second=None))
    kwargs.setdefault("retry", RetryPolicy.no_wait(attempts=3))
    return VoxaresClient(base_url=BASE, api_key=KEY, transport=transport, **kwargs)  # type: ignore[arg-type]


def page_of(*items: object, count: int | None = None) -> httpx.Response:
    """A list answer holding `items` with a total count."""
    return json_response(
        200, {"data": list(items), "count": len(items) if count is None else count}
    )


async def test_upsert_sends_camelcase_body_without_nones_and_reads_created() -> None:
    """POST /patients carries the bearer key and a camelCase body; 201 means created."""
    transport = ScriptedTransport(json_response(201, PATIENT), json_response(200, PATIENT))
    async with make_client(transport) as client:
        upsert = PatientUpsert(provider_id="42", first_name="Ana", last_name="Kovač")
        created = await client.upsert_patient(upsert)
        updated = await client.upsert_patient(upsert)
    request = transport.requests[0]
    assert request.method == "POST"
    assert request.url.path == "/api/v1/integration/patients"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {
        "providerId": "42",
        "firstName": "Ana",
        "lastName": "Kovač",
    }
    assert created.created is True
    assert updated.created is False
    assert created.patient.id == PATIENT["id"]
    assert created.patient.date_of_birth == datetime(1990, 1, 15, tzinfo=UTC)


async def test_list_patients_sends_paging_and_search_and_reads_server_date() -> None:
    """GET /patients passes page, pageSize and searchTerm; the page carries the Date header."""
    transport = ScriptedTransport(page_of(PATIENT, count=41))
    async with make_client(transport) as client:
        assert client.server_time() is None
        page = await client.list_patients(search_term="Ana K", page=2, page_size=20)
    params = transport.requests[0].url.params
    assert dict(params) == {"page": "2", "pageSize": "20", "searchTerm": "Ana K"}
    assert page.count == 41
    assert [p.id for p in page.data] == [PATIENT["id"]]
    assert page.server_date == datetime(2025, 5, 20, 9, 15, tzinfo=UTC)
    assert client.server_time() == page.server_date


async def test_list_patients_omits_search_term_when_not_given() -> None:
    """Without a search term the query holds only the paging parameters."""
    transport = ScriptedTransport(page_of())
    async with make_client(transport) as client:
        await client.list_patients()
    assert dict(transport.requests[0].url.params) == {"page": "0", "pageSize": "20"}


@pytest.mark.parametrize(
    ("provider", "provider_id", "raw_path"),
    [
        ("ehr", "42", b"/api/v1/integration/patients/ehr/42"),
        ("EHR main", "a/b?c#d%e", b"/api/v1/integration/patients/EHR%20main/a%2Fb%3Fc%23d%25e"),
        ("..", ".", b"/api/v1/integration/patients/%2E%2E/%2E"),
    ],
)
async def test_get_patient_percent_encodes_path_segments(
    provider: str, provider_id: str, raw_path: bytes
) -> None:
    """Provider and providerId are percent-encoded so no value can change the path."""
    transport = ScriptedTransport(json_response(200, PATIENT))
    async with make_client(transport) as client:
        patient = await client.get_patient(provider, provider_id)
    assert transport.requests[0].url.raw_path == raw_path
    assert patient.first_name == "Ana"


async def test_empty_path_segment_is_refused_before_any_request() -> None:
    """An empty providerId would address another endpoint, so it is refused."""
    transport = ScriptedTransport()
    async with make_client(transport) as client:
        with pytest.raises(ValueError, match="empty"):
            await client.get_patient("ehr", "")
    assert transport.calls == 0


async def test_patch_patient_sends_only_the_changes_in_wire_names() -> None:
    """PATCH carries just the changed fields, snake_case names turned into camelCase."""
    transport = ScriptedTransport(json_response(200, PATIENT))
    async with make_client(transport) as client:
        await client.patch_patient("ehr", "42", {"mobile_number": "+385991111111", "email": None})
    request = transport.requests[0]
    assert request.method == "PATCH"
    assert request.url.path == "/api/v1/integration/patients/ehr/42"
    assert json.loads(request.content) == {"mobileNumber": "+385991111111", "email": None}


async def test_send_message_posts_template_send_and_parses_message() -> None:
    """POST /messages/send carries the template id and patient fields; the answer is a Message."""
    transport = ScriptedTransport(json_response(201, MESSAGE))
    async with make_client(transport) as client:
        message = await client.send_message(
            SendMessage(provider_id="42", practice_template_id="t-1", first_name="Ana")
        )
    request = transport.requests[0]
    assert (request.method, request.url.path) == ("POST", "/api/v1/integration/messages/send")
    assert json.loads(request.content) == {
        "providerId": "42",
        "practiceTemplateId": "t-1",
        "firstName": "Ana",
    }
    assert (message.message_id, message.status, message.sms_count) == ("m-1", "Pending", 1)
    assert message.sent_on is None


async def test_get_message_reads_status() -> None:
    """GET /messages/{id} returns the message with its delivery status."""
    sent = {**MESSAGE, "status": "Delivered", "sentOn": "2025-05-20T09:16:00.000Z"}
    transport = ScriptedTransport(json_response(200, sent))
    async with make_client(transport) as client:
        message = await client.get_message("m/1")
    assert transport.requests[0].url.raw_path == b"/api/v1/integration/messages/m%2F1"
    assert message.status == "Delivered"
    assert message.sent_on == datetime(2025, 5, 20, 9, 16, tzinfo=UTC)


@pytest.mark.parametrize(
    ("method_name", "path", "item", "check"),
    [
        (
            "list_practice_templates",
            "/api/v1/integration/practice-templates",
            {"id": "t-1", "name": "Reminder", "content": "Hi {{firstName}}"},
            lambda item: item.name == "Reminder" and item.content == "Hi {{firstName}}",
        ),
        (
            "list_forms",
            "/api/v1/integration/forms",
            {"id": "f-1", "displayName": "Intake"},
            lambda item: item.display_name == "Intake",
        ),
        (
            "list_documents",
            "/api/v1/integration/documents",
            {"id": "d-1", "name": "Leaflet"},
            lambda item: item.name == "Leaflet",
        ),
    ],
)
async def test_content_lists(
    method_name: str, path: str, item: dict[str, str], check: Callable[[object], bool]
) -> None:
    """Templates, forms and documents are listed with paging and parsed into their models."""
    transport = ScriptedTransport(page_of(item))
    async with make_client(transport) as client:
        page = await getattr(client, method_name)(page=1, page_size=50)
    request = transport.requests[0]
    assert request.url.path == path
    assert dict(request.url.params) == {"page": "1", "pageSize": "50"}
    assert page.count == 1
    assert page.data[0].id == item["id"]
    assert check(page.data[0])


async def test_list_form_submissions_sends_filters_in_api_format() -> None:
    """Filters become camelCase query parameters with millisecond UTC timestamps."""
    transport = ScriptedTransport(page_of(SUBMISSION))
    filters = SubmissionFilters(
        status="Completed",
        updated_from=datetime(2025, 5, 20, 9, 0, tzinfo=UTC),
        updated_to=datetime(2025, 5, 20, 10, 0, 0, 500000, tzinfo=UTC),
        form_id="f-1",
    )
    async with make_client(transport) as client:
        page = await client.list_form_submissions(filters)
    assert dict(transport.requests[0].url.params) == {
        "page": "0",
        "pageSize": "100",
        "status": "Completed",
        "updatedFrom": "2025-05-20T09:00:00.000Z",
        "updatedTo": "2025-05-20T10:00:00.500Z",
        "formId": "f-1",
    }
    summary = page.data[0]
    assert summary.submission_status == "Completed"
    assert summary.updated_at == datetime(2025, 5, 20, 9, 15, 0, 123000, tzinfo=UTC)
    assert summary.form is not None
    assert summary.form.display_name == "Intake"
    assert summary.patient is not None
    assert summary.patient.id == PATIENT["id"]


async def test_get_form_submission_returns_answers() -> None:
    """GET /form-submissions/{id} returns the submission with its `data` answers."""
    detail = {**SUBMISSION, "data": {"q1": "yes", "signature": "data:image/png;base64,AAAA"}}
    transport = ScriptedTransport(json_response(200, detail))
    async with make_client(transport) as client:
        submission = await client.get_form_submission("s-1")
    assert transport.requests[0].url.path == "/api/v1/integration/form-submissions/s-1"
    assert submission.data == detail["data"]
    assert submission.id == "s-1"


@pytest.mark.parametrize(
    ("body", "answers"),
    [
        (b'{"q": "\\u0161 \xc5\xa1", "n": 18446744073709551615, "f": 1e-05, "d": [-0]}', None),
        (b'\xef\xbb\xbf{"q": "bom"}', {"q": "bom"}),
        (b'{"n": 123456789012345678901234567890}', {"n": 123456789012345678901234567890}),
        (b'{"q": "\\ud800"}', {"q": "\ud800"}),
        (b'{"f": NaN}', None),
    ],
)
async def test_detail_bodies_parse_exactly_as_the_standard_json_module_parses_them(
    body: bytes, answers: dict[str, object] | None
) -> None:
    """A body means what the standard `json` module reads in it, and parses when it does.

    Pinned because a faster parser is tempting here (B5): orjson reads an integer beyond 64
    bits as a float (a different answer, and a different content hash), refuses a BOM,
    UTF-16, NaN and escaped lone surrogates, and saved only ~3-25 µs per 74 KB detail.
    """
    wire = json.dumps(SUBMISSION).encode()[:-1] + b', "data": ' + body.lstrip(b"\xef\xbb\xbf")
    if body.startswith(b"\xef\xbb\xbf"):
        wire = b"\xef\xbb\xbf" + wire
    wire += b"}"
    transport = ScriptedTransport(
        httpx.Response(200, content=wire, headers={"Content-Type": "application/json"})
    )
    async with make_client(transport) as client:
        submission = await client.get_form_submission("s-1")
    expected = json.loads(wire)["data"]
    assert submission.data == expected
    if answers is not None:
        assert submission.data == answers
    if "NaN" in str(body):
        assert submission.data is not None
        assert submission.data["f"] != submission.data["f"]  # NaN, as json reads it


async def test_iter_pages_walks_until_count_seen() -> None:
    """iter_pages asks page 0, 1, 2 at the maximum size and stops once `count` items came."""
    items = [{**PATIENT, "id": f"p{i}"} for i in range(5)]
    transport = ScriptedTransport(
        page_of(*items[:2], count=5), page_of(*items[2:4], count=5), page_of(items[4], count=5)
    )
    async with make_client(transport) as client:
        pages = [p async for p in client.iter_pages(client.list_patients, search_term="x")]
    assert [r.url.params["page"] for r in transport.requests] == ["0", "1", "2"]
    assert {r.url.params["pageSize"] for r in transport.requests} == {"100"}
    assert {r.url.params["searchTerm"] for r in transport.requests} == {"x"}
    assert [p.id for page in pages for p in page.data] == [f"p{i}" for i in range(5)]


async def test_iter_pages_stops_on_an_empty_page() -> None:
    """A list that shrinks below its announced count cannot make iter_pages loop forever."""
    transport = ScriptedTransport(page_of(SUBMISSION, count=10), page_of(count=10))
    async with make_client(transport) as client:
        pages = [p async for p in client.iter_pages(client.list_form_submissions, filters=None)]
    assert len(pages) == 2
    assert transport.calls == 2


@pytest.mark.parametrize(("page", "page_size"), [(-1, 20), (0, 0), (0, 101)])
async def test_out_of_range_paging_is_refused_locally(page: int, page_size: int) -> None:
    """A negative page or a pageSize outside 1..100 raises before any request is made."""
    transport = ScriptedTransport()
    async with make_client(transport) as client:
        with pytest.raises(ValueError, match="page"):
            await client.list_forms(page=page, page_size=page_size)
    assert transport.calls == 0


def test_page_is_generic_and_tolerates_extra_fields() -> None:
    """A page parses its items into the given model and keeps unknown fields."""
    from syncd.voxares import Form

    page = Page[Form].model_validate({"data": [{"id": "f", "new": 1}], "count": 1, "extra": True})
    assert page.data[0].id == "f"
    assert page.model_extra == {"extra": True}


def test_send_message_requires_exactly_one_of_content_and_template() -> None:
    """Neither or both of content and practice_template_id is a validation error."""
    with pytest.raises(ValueError, match="exactly one"):
        SendMessage(provider_id="1")
    with pytest.raises(ValueError, match="exactly one"):
        SendMessage(provider_id="1", content="hi", practice_template_id="t")
    assert SendMessage(provider_id="1", content="hi").to_body() == {
        "providerId": "1",
        "content": "hi",
    }


def test_validation_errors_do_not_echo_patient_data() -> None:
    """A rejected SendMessage does not show its input (names, phone) in the error."""
    with pytest.raises(ValueError, match="exactly one") as info:
        SendMessage(provider_id="1", first_name="Ana", mobile_number="+385991234567")
    assert "Ana" not in str(info.value)
    assert "+385991234567" not in str(info.value)


def test_model_reprs_hide_patient_data() -> None:
    """Reprs of patients, upserts, messages and submissions show ids, not personal data."""
    from syncd.voxares import Message, Patient, SubmissionDetail

    shown = " ".join(
        [
            repr(Patient.model_validate({**PATIENT, "extraSecret": "Ana"})),
            str(PatientUpsert(provider_id="42", first_name="Ana", last_name="Kovač")),
            repr(Message.model_validate(MESSAGE)),
            repr(SubmissionDetail.model_validate({**SUBMISSION, "data": {"q": "Ana"}})),
        ]
    )
    for secret in ("Ana", "Kovač", "+385991234567", "ana@example.org", "Hello", "1990"):
        assert secret not in shown
    assert PATIENT["id"] in shown


def test_api_error_body_accepts_string_or_list_message() -> None:
    """The error body's message may be a string or a NestJS-style list of strings."""
    from syncd.voxares import ApiErrorBody

    assert ApiErrorBody.model_validate({"message": "Validation failed"}).text == (
        "Validation failed"
    )
    listed = ApiErrorBody.model_validate({"statusCode": 400, "message": ["a bad", "b bad"]})
    assert listed.text == "a bad; b bad"
    assert listed.status_code == 400


def test_naive_timestamps_are_read_as_utc() -> None:
    """A timestamp without an offset is taken as UTC, so comparisons never mix naive/aware."""
    from syncd.voxares import SubmissionSummary

    summary = SubmissionSummary.model_validate(
        {"id": "s", "submissionStatus": "Pending", "updatedAt": "2025-05-20T09:15:00"}
    )
    assert summary.updated_at == datetime(2025, 5, 20, 9, 15, tzinfo=UTC)


def test_the_server_date_is_parsed_the_same_when_it_repeats() -> None:
    """`_http_date` keeps recent answers; a repeated, new or broken Date still reads right."""
    from syncd.http_dates import parse_http_date as _http_date

    first = "Fri, 04 Dec 2026 17:26:34 GMT"
    second = "Fri, 04 Dec 2026 17:26:35 GMT"
    for _ in range(3):
        assert _http_date(first) == datetime(2026, 12, 4, 17, 26, 34, tzinfo=UTC)
        assert _http_date(second) == datetime(2026, 12, 4, 17, 26, 35, tzinfo=UTC)
        assert _http_date("Fri, 04 Dec 2026 19:26:34 +0200") == _http_date(first)
        assert _http_date("yesterday") is None
        assert _http_date("Fri, 04 Dec 2026 17:26:34 -0000") is None  # no zone: not trusted
        assert _http_date(None) is None
        assert _http_date("") is None
