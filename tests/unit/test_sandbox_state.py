"""The sandbox's state and logic, driven directly (no HTTP)."""

import random
import re
from datetime import UTC, datetime, timedelta

import pytest

from syncd.sandbox.clock import ManualClock
from syncd.sandbox.errors import ApiError
from syncd.sandbox.records import ApiKey
from syncd.sandbox.state import (
    DEMO_API_KEY,
    MessageTiming,
    Sandbox,
    SubmissionQuery,
    send_fingerprint,
)
from syncd.voxares.contract import parse_timestamp

START = datetime(2025, 5, 20, 9, 15, tzinfo=UTC)  # ManualClock's default start


@pytest.fixture
def clock() -> ManualClock:
    """A manual clock at 2025-05-20T09:15:00Z."""
    return ManualClock()


@pytest.fixture
def sandbox(clock: ManualClock) -> Sandbox:
    """A fresh sandbox on the manual clock."""
    return Sandbox(seed=1, clock=clock)


@pytest.fixture
def key(sandbox: Sandbox) -> ApiKey:
    """The demo key."""
    found = sandbox.authenticate(DEMO_API_KEY)
    assert found is not None
    return found


def _patient(provider_id: str = "E-1", **extra: object) -> dict[str, object]:
    return {"providerId": provider_id, "firstName": "Ana", "lastName": "Horvat", **extra}


def test_demo_key_has_every_scope_and_keys_have_the_documented_shape(sandbox: Sandbox) -> None:
    """The demo key works with all scopes; new keys look like vox-<id>-<secret>."""
    demo = sandbox.authenticate(DEMO_API_KEY)
    assert demo is not None
    assert demo.practice_id == sandbox.demo_practice_id
    assert demo.scopes == {"patients", "messages", "content", "form-submissions"}
    token = sandbox.issue_key(sandbox.demo_practice_id, "ehr", ["patients"])
    assert re.fullmatch(r"vox-[0-9a-f]+-[0-9a-f]+", token)
    issued = sandbox.authenticate(token)
    assert issued is not None
    assert issued.scopes == {"patients"}
    assert sandbox.authenticate("vox-demo-wrong") is None
    assert DEMO_API_KEY not in repr(demo)


def test_same_seed_gives_same_ids() -> None:
    """Two sandboxes with one seed create the same ids in the same order."""
    first, second = Sandbox(seed=5), Sandbox(seed=5)
    assert first.demo_practice_id == second.demo_practice_id
    assert first.seed_patients(first.demo_practice_id, 3) == second.seed_patients(
        second.demo_practice_id, 3
    )
    assert Sandbox(seed=6).demo_practice_id != first.demo_practice_id


def test_upsert_creates_then_updates_by_provider_and_provider_id(
    sandbox: Sandbox, key: ApiKey, clock: ManualClock
) -> None:
    """The first POST creates, the second with the same external id updates the same patient."""
    created, patient = sandbox.upsert_patient(key, _patient(mobileNumber="+385991234567"))
    assert created
    clock.advance(5)
    created_again, same = sandbox.upsert_patient(key, _patient(lastName="Babić"))
    assert not created_again
    assert same.id == patient.id
    assert same.last_name == "Babić"
    assert same.mobile_number == "+385991234567"  # absent field kept (ASSUMED)
    assert same.updated_at == START + timedelta(seconds=5)
    assert same.provider == "syncd-demo"  # the key's name


def test_upsert_with_null_clears_and_another_provider_is_another_patient(
    sandbox: Sandbox, key: ApiKey
) -> None:
    """null clears an optional field; the same providerId under another provider is distinct."""
    _, patient = sandbox.upsert_patient(key, _patient(email="ana@example.org"))
    sandbox.upsert_patient(key, _patient(email=None))
    assert patient.email is None
    created, other = sandbox.upsert_patient(key, _patient(provider="other-ehr"))
    assert created
    assert other.id != patient.id


def test_patient_object_has_no_provider_and_a_midnight_birth_datetime(
    sandbox: Sandbox, key: ApiKey
) -> None:
    """The wire object omits provider/providerId; dateOfBirth is midnight UTC."""
    _, patient = sandbox.upsert_patient(key, _patient(dateOfBirth="1990-01-15"))
    wire = patient.to_api()
    assert "provider" not in wire
    assert "providerId" not in wire
    assert wire["dateOfBirth"] == "1990-01-15T00:00:00.000Z"
    assert wire["createdAt"] == "2025-05-20T09:15:00.000Z"
    assert "Ana" not in repr(patient)


def test_patch_changes_only_the_fields_sent(sandbox: Sandbox, key: ApiKey) -> None:
    """PATCH leaves unsent fields alone and refuses fields it may not change."""
    sandbox.upsert_patient(key, _patient(email="ana@example.org"))
    patched = sandbox.patch_patient(key, "syncd-demo", "E-1", {"firstName": "Anna"})
    assert (patched.first_name, patched.email) == ("Anna", "ana@example.org")
    with pytest.raises(ApiError) as caught:
        sandbox.patch_patient(key, "syncd-demo", "E-1", {"providerId": "E-2"})
    assert caught.value.status == 400
    with pytest.raises(ApiError) as missing:
        sandbox.patch_patient(key, "syncd-demo", "nope", {"firstName": "X"})
    assert missing.value.status == 404


def test_search_matches_names_phone_email_and_provider_id(sandbox: Sandbox, key: ApiKey) -> None:
    """searchTerm finds a patient by any of its searchable fields, case-insensitively."""
    sandbox.upsert_patient(
        key, _patient("EHR-77", mobileNumber="+385991234567", email="ana@example.org")
    )
    sandbox.upsert_patient(key, {"providerId": "X", "firstName": "Ivo", "lastName": "Babić"})
    for term in ("ana", "HORVAT", "ana horvat", "99123", "example.org", "ehr-77"):
        result = sandbox.list_patients(key, {"searchTerm": term})
        assert result["count"] == 1, term
    assert sandbox.list_patients(key, {})["count"] == 2


def test_list_cache_sees_changes(sandbox: Sandbox, key: ApiKey) -> None:
    """A list answered from cache is recomputed once the practice changes."""
    assert sandbox.list_patients(key, {"searchTerm": "ana"})["count"] == 0
    sandbox.upsert_patient(key, _patient())
    assert sandbox.list_patients(key, {"searchTerm": "ana"})["count"] == 1


def test_message_status_follows_the_clock(
    sandbox: Sandbox, key: ApiKey, clock: ManualClock
) -> None:
    """Pending at first, Sent after 1 s (sentOn set), Delivered after 3 s."""
    message = sandbox.send_message(key, _patient(mobileNumber="+385991234567", content="Hi"))
    assert message.to_api(sandbox.now())["status"] == "Pending"
    assert message.to_api(sandbox.now())["sentOn"] is None
    clock.advance(1)
    sent = message.to_api(sandbox.now())
    assert sent["status"] == "Sent"
    assert sent["sentOn"] == "2025-05-20T09:15:01.000Z"
    clock.advance(2)
    assert message.to_api(sandbox.now())["status"] == "Delivered"


def test_failing_messages_end_failed(clock: ManualClock) -> None:
    """With a failure rate of 1 every message ends Failed."""
    sandbox = Sandbox(clock=clock, message_timing=MessageTiming(0.5, 1.0, failure_rate=1.0))
    key = sandbox.authenticate(DEMO_API_KEY)
    assert key is not None
    message = sandbox.send_message(key, _patient(mobileNumber="+385991234567", content="Hi"))
    clock.advance(1)
    assert message.status_at(sandbox.now())[0] == "Failed"


def test_send_needs_an_existing_patient_or_what_creates_one(sandbox: Sandbox, key: ApiKey) -> None:
    """Unknown patient without names/mobile is 422; with them the patient is created."""
    with pytest.raises(ApiError) as caught:
        sandbox.send_message(key, {"providerId": "E-9", "content": "Hi"})
    assert caught.value.status == 422
    assert sandbox.list_patients(key, {})["count"] == 0
    sandbox.send_message(key, _patient("E-9", mobileNumber="+385991234567", content="Hi"))
    assert sandbox.get_patient(key, "syncd-demo", "E-9").mobile_number == "+385991234567"


def test_send_to_a_patient_without_mobile_is_422(sandbox: Sandbox, key: ApiKey) -> None:
    """An existing patient with no mobile number cannot get an SMS."""
    sandbox.upsert_patient(key, _patient())
    with pytest.raises(ApiError) as caught:
        sandbox.send_message(key, {"providerId": "E-1", "content": "Hi"})
    assert caught.value.status == 422


def test_sends_are_counted_per_fingerprint(sandbox: Sandbox, key: ApiKey) -> None:
    """Two identical sends share a fingerprint, so stats show the duplicate."""
    body = _patient(mobileNumber="+385991234567", content="Hi")
    sandbox.send_message(key, body)
    sandbox.send_message(key, body)
    sandbox.send_message(key, {**body, "content": "Other"})
    stats = sandbox.stats()
    fingerprint = send_fingerprint(sandbox.demo_practice_id, "syncd-demo", "E-1", "content:Hi")
    assert stats["sendsPerFingerprint"][fingerprint] == 2
    assert (stats["sendsAccepted"], stats["duplicateSends"]) == (3, 1)


def test_submission_updated_at_strictly_increases_even_on_a_frozen_clock(
    sandbox: Sandbox,
) -> None:
    """Each status change bumps updatedAt by at least 1 ms and is recorded as a version."""
    patient_id = sandbox.seed_patients(sandbox.demo_practice_id, 1)[0]
    form_id = next(iter(sandbox.practices[sandbox.demo_practice_id].forms))
    submission_id = sandbox.create_submission(sandbox.demo_practice_id, patient_id, form_id)
    sandbox.set_submission_status(submission_id, "Opened")
    sandbox.set_submission_status(submission_id, "Completed")
    versions = [v for v in sandbox.submission_versions() if v["id"] == submission_id]
    assert [v["status"] for v in versions] == ["Pending", "Opened", "Completed"]
    stamps = [parse_timestamp(v["updatedAt"]) for v in versions]
    assert stamps == sorted(set(stamps))


def test_completed_submission_has_answers_with_a_large_signature(
    sandbox: Sandbox, key: ApiKey
) -> None:
    """A Completed submission's detail carries answers incl. a 50-100 KB base64 data URL."""
    sandbox.seed_patients(sandbox.demo_practice_id, 1)
    submission_id = sandbox.seed_submissions(sandbox.demo_practice_id, 1, status="Completed")[0]
    detail = sandbox.get_submission(key, submission_id)
    signature = detail["data"]["signature"]
    assert signature.startswith("data:image/png;base64,")
    assert 50_000 <= len(signature) <= 100_000
    assert detail["receivedAt"] == detail["updatedAt"]
    listed = sandbox.list_submissions(key, {})["data"][0]
    assert "data" not in listed


def test_bulk_seeded_submissions_can_share_one_updated_at(sandbox: Sandbox, key: ApiKey) -> None:
    """Seeding with a fixed timestamp gives many submissions one updatedAt, all inclusive."""
    sandbox.seed_patients(sandbox.demo_practice_id, 5)
    moment = START - timedelta(hours=1)
    sandbox.seed_submissions(sandbox.demo_practice_id, 30, at=moment)
    text = "2025-05-20T08:15:00.000Z"
    result = sandbox.list_submissions(
        key, {"updatedFrom": text, "updatedTo": text, "pageSize": "100"}
    )
    assert result["count"] == 30
    assert {item["updatedAt"] for item in result["data"]} == {text}


def test_submission_filters_combine(sandbox: Sandbox, key: ApiKey) -> None:
    """status, patientId and formId narrow the list; together they intersect."""
    practice_id = sandbox.demo_practice_id
    first, second = sandbox.seed_patients(practice_id, 2)
    form_a, form_b = list(sandbox.practices[practice_id].forms)[:2]
    sandbox.create_submission(practice_id, first, form_a)
    opened = sandbox.create_submission(practice_id, second, form_b)
    sandbox.set_submission_status(opened, "Opened")
    assert sandbox.list_submissions(key, {"status": "Opened"})["count"] == 1
    assert sandbox.list_submissions(key, {"patientId": first})["count"] == 1
    assert sandbox.list_submissions(key, {"formId": form_b, "status": "Pending"})["count"] == 0
    with pytest.raises(ApiError):
        sandbox.list_submissions(key, {"status": "Done"})


def test_practices_are_isolated(sandbox: Sandbox, key: ApiKey) -> None:
    """Another practice's key never sees the demo practice's patients, messages, submissions."""
    other_practice = sandbox.add_practice("Other Clinic")
    other = sandbox.authenticate(sandbox.issue_key(other_practice, "ehr"))
    assert other is not None
    sandbox.upsert_patient(key, _patient(mobileNumber="+385991234567"))
    message = sandbox.send_message(key, {"providerId": "E-1", "content": "Hi"})
    submission_id = sandbox.seed_submissions(sandbox.demo_practice_id, 1)[0]
    assert sandbox.list_patients(other, {})["count"] == 0
    assert sandbox.list_submissions(other, {})["count"] == 0
    for call in (
        lambda: sandbox.get_patient(other, "syncd-demo", "E-1"),
        lambda: sandbox.get_message(other, message.id),
        lambda: sandbox.get_submission(other, submission_id),
    ):
        with pytest.raises(ApiError) as caught:
            call()
        assert caught.value.status == 404
    other_templates = {t["id"] for t in sandbox.list_templates(other, {})["data"]}
    demo_templates = {t["id"] for t in sandbox.list_templates(key, {})["data"]}
    assert not other_templates & demo_templates


def test_tick_is_deterministic_and_moves_submissions_along() -> None:
    """Two sandboxes with one seed tick through identical histories."""
    histories = []
    for _ in range(2):
        sandbox = Sandbox(seed=3, clock=ManualClock())
        sandbox.seed_patients(sandbox.demo_practice_id, 10)
        assert sandbox.tick(200) == 200
        histories.append(sandbox.submission_versions())
    assert histories[0] == histories[1]
    statuses = {v["status"] for v in histories[0]}
    assert {"Pending", "Opened", "Completed"} <= statuses


def test_tick_without_patients_does_nothing(sandbox: Sandbox) -> None:
    """The simulator needs patients; with none it changes nothing."""
    assert sandbox.tick(5) == 0


def test_disturbing_a_window_updates_or_inserts_submissions(sandbox: Sandbox, key: ApiKey) -> None:
    """Disturbing changes the matching set, as a busy server does between two pages."""
    sandbox.seed_patients(sandbox.demo_practice_id, 5)
    sandbox.seed_submissions(sandbox.demo_practice_id, 20)
    before = sandbox.submission_versions()
    changed = sandbox.disturb_submissions(
        key, SubmissionQuery(status="Pending"), 5, random.Random(1)
    )
    assert changed == 5
    assert len(sandbox.submission_versions()) == len(before) + 5


def test_reset_returns_to_the_seed_data(sandbox: Sandbox, key: ApiKey) -> None:
    """reset() forgets patients and keys issued since, and the demo key still works."""
    demo_practice = sandbox.demo_practice_id
    token = sandbox.issue_key(demo_practice, "extra")
    sandbox.upsert_patient(key, _patient())
    sandbox.reset()
    assert sandbox.demo_practice_id == demo_practice
    assert sandbox.authenticate(token) is None
    demo = sandbox.authenticate(DEMO_API_KEY)
    assert demo is not None
    assert sandbox.list_patients(demo, {})["count"] == 0


def test_stats_count_per_practice(sandbox: Sandbox) -> None:
    """stats() counts patients, messages and submissions per practice and in total."""
    other = sandbox.add_practice("Other Clinic", seed_content=False)
    sandbox.seed_patients(sandbox.demo_practice_id, 3)
    sandbox.seed_patients(other, 2)
    stats = sandbox.stats()
    assert stats["patients"] == 5
    assert stats["practices"][other]["patients"] == 2
    assert sandbox.stats(other)["patients"] == 2
    assert "sendsPerFingerprint" not in sandbox.stats(include_fingerprints=False)
