"""Backoff and give-up decisions for failed deliveries, with plain values and a fixed draw."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from syncd.outbox.backoff import BackoffPolicy, GiveUp, Reschedule, after_failure

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
POLICY = BackoffPolicy(initial_seconds=10, max_seconds=300, multiplier=2)


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(1, 10), (2, 20), (3, 40), (5, 160), (6, 300), (50, 300), (10_000, 300), (0, 10)],
)
def test_ceiling_grows_exponentially_up_to_the_cap(attempt: int, ceiling: float) -> None:
    """The backoff ceiling doubles per attempt and stops at max_seconds, even for huge counts."""
    assert POLICY.ceiling(attempt) == ceiling


def test_full_jitter_spans_zero_to_the_ceiling() -> None:
    """The delay is a uniform draw times the ceiling: 0 at the bottom, the ceiling at the top."""
    assert POLICY.delay(3, rand=lambda: 0.0) == 0.0
    assert POLICY.delay(3, rand=lambda: 1.0) == 40.0
    assert POLICY.delay(3, rand=lambda: 0.25) == 10.0


def test_retry_after_wins_when_longer_than_the_backoff() -> None:
    """A receiver's Retry-After is honoured when it asks for more than the backoff drew."""
    assert POLICY.delay(1, retry_after=120.0, rand=lambda: 1.0) == 120.0
    assert POLICY.delay(6, retry_after=1.0, rand=lambda: 1.0) == 300.0


def test_retry_after_is_capped_and_never_negative() -> None:
    """A huge Retry-After is read as the cap; a negative one as zero."""
    policy = BackoffPolicy(initial_seconds=0, max_seconds=0, max_retry_after_seconds=3600)
    assert policy.delay(1, retry_after=10**9, rand=lambda: 1.0) == 3600
    assert policy.delay(1, retry_after=-5, rand=lambda: 1.0) == 0.0


def test_zero_policy_switches_waiting_off() -> None:
    """A policy of zeros never waits (what tests use instead of patching)."""
    policy = BackoffPolicy(initial_seconds=0, max_seconds=0)
    assert policy.delay(7) == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_seconds": -1},
        {"initial_seconds": 10, "max_seconds": 5},
        {"multiplier": 0.5},
        {"max_retry_after_seconds": -1},
    ],
)
def test_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    """Negative times, a cap below the start or a shrinking multiplier are refused."""
    with pytest.raises(ValueError, match="backoff"):
        BackoffPolicy(**kwargs)


def _after(attempts: int, *, queued_ago: timedelta = timedelta(minutes=1), **kw: object) -> object:
    options: dict[str, object] = {
        "attempts": attempts,
        "reason": "HTTP 503",
        "retry_after": None,
        "queued_at": NOW - queued_ago,
        "now": NOW,
        "max_attempts": 5,
        "max_age": timedelta(hours=2),
        "policy": POLICY,
        "rand": lambda: 1.0,
    }
    options.update(kw)
    return after_failure(**options)  # type: ignore[arg-type]


def test_a_failure_below_the_limits_is_rescheduled_after_the_backoff() -> None:
    """A failed attempt under both limits is tried again after the drawn delay."""
    assert _after(2) == Reschedule(NOW + timedelta(seconds=20))
    assert _after(1, retry_after=90.0) == Reschedule(NOW + timedelta(seconds=90))


def test_gives_up_after_max_attempts() -> None:
    """The max_attempts-th failed attempt gives up, keeping the reason."""
    outcome = _after(5)
    assert isinstance(outcome, GiveUp)
    assert outcome.reason == "HTTP 503; gave up after 5 attempts"


def test_gives_up_when_queued_longer_than_max_age() -> None:
    """A delivery queued for max_age or longer gives up at its next failure."""
    outcome = _after(2, queued_ago=timedelta(hours=2))
    assert outcome == GiveUp("HTTP 503; gave up after 2 attempts in 2 hours")
    assert isinstance(_after(2, queued_ago=timedelta(hours=1, minutes=59)), Reschedule)
