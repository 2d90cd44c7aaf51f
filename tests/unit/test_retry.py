"""Pure retry decisions: what is retried, backoff with full jitter, Retry-After respected."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from syncd.exceptions import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    SendOutcomeUnknown,
    ServerError,
    Unauthorized,
    VoxaresError,
    VoxaresMalformedResponse,
    VoxaresTransportError,
)
from syncd.voxares.errors import error_for_status
from syncd.voxares.retry import (
    RetryPolicy,
    backoff,
    is_retryable,
    next_delay,
    parse_retry_after,
)

NOW = datetime(2025, 5, 20, 9, 15, tzinfo=UTC)


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_transient_statuses_are_retryable(status: int) -> None:
    """429 and the gateway/server statuses 500/502/503/504 are worth another attempt."""
    assert is_retryable(error_for_status(status, method="GET", path="/x"))


@pytest.mark.parametrize("status", [300, 400, 401, 403, 404, 405, 409, 410, 422, 501, 505])
def test_definitive_statuses_are_never_retried(status: int) -> None:
    """Client errors and non-transient server errors are final."""
    assert not is_retryable(error_for_status(status, method="GET", path="/x"))


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, Invalid),
        (401, Unauthorized),
        (403, Forbidden),
        (404, NotFound),
        (409, Conflict),
        (422, Invalid),
        (429, RateLimited),
        (500, ServerError),
        (503, ServerError),
    ],
)
def test_status_maps_to_its_exception(status: int, kind: type[VoxaresError]) -> None:
    """Each documented status has its own exception class."""
    assert type(error_for_status(status, method="GET", path="/x")) is kind


def test_transport_errors_retry_but_unknown_sends_and_malformed_do_not() -> None:
    """A transport failure is retried; an SMS of unknown outcome and a bad body are not."""
    assert is_retryable(VoxaresTransportError(reached_server=True))
    assert is_retryable(VoxaresTransportError(reached_server=False))
    assert not is_retryable(SendOutcomeUnknown(status=500))
    assert not is_retryable(VoxaresMalformedResponse())
    assert not is_retryable(ValueError("not ours"))


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        ("0", 0.0),
        (" 3 ", 3.0),
        ("1.5", 1.5),
        ("Tue, 20 May 2025 09:15:30 GMT", 30.0),
        ("Tue, 20 May 2025 09:14:00 GMT", 0.0),  # in the past: go now
        ("Tuesday, 20-May-25 09:16:00 GMT", 60.0),  # obsolete RFC 850 form
        (None, None),
        ("", None),
        ("-5", None),
        ("soon", None),
        ("inf", None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    """Retry-After is read as delta-seconds or an HTTP-date against the given now."""
    assert parse_retry_after(value, now=NOW) == seconds


def test_backoff_is_full_jitter_under_a_doubling_capped_ceiling() -> None:
    """The wait is draw * min(max_backoff, initial * 2^(n-1)), so from 0 up to the ceiling."""
    policy = RetryPolicy(initial=0.5, max_backoff=4.0)
    assert backoff(policy, 1, draw=lambda: 0.0) == 0.0
    assert backoff(policy, 1, draw=lambda: 0.5) == 0.25
    assert backoff(policy, 2, draw=lambda: 0.999) == pytest.approx(0.999)
    assert backoff(policy, 3, draw=lambda: 1.0) == 2.0
    assert backoff(policy, 10, draw=lambda: 1.0) == 4.0
    assert backoff(policy, 10_000, draw=lambda: 1.0) == 4.0


@pytest.mark.parametrize("draw", [0.0, 0.3, 0.9999])
@pytest.mark.parametrize("retry_number", [1, 2, 5])
def test_backoff_is_never_less_than_retry_after(draw: float, retry_number: int) -> None:
    """Whatever the jitter draws, the wait is at least the server's Retry-After."""
    policy = RetryPolicy(initial=0.5, max_backoff=2.0)
    delay = backoff(policy, retry_number, retry_after=9.0, draw=lambda: draw)
    assert delay >= 9.0


def test_next_delay_uses_retry_after_of_the_error() -> None:
    """A 429 carrying Retry-After yields a delay of at least that many seconds."""
    error = RateLimited(retry_after=5.0, status=429)
    delay = next_delay(error, policy=RetryPolicy(), retry_number=1, elapsed=0.0, draw=lambda: 0)
    assert delay == 5.0


def test_next_delay_gives_up_when_attempts_are_used() -> None:
    """With attempts=3, the third failure is final."""
    policy = RetryPolicy(attempts=3)
    error = ServerError(status=503)
    assert next_delay(error, policy=policy, retry_number=2, elapsed=0.0) is not None
    assert next_delay(error, policy=policy, retry_number=3, elapsed=0.0) is None


def test_next_delay_gives_up_rather_than_overrun_the_budget() -> None:
    """A wait that would end past the time budget is not started: the error is raised."""
    policy = RetryPolicy(attempts=10, timeout=30.0)
    error = RateLimited(retry_after=20.0, status=429)
    assert next_delay(error, policy=policy, retry_number=1, elapsed=5.0) == 20.0
    assert next_delay(error, policy=policy, retry_number=1, elapsed=15.0) is None


def test_next_delay_refuses_non_retryable_errors() -> None:
    """A 404 or an unknown send outcome gets no delay at all."""
    policy = RetryPolicy()
    assert next_delay(NotFound(status=404), policy=policy, retry_number=1, elapsed=0) is None
    assert next_delay(SendOutcomeUnknown(), policy=policy, retry_number=1, elapsed=0) is None


@pytest.mark.parametrize(
    "kwargs", [{"attempts": 0}, {"initial": -1.0}, {"max_backoff": -1.0}, {"timeout": 0.0}]
)
def test_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    """A policy that could never try, or waits negative time, is refused."""
    with pytest.raises(ValueError, match=r"attempts|negative|timeout"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_no_wait_policy_keeps_decisions() -> None:
    """The test policy differs from the default only in not waiting."""
    assert RetryPolicy.no_wait(attempts=4) == RetryPolicy(attempts=4, wait=False)
