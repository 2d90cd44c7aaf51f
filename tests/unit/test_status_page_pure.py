"""The status page's pure parts: bucketing samples, the charts' windows, the commands shown,
and the authorization check."""

from __future__ import annotations

import base64
import shlex
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.status_page.page import PageAccess
from syncd.status_page.queries import WINDOWS, command, window_start
from syncd.status_page.samples import bucketed

START = datetime(2026, 12, 1, tzinfo=UTC)
QUARTER = timedelta(minutes=15)


def test_one_point_per_bucket_with_its_highest_value() -> None:
    points = [
        (START + timedelta(minutes=1), 5.0),
        (START + timedelta(minutes=14), 9.0),
        (START + timedelta(minutes=3), 2.0),
        (START + timedelta(minutes=47), 1.0),
        (START - timedelta(minutes=1), 99.0),  # before the window: left out
    ]
    assert bucketed(points, start=START, width=QUARTER) == [
        (START, 9.0),
        (START + 3 * QUARTER, 1.0),
    ]


@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=24 * 60 - 1), st.floats(0, 1e6)),
        max_size=200,
    )
)
def test_buckets_are_distinct_sorted_and_hold_a_sample(minutes: list[tuple[int, float]]) -> None:
    points = [(START + timedelta(minutes=m), v) for m, v in minutes]
    found = bucketed(points, start=START, width=QUARTER)
    starts = [moment for moment, _ in found]
    assert starts == sorted(set(starts))
    assert len(found) == len({m // 15 for m, _ in minutes})
    for moment, value in found:
        inside = [v for t, v in points if moment <= t < moment + QUARTER]
        assert value == max(inside)


@pytest.mark.parametrize("window", WINDOWS)
def test_windows_start_on_whole_buckets(window: object) -> None:
    now = datetime(2026, 12, 4, 12, 7, 31, tzinfo=UTC)
    start = window_start(now, window)  # type: ignore[arg-type]
    assert start <= now - window.span < start + window.bucket  # type: ignore[attr-defined]
    assert start.second == 0
    assert start.minute % 15 == 0


def test_commands_are_quoted_for_the_shell() -> None:
    line = command(
        "syncd", "messages", "resolve", "key with 'quote'", "--cancel", config="/etc/x y/c.toml"
    )
    assert shlex.split(line) == [
        "syncd",
        "messages",
        "resolve",
        "key with 'quote'",
        "--cancel",
        "--config",
        "/etc/x y/c.toml",
    ]
    assert command("syncd", "outbox", "retry", config=None) == "syncd outbox retry"


def _basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        (None, False),
        ("", False),
        (_basic("admin:pw:with:colons"), True),
        (_basic("admin:pw"), False),
        (_basic("ADMIN:pw:with:colons"), False),
        ("basic " + base64.b64encode(b"admin:pw:with:colons").decode(), True),
        ("Basic not-base64!!", False),
        ("Bearer admin:pw:with:colons", False),
    ],
)
def test_basic_access(header: str | None, allowed: bool) -> None:
    assert PageAccess("basic", "admin:pw:with:colons").allows(header) is allowed


def test_no_auth_allows_everyone_and_bearer_needs_the_token() -> None:
    assert PageAccess().allows(None)
    bearer = PageAccess("bearer", "t0ken")
    assert bearer.allows("Bearer t0ken")
    assert not bearer.allows("Bearer t0ken2")
    assert not bearer.allows(_basic("t0ken"))
