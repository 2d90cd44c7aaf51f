"""When reconciliation sweeps are due and what they cover, with plain values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from syncd.submissions.sweep import Sweep, listed_by_this_run, sweep_window
from syncd.submissions.window import Window

T0 = datetime(2025, 5, 20, 9, 0, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def test_a_sweep_is_due_when_never_run_or_its_interval_has_passed() -> None:
    """Never swept: due; an interval after the last sweep: due; before it: not."""
    hourly = Sweep("daily", HOUR, 24 * HOUR)
    assert hourly.due(None, T0)
    assert not hourly.due(T0, T0 + HOUR - timedelta(seconds=1))
    assert hourly.due(T0, T0 + HOUR)


def test_a_zero_interval_turns_a_sweep_off() -> None:
    """interval 0 means never, even when never swept."""
    assert not Sweep("off", timedelta(0), HOUR).due(None, T0)


def test_the_sweep_window_ends_at_the_watermark() -> None:
    """[now - lookback, watermark]: what lies after the watermark is the next poll's work."""
    now = T0 + 48 * HOUR
    watermark = now - timedelta(seconds=30)
    assert sweep_window(lookback=24 * HOUR, server_now=now, watermark=watermark) == Window(
        now - 24 * HOUR, watermark
    )


def test_no_sweep_before_the_first_poll_or_when_the_lookback_is_all_ahead() -> None:
    """No watermark yet, or a lookback starting after it: nothing to sweep."""
    assert sweep_window(lookback=HOUR, server_now=T0, watermark=None) is None
    assert sweep_window(lookback=HOUR, server_now=T0, watermark=T0 - 2 * HOUR) is None


def test_a_sweep_within_what_the_run_just_listed_is_left_for_the_next_run() -> None:
    """A first run (or a catch-up longer than the lookback) listed the whole sweep window."""
    window = Window(T0 - 24 * HOUR, T0)
    assert listed_by_this_run(window, polled_from=T0 - 48 * HOUR)
    assert listed_by_this_run(window, polled_from=T0 - 24 * HOUR)
    assert not listed_by_this_run(window, polled_from=T0 - 24 * HOUR + timedelta(milliseconds=1))
    assert not listed_by_this_run(window, polled_from=None)  # polled nothing, or by hand
