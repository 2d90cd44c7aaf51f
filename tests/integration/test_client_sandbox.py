"""VoxaresClient against the sandbox over httpx.ASGITransport: every endpoint, every error."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from starlette.applications import Starlette

from syncd.exceptions import Forbidden, Invalid, NotFound, Unauthorized
from syncd.sandbox.app import create_app
from syncd.sandbox.clock import ManualClock
from syncd.sandbox.state import DEMO_API_KEY, Sandbox
from syncd.voxares import (
    ClientLimits,
    PatientUpsert,
    RetryPolicy,
    SendMessage,
    SubmissionFilters,
    VoxaresClient,
)
from syncd.voxares.contract import API_PREFIX

BASE = "http://sandbox" + API_PREFIX
MOBILE = "+385991234567"


@pytest.fixture
def clock() -> ManualClock:
    """The sandbox's clock, moved by hand."""
    return ManualClock()


@pytest.fixture
def sandbox(clock: ManualClock) -> Sandbox:
    """A fresh seeded sandbox."""
    return Sandbox(seed=3, clock=clock)


@pytest.fixture
def app(sandbox: Sandbox) -> Starlette:
    """The sandbox app without faults."""
    return create_app(sandbox)


def client_for(app: Starlette, key: str = DEMO_API_KEY) -> VoxaresClient:
    """A client on the in-process sandbox, no client-side rate limit, no retry waits."""
    return VoxaresClient(
        base_url=BASE,
        api_key=key,
        transport=httpx.ASGITransport(app=app),
        limits=ClientLimits(requests_per_second=None),
        retry=RetryPolicy.no_wait(attempts=3),
    )


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[VoxaresClient]:
    """The demo key's client."""
    async with client_for(app) as voxares:
        yield voxares


async def test_patient_upsert_get_patch_and_search(
    client: VoxaresClient, sandbox: Sandbox, clock: ManualClock
) -> None:
    """A patient is created, updated in place, read, patched and found by search."""
    upsert = PatientUpsert(
        provider_id="E-1", first_name="Ana", last_name="Horvat", date_of_birth="1990-01-15"
    )
    first = await client.upsert_patient(upsert)
    clock.advance(1)
    again = await client.upsert_patient(upsert.model_copy(update={"mobile_number": MOBILE}))
    assert first.created is True
    assert again.created is False
    assert again.patient.id == first.patient.id
    assert again.patient.mobile_number == MOBILE

    fetched = await client.get_patient("syncd-demo", "E-1")
    assert fetched.id == first.patient.id
    assert fetched.date_of_birth is not None
    assert fetched.date_of_birth.date().isoformat() == "1990-01-15"

    patched = await client.patch_patient("syncd-demo", "E-1", {"email": "ana@example.org"})
    assert patched.email == "ana@example.org"
    assert patched.first_name == "Ana"
    assert patched.updated_at is not None
    assert first.patient.created_at is not None
    assert patched.updated_at > first.patient.created_at

    found = await client.list_patients(search_term="Horvat")
    assert [p.id for p in found.data] == [first.patient.id]
    assert found.count == 1
    assert found.server_date == sandbox.now().replace(microsecond=0)
    assert client.server_time() == found.server_date


@pytest.mark.parametrize(
    ("provider", "provider_id"),
    [
        ("EHR main", "a b"),
        ("ehr", ".."),
        ("ehr", "."),
        ("ehr", "50%?x#y&z=1"),
        # The sandbox matches the raw path and decodes parameters after, as NestJS does.
        ("EHR/main", "a/b"),
        ("ehr", "x%2Fy"),
    ],
)
async def test_awkward_external_ids_round_trip_through_the_path(
    client: VoxaresClient, provider: str, provider_id: str
) -> None:
    """Provider names and ids with spaces, dots, percents and slashes address the patient."""
    created = await client.upsert_patient(
        PatientUpsert(provider=provider, provider_id=provider_id, first_name="A", last_name="B")
    )
    patient = await client.get_patient(provider, provider_id)
    patched = await client.patch_patient(provider, provider_id, {"last_name": "C"})
    assert patient.id == patched.id == created.patient.id
    assert patched.last_name == "C"


async def test_iter_pages_sees_every_patient_once(client: VoxaresClient, sandbox: Sandbox) -> None:
    """Walking 250 patients at the maximum page size yields each exactly once in 3 pages."""
    seeded = set(sandbox.seed_patients(sandbox.demo_practice_id, 250))
    pages = [page async for page in client.iter_pages(client.list_patients)]
    ids = [patient.id for page in pages for patient in page.data]
    assert len(pages) == 3
    assert len(ids) == len(set(ids)) == 250
    assert set(ids) == seeded


async def test_send_message_inline_and_by_template_then_status(
    client: VoxaresClient, sandbox: Sandbox, clock: ManualClock
) -> None:
    """An inline SMS creates the patient; a template SMS renders it; status moves on."""
    inline = await client.send_message(
        SendMessage(
            provider_id="E-2",
            content="See you tomorrow",
            first_name="Iva",
            last_name="Kos",
            mobile_number=MOBILE,
        )
    )
    assert inline.status == "Pending"
    assert inline.content == "See you tomorrow"
    assert inline.sms_count == 1

    templates = await client.list_practice_templates()
    assert templates.count == len(templates.data) > 0
    template = next(t for t in templates.data if t.content and "{{firstName}}" in t.content)
    rendered = await client.send_message(
        SendMessage(provider_id="E-2", practice_template_id=template.id)
    )
    assert rendered.content is not None
    assert "Iva" in rendered.content

    clock.advance(3600)
    later = await client.get_message(inline.message_id)
    assert later.message_id == inline.message_id
    assert later.status in {"Sent", "Delivered", "Failed"}
    assert sandbox.stats()["sendsAccepted"] == 2


async def test_forms_and_documents_are_listed(client: VoxaresClient) -> None:
    """The seeded forms and documents come back with ids and names."""
    forms = await client.list_forms()
    documents = await client.list_documents(page_size=100)
    assert forms.count == len(forms.data) > 0
    assert all(form.id and form.display_name for form in forms.data)
    assert documents.count == len(documents.data) > 0
    assert all(document.id and document.name for document in documents.data)


async def test_form_submissions_filtered_listed_and_read(
    client: VoxaresClient, sandbox: Sandbox, clock: ManualClock
) -> None:
    """Status and inclusive updatedFrom/updatedTo filters select; the detail has answers."""
    practice = sandbox.demo_practice_id
    sandbox.seed_patients(practice, 5)
    start = clock.now
    pending = sandbox.seed_submissions(practice, 3, status="Pending", at=start)
    completed = sandbox.seed_submissions(practice, 2, status="Completed", at=start)
    clock.advance(60)
    sandbox.seed_submissions(practice, 4, status="Opened")

    window = SubmissionFilters(updated_from=start, updated_to=start)
    in_window = await client.list_form_submissions(window)
    assert {s.id for s in in_window.data} == set(pending + completed)

    done = await client.list_form_submissions(SubmissionFilters(status="Completed"))
    assert {s.id for s in done.data} == set(completed)
    assert all("data" not in (s.model_extra or {}) for s in done.data)  # lists carry no answers

    detail = await client.get_form_submission(completed[0])
    assert detail.submission_status == "Completed"
    assert detail.data
    assert detail.patient is not None
    assert detail.form is not None
    assert detail.updated_at == start

    later = await client.list_form_submissions(
        SubmissionFilters(updated_from=start + timedelta(milliseconds=1))
    )
    assert later.count == 4


async def test_statuses_map_to_exceptions(app: Starlette, sandbox: Sandbox) -> None:
    """Wrong key 401, missing scope 403, unknown patient 404, bad body 400, unusable send 422."""
    async with client_for(app, "vox-nope-000") as stranger:
        with pytest.raises(Unauthorized):
            await stranger.list_forms()

    patients_only = sandbox.issue_key(sandbox.demo_practice_id, "narrow", scopes=["patients"])
    async with client_for(app, patients_only) as narrow:
        with pytest.raises(Forbidden) as forbidden:
            await narrow.list_forms()
        assert forbidden.value.api_message

    async with client_for(app) as client:
        with pytest.raises(NotFound):
            await client.get_patient("syncd-demo", "nobody")
        with pytest.raises(NotFound):
            await client.get_form_submission("00000000-0000-4000-8000-000000000000")
        with pytest.raises(Invalid) as invalid:
            await client.upsert_patient(
                PatientUpsert(provider_id="E-9", first_name="A", last_name="B", mobile_number="12")
            )
        assert invalid.value.status == 400
        assert invalid.value.api_message is not None
        assert "mobileNumber" in invalid.value.api_message
        assert "12" not in str(invalid.value).replace("status=400", "")
        with pytest.raises(Invalid) as unusable:
            await client.send_message(SendMessage(provider_id="ghost", content="hi"))
        assert unusable.value.status == 422
    assert sandbox.stats()["sendsAccepted"] == 0
