"""The form-submission freedoms the contract leaves to a server, on the sandbox's state."""

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from syncd.sandbox.clock import ManualClock
from syncd.sandbox.errors import ApiError
from syncd.sandbox.freedoms import LateVisibility, ServerFreedoms, write_millisecond
from syncd.sandbox.records import ApiKey
from syncd.sandbox.state import DEMO_API_KEY, Sandbox
from syncd.sandbox.submissions import SubmissionQuery
from syncd.voxares.contract import format_timestamp, parse_timestamp

START = datetime(2025, 5, 20, 9, 15, tzinfo=UTC)  # ManualClock's default start
MS = timedelta(milliseconds=1)


@pytest.fixture
def clock() -> ManualClock:
    """A manual clock at 2025-05-20T09:15:00Z."""
    return ManualClock()


@pytest.fixture
def sandbox(clock: ManualClock) -> Sandbox:
    """A sandbox on the manual clock with 5 patients in the demo practice."""
    sandbox = Sandbox(seed=1, clock=clock)
    sandbox.seed_patients(sandbox.demo_practice_id, 5)
    return sandbox


@pytest.fixture
def key(sandbox: Sandbox) -> ApiKey:
    """The demo key."""
    found = sandbox.authenticate(DEMO_API_KEY)
    assert found is not None
    return found


def late(seconds: float) -> LateVisibility:
    """Every write visible exactly `seconds` after it was made."""
    return LateVisibility(rate=1.0, distribution="fixed", mean_seconds=seconds)


def listed(sandbox: Sandbox, key: ApiKey, **query: str) -> dict[str, str]:
    """id -> submissionStatus of every listed submission (one page of 100)."""
    body = sandbox.list_submissions(key, {"pageSize": "100", **query})
    assert body["count"] == len(body["data"])
    return {item["id"]: item["submissionStatus"] for item in body["data"]}


def new_submission(sandbox: Sandbox) -> str:
    """A new Pending submission for the first patient."""
    practice = sandbox.practices[sandbox.demo_practice_id]
    return sandbox.create_submission(
        practice.id, practice.patient_ids[0], next(iter(practice.forms))
    )


def test_defaults_draw_nothing_and_show_every_write_at_once(sandbox: Sandbox, key: ApiKey) -> None:
    """With every freedom off, no draw is made and each write is visible, in ms, at once."""
    before = sandbox.freedom_rng.getstate()
    sandbox.tick(200)
    assert sandbox.freedom_rng.getstate() == before
    submissions = sandbox.practices[sandbox.demo_practice_id].submissions.values()
    assert all(s.visible == len(s.versions) - 1 for s in submissions)
    assert all(v.updated_at.microsecond % 1000 == 0 for s in submissions for v in s.versions)
    truth = sandbox.final_versions()
    assert (truth["pendingWrites"], truth["allVisibleAt"]) == (0, None)
    assert len(listed(sandbox, key)) == truth["count"] == len(submissions)


def test_microsecond_storage_filters_on_the_stored_value_and_renders_ms(
    sandbox: Sandbox, key: ApiKey
) -> None:
    """With "us", a submission at …00.000xyz matches neither updatedTo=…00.000Z nor
    updatedFrom=…00.001Z, yet renders …00.000Z and matches […00.000Z, …00.001Z]."""
    sandbox.configure_freedoms(ServerFreedoms(updated_at_precision="us"), seed=3)
    ids = sandbox.seed_submissions(sandbox.demo_practice_id, 20)
    stored = {i: sandbox.submissions[i].updated_at for i in ids}
    below_ms = {i for i, at in stored.items() if at.microsecond % 1000}
    assert len(below_ms) >= 15  # each has a 999/1000 chance of a sub-ms part
    assert all(to_floor(at) == START for at in stored.values())
    rendered = format_timestamp(START)
    next_ms = format_timestamp(START + MS)
    assert set(listed(sandbox, key)) == set(ids)
    assert {i for i in ids if sandbox.get_submission(key, i)["updatedAt"] == rendered} == set(ids)
    assert set(listed(sandbox, key, updatedTo=rendered)) == set(ids) - below_ms
    assert not set(listed(sandbox, key, updatedFrom=next_ms))
    assert set(listed(sandbox, key, updatedFrom=rendered, updatedTo=next_ms)) == set(ids)
    # A filter written with microseconds is read at ms, as a JavaScript Date does.
    assert set(listed(sandbox, key, updatedTo="2025-05-20T09:15:00.000999Z")) == set(ids) - below_ms


def to_floor(moment: datetime) -> datetime:
    """`moment` truncated to the millisecond."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def test_late_write_is_invisible_until_its_delay_has_passed(
    sandbox: Sandbox, key: ApiKey, clock: ManualClock
) -> None:
    """A late new submission is absent (404) until then; a late update shows the previous
    version to list and detail until then; both keep the updatedAt stamped at the write."""
    sandbox.configure_freedoms(ServerFreedoms(late_visibility=late(600)))
    submission_id = new_submission(sandbox)
    clock.advance(599.999)
    assert submission_id not in listed(sandbox, key)
    with pytest.raises(ApiError) as caught:
        sandbox.get_submission(key, submission_id)
    assert caught.value.status == 404
    clock.advance(0.001)
    assert listed(sandbox, key) == {submission_id: "Pending"}
    sandbox.set_submission_status(submission_id, "Opened")
    stamped = format_timestamp(clock.now)
    clock.advance(300)
    assert listed(sandbox, key) == {submission_id: "Pending"}
    assert sandbox.get_submission(key, submission_id)["submissionStatus"] == "Pending"
    clock.advance(300)
    detail = sandbox.get_submission(key, submission_id)
    assert (detail["submissionStatus"], detail["updatedAt"]) == ("Opened", stamped)
    assert listed(sandbox, key, updatedFrom=stamped, updatedTo=stamped) == {submission_id: "Opened"}


def test_versions_of_one_submission_become_visible_in_write_order(
    sandbox: Sandbox, key: ApiKey, clock: ManualClock
) -> None:
    """A quick write after a slow one on the same submission waits for it (a row lock)."""
    sandbox.configure_freedoms(ServerFreedoms(late_visibility=late(60)))
    submission_id = new_submission(sandbox)
    sandbox.configure_freedoms(ServerFreedoms())  # the next write would be visible at once
    sandbox.set_submission_status(submission_id, "Opened")
    clock.advance(59)
    assert submission_id not in listed(sandbox, key)
    clock.advance(1)
    assert listed(sandbox, key) == {submission_id: "Opened"}


def test_late_visibility_follows_the_server_clock_offset(
    sandbox: Sandbox, key: ApiKey, clock: ManualClock
) -> None:
    """Visibility is judged on the server's clock: moving it ahead publishes pending writes."""
    sandbox.clock_offset = timedelta(hours=-1)
    sandbox.configure_freedoms(ServerFreedoms(late_visibility=late(120)))
    submission_id = new_submission(sandbox)
    assert sandbox.submissions[submission_id].updated_at == START - timedelta(hours=1)
    assert not listed(sandbox, key)
    sandbox.clock_offset = timedelta(0)
    assert listed(sandbox, key) == {submission_id: "Pending"}


@pytest.mark.parametrize("distribution", ["fixed", "uniform", "exponential"])
def test_late_delays_stay_within_bounds_and_reach_many_minutes(distribution: str) -> None:
    """Each distribution draws whole-ms delays in [min, max]; uniform and exponential spread
    up to many minutes; a rate of 0.5 leaves about half the writes on time."""
    model = LateVisibility.model_validate(
        {
            "rate": 0.5,
            "distribution": distribution,
            "min_seconds": 1,
            "mean_seconds": 120,
            "max_seconds": 900,
        }
    )
    rng = random.Random(7)
    delays = [model.draw(rng) for _ in range(4000)]
    late_ones = [d.total_seconds() for d in delays if d]
    assert 1800 < len(late_ones) < 2200
    assert all(1 <= s <= 900 for s in late_ones)
    assert all(d % MS == timedelta(0) for d in delays)
    if distribution == "fixed":
        assert set(late_ones) == {120}
    else:
        assert max(late_ones) > 600  # many minutes, beyond any settle + overlap
    with pytest.raises(ValueError, match="min_seconds"):
        LateVisibility(min_seconds=10, max_seconds=5)


def test_lagging_detail_returns_an_older_version_than_the_list(
    sandbox: Sandbox, key: ApiKey
) -> None:
    """With detail_lag_rate=1 the detail is detail_lag_versions behind, never before the first."""
    submission_id = new_submission(sandbox)
    sandbox.set_submission_status(submission_id, "Opened")
    sandbox.set_submission_status(submission_id, "Completed")
    sandbox.configure_freedoms(ServerFreedoms(detail_lag_rate=1.0))
    assert listed(sandbox, key) == {submission_id: "Completed"}
    lagging = sandbox.get_submission(key, submission_id)
    assert (lagging["submissionStatus"], lagging["data"]) == ("Opened", None)
    sandbox.configure_freedoms(ServerFreedoms(detail_lag_rate=1.0, detail_lag_versions=5))
    assert sandbox.get_submission(key, submission_id)["submissionStatus"] == "Pending"
    sandbox.configure_freedoms(ServerFreedoms())
    assert sandbox.get_submission(key, submission_id)["submissionStatus"] == "Completed"


def test_gone_detail_deletes_the_submission_for_every_later_reader(
    sandbox: Sandbox, key: ApiKey, clock: ManualClock
) -> None:
    """With detail_gone_rate=1 the detail is 404 and the submission leaves lists, the activity
    simulator and writes (its late writes never show), while the ground truth marks it deleted
    in the version last visible."""
    submission_id = new_submission(sandbox)
    sandbox.configure_freedoms(ServerFreedoms(late_visibility=late(60)))
    sandbox.set_submission_status(submission_id, "Opened")
    assert listed(sandbox, key) == {submission_id: "Pending"}
    sandbox.configure_freedoms(ServerFreedoms(detail_gone_rate=1.0))
    with pytest.raises(ApiError) as caught:
        sandbox.get_submission(key, submission_id)
    assert caught.value.body() == {
        "statusCode": 404,
        "message": "Form submission not found",
        "error": "Not Found",
    }
    clock.advance(60)
    assert submission_id not in listed(sandbox, key)
    assert submission_id not in sandbox.practices[sandbox.demo_practice_id].open_submissions
    with pytest.raises(ApiError):
        sandbox.set_submission_status(submission_id, "Opened")
    row = next(r for r in sandbox.final_versions()["data"] if r["id"] == submission_id)
    assert (row["deleted"], row["status"]) == (True, "Pending")
    assert sandbox.stats()["submissionsDeleted"] == 1


def test_ties_cluster_writes_on_one_millisecond(sandbox: Sandbox, clock: ManualClock) -> None:
    """With tie_rate, writes 1 ms apart share rendered milliseconds in large groups; with "us"
    the members of a group still differ below the millisecond."""

    def group_sizes(freedoms: ServerFreedoms) -> tuple[Counter[str], int]:
        sandbox.reset(1)
        sandbox.seed_patients(sandbox.demo_practice_id, 20)
        sandbox.configure_freedoms(freedoms, seed=5)
        for _ in range(300):
            clock.advance(0.001)
            sandbox.tick()
        stamps = [v.updated_at for s in sandbox.submissions.values() for v in s.versions]
        return Counter(format_timestamp(at) for at in stamps), len(set(stamps))

    untied, _ = group_sizes(ServerFreedoms())
    assert max(untied.values()) == 1
    tied, distinct = group_sizes(ServerFreedoms(tie_rate=0.9, updated_at_precision="us"))
    assert max(tied.values()) >= 10
    assert len(tied) < 100
    assert distinct > 290  # random microseconds: few exact collisions


def test_tie_never_reaches_back_beyond_the_window_or_before_a_previous_version() -> None:
    """A tie takes the last write's ms only within TIE_WINDOW, and a submission's next version
    always renders a later millisecond than its previous one."""
    now = START + timedelta(seconds=10)
    recent, old = now - timedelta(milliseconds=400), now - timedelta(seconds=2)
    assert write_millisecond(now, None, recent, tie=True) == recent
    assert write_millisecond(now, None, old, tie=True) == now
    assert write_millisecond(now, None, recent, tie=False) == now
    previous = recent + timedelta(microseconds=250)
    assert write_millisecond(now, previous, recent, tie=True) == recent + MS


def test_final_versions_and_publishing_pending_writes(
    sandbox: Sandbox, key: ApiKey, clock: ManualClock
) -> None:
    """The ground truth gives each submission's newest version, when all pending writes will
    be visible, and publish_pending makes them visible now."""
    submission_id = new_submission(sandbox)
    sandbox.configure_freedoms(ServerFreedoms(late_visibility=late(300)))
    sandbox.set_submission_status(submission_id, "Completed")
    clock.advance(100)
    hidden = new_submission(sandbox)
    truth = sandbox.final_versions()
    assert truth["pendingWrites"] == 2
    assert truth["allVisibleAt"] == format_timestamp(START + timedelta(seconds=400))
    rows = {r["id"]: r for r in truth["data"]}
    assert (rows[submission_id]["status"], rows[hidden]["status"]) == ("Completed", "Pending")
    assert rows[submission_id]["updatedAt"] == format_timestamp(START + MS)
    assert rows[submission_id]["dataSha256"] != rows[hidden]["dataSha256"]
    with_data = sandbox.final_versions(include_data=True)["data"]
    assert next(r for r in with_data if r["id"] == submission_id)["data"]["signature"]
    assert listed(sandbox, key) == {submission_id: "Pending"}
    assert sandbox.publish_pending() == 2
    assert listed(sandbox, key) == {submission_id: "Completed", hidden: "Pending"}
    after = sandbox.final_versions()
    assert (after["pendingWrites"], after["allVisibleAt"]) == (0, None)
    assert parse_timestamp(after["data"][0]["visibleAt"]) <= sandbox.now()


def test_disturbing_pages_and_activity_respect_late_writes(
    sandbox: Sandbox, key: ApiKey, clock: ManualClock
) -> None:
    """Writes made by page mutation and the simulator are late too; the list never shows a
    version before its time, and every final version shows once all are visible."""
    sandbox.seed_submissions(sandbox.demo_practice_id, 30)
    model = LateVisibility(rate=0.5, distribution="uniform", min_seconds=1, max_seconds=60)
    sandbox.configure_freedoms(ServerFreedoms(late_visibility=model), seed=2)
    for _ in range(20):
        sandbox.disturb_submissions(key, SubmissionQuery(), 3, random.Random(4))
        sandbox.tick(5)
        clock.advance(1)
        now = sandbox.now()
        for item in sandbox.list_submissions(key, {"pageSize": "100"})["data"]:
            submission = sandbox.submissions[item["id"]]
            shown = next(
                v
                for v in submission.versions
                if format_timestamp(v.updated_at) == item["updatedAt"]
            )
            assert shown.visible_at <= now
    clock.advance(60)
    final = {r["id"]: (r["status"], r["updatedAt"]) for r in sandbox.final_versions()["data"]}
    body = sandbox.list_submissions(key, {"pageSize": "100"})
    assert body["count"] == len(final) > 30
    pages = [
        sandbox.list_submissions(key, {"pageSize": "100", "page": str(page)})["data"]
        for page in range((len(final) + 99) // 100)
    ]
    assert {i["id"]: (i["submissionStatus"], i["updatedAt"]) for p in pages for i in p} == final
