"""Telling an outage from failing rows (syncd.patients.outage)."""

from __future__ import annotations

import pytest

from syncd.patients.outage import DEFAULT_OUTAGE_AFTER, OutageDetector


def test_trips_once_after_threshold_consecutive_outage_failures() -> None:
    """The Nth consecutive outage-like failure trips the detector, once."""
    detector = OutageDetector(3)
    assert [detector.observe(outage_like=True) for _ in range(5)] == [
        False,
        False,
        True,
        False,
        False,
    ]
    assert detector.tripped


def test_any_other_answer_starts_the_count_again() -> None:
    """A success or a row's own rejection between failures resets the streak."""
    detector = OutageDetector(3)
    for outage_like in (True, True, False, True, True, False, True, True):
        assert not detector.observe(outage_like=outage_like)
    assert not detector.tripped
    assert detector.observe(outage_like=True)


def test_default_is_above_two_waves_of_the_default_concurrency() -> None:
    """The default outlasts two full waves of 8 concurrent pushes failing together."""
    from syncd.config import VoxaresSettings

    assert 2 * VoxaresSettings().max_concurrency < DEFAULT_OUTAGE_AFTER


def test_threshold_must_be_positive() -> None:
    """A threshold below 1 is refused."""
    with pytest.raises(ValueError, match="at least 1"):
        OutageDetector(0)
