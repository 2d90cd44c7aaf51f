"""FHIR search pages, OperationOutcomes and the `_lastUpdated` cursor (pure parts)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from syncd.http_dates import parse_http_date
from syncd.sources.fhir_bundle import (
    NotABundle,
    outcome_summary,
    parse_instant,
    parse_page,
    same_origin,
)
from syncd.sources.fhir_cursor import Cursor, ReadPlan, format_instant, next_cursor, plan_read

T0 = datetime(2026, 12, 4, 10, 0, 0, 123456, tzinfo=UTC)
OVERLAP = timedelta(minutes=5)


def _bundle(**extra: object) -> dict[str, object]:
    return {"resourceType": "Bundle", "type": "searchset", **extra}


def test_page_resources_next_link_and_server_clock() -> None:
    """match entries are the resources; next is taken as given; meta.lastUpdated the clock."""
    page = parse_page(
        _bundle(
            meta={"lastUpdated": "2026-12-04T10:00:00.123Z"},
            link=[
                {"relation": "self", "url": "http://x/fhir/Patient"},
                {"relation": "next", "url": "http://x/fhir?_getpages=abc&_offset=2"},
            ],
            entry=[
                {"resource": {"resourceType": "Patient", "id": "a"}, "search": {"mode": "match"}},
                {"resource": {"resourceType": "Organization"}, "search": {"mode": "include"}},
                {"resource": {"resourceType": "Patient", "id": "b"}},
            ],
        )
    )
    assert [r["id"] for r in page.resources] == ["a", "b"]
    assert page.next_url == "http://x/fhir?_getpages=abc&_offset=2"
    assert page.server_time == datetime(2026, 12, 4, 10, 0, 0, 123000, tzinfo=UTC)


def test_outcome_entry_with_an_error_fails_the_page_and_a_warning_is_counted() -> None:
    """An OperationOutcome entry: error/fatal is the page's error, a warning is counted."""
    warning = {"resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "x"}]}
    error = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "too-costly", "diagnostics": "too many"}],
    }
    page = parse_page(_bundle(entry=[{"resource": warning, "search": {"mode": "outcome"}}]))
    assert (page.error, page.warnings) == (None, 1)
    page = parse_page(_bundle(entry=[{"resource": error, "search": {"mode": "outcome"}}]))
    assert page.error == "OperationOutcome error too-costly: too many"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ([], "not a JSON object"),
        ({"resourceType": "Patient"}, "a Patient instead of a Bundle"),
        ({"resourceType": "Bundle", "type": "collection"}, "not a searchset"),
    ],
)
def test_not_a_bundle(body: object, says: str) -> None:
    """A page that is not a searchset Bundle says what it is instead."""
    with pytest.raises(NotABundle, match=says):
        parse_page(body)


def test_outcome_summary_is_one_line_and_short() -> None:
    """Each issue's severity, code and diagnostics (or details.text), whitespace folded."""
    body = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": "invalid", "diagnostics": "bad\n  _lastUpdated"},
            {"severity": "error", "code": "processing", "details": {"text": "x" * 500}},
        ],
    }
    summary = outcome_summary(body)
    assert summary is not None
    assert summary.startswith("OperationOutcome error invalid: bad _lastUpdated; error processing:")
    assert len(summary) < 300
    assert outcome_summary({"resourceType": "Patient"}) is None


def test_clock_parsing() -> None:
    """Instants need a zone; the Date header is read to the second."""
    assert parse_instant("2026-12-04T10:00:00Z") == datetime(2026, 12, 4, 10, tzinfo=UTC)
    assert parse_instant("2026-12-04T10:00:00") is None
    assert parse_instant("2026-12") is None
    assert parse_http_date("Fri, 04 Dec 2026 10:00:01 GMT") == datetime(
        2026, 12, 4, 10, 0, 1, tzinfo=UTC
    )
    assert parse_http_date("yesterday") is None


def test_same_origin() -> None:
    """Credentials follow a next link only on the base URL's scheme, host and port."""
    base = "https://ehr.example/fhir/r4"
    assert same_origin("https://EHR.example/fhir/r4?_getpages=x", base)
    assert not same_origin("http://ehr.example/fhir/r4?_getpages=x", base)
    assert not same_origin("https://ehr.example:8443/fhir", base)
    assert not same_origin("https://internal-host/fhir", base)


def test_first_read_is_full_then_incremental_with_overlap_floored_to_the_ms() -> None:
    """No cursor: full. Then `ge(position - overlap)`, floored to the millisecond."""
    assert plan_read(None, overlap=OVERLAP, full_read_every=None).full
    plan = plan_read(Cursor(T0, T0), overlap=OVERLAP, full_read_every=timedelta(days=1))
    assert plan.since == datetime(2026, 12, 4, 9, 55, 0, 123000, tzinfo=UTC)
    assert format_instant(plan.since) == "2026-12-04T09:55:00.123Z"


def test_full_read_again_when_the_last_one_is_old_on_the_servers_clock() -> None:
    """A full read is due once the last one is `full_read_every` behind the position."""
    every = timedelta(days=1)
    assert not plan_read(
        Cursor(T0, T0 - every + timedelta(seconds=1)), overlap=OVERLAP, full_read_every=every
    ).full
    assert plan_read(Cursor(T0, T0 - every), overlap=OVERLAP, full_read_every=every).full
    assert plan_read(Cursor(T0, None), overlap=OVERLAP, full_read_every=every).full
    assert not plan_read(Cursor(T0, None), overlap=OVERLAP, full_read_every=None).full


def test_next_cursor_takes_the_servers_start_time_and_keeps_it_without_one() -> None:
    """The position is when the read began (server clock); no clock, no move."""
    began = T0 + timedelta(hours=1)
    assert next_cursor(None, ReadPlan(None), began) == Cursor(began, began)
    incremental = ReadPlan(T0)
    assert next_cursor(Cursor(T0, T0), incremental, began) == Cursor(began, T0)
    assert next_cursor(Cursor(T0, T0), incremental, None) == Cursor(T0, T0)
