"""When the reconciliation sweeps are due, and what they cover (pure, no I/O).

Polling reads each window once, `settle` after its end, and again within `overlap`. A
server may make a write visible later than that (a long transaction, a lagging replica),
stamped with its original `updatedAt`: no watermark arithmetic sees it. The sweep turns
that silent loss into late delivery: it re-lists a long lookback behind the watermark, list
calls only, and reads the detail of a listed version only when it was never recorded.

Two sweeps, each on its own interval of server time: a frequent one over a day and a
rare one over a week. When both are due the longer one runs and counts for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from syncd.submissions.window import Window, floor_ms


@dataclass(frozen=True, slots=True)
class Sweep:
    """One kind of sweep: how often (server time) and how far back it re-lists."""

    name: str
    interval: timedelta
    lookback: timedelta

    def due(self, last_done: datetime | None, server_now: datetime) -> bool:
        """Whether it is time to sweep (never swept counts as due; a zero interval never is)."""
        if self.interval <= timedelta(0):
            return False
        return last_done is None or server_now - last_done >= self.interval


def sweep_window(
    *, lookback: timedelta, server_now: datetime, watermark: datetime | None
) -> Window | None:
    """The window a sweep re-lists: `[server_now - lookback, watermark]`, or None.

    It ends at the watermark because polling has not yet passed what lies after it (that is
    the next poll's work); None before the first poll finished or when the lookback ends
    before the watermark's start.
    """
    if watermark is None:
        return None
    start = floor_ms(server_now - lookback)
    end = floor_ms(watermark)
    return Window(start, end) if start <= end else None


def listed_by_this_run(window: Window, polled_from: datetime | None) -> bool:
    """Whether the run about to sweep `window` has itself just listed all of it.

    A run polls one contiguous range, from its first window's start (`polled_from`) to
    the new watermark. A first run, or one that caught up a backlog longer than the
    lookback, has listed the whole sweep window moments ago: sweeping it now would repeat
    every one of those list calls to catch only what became visible in those moments.
    Such a sweep is left due, and the next run (one poll interval later, with a short
    window of its own) sweeps the same lookback: no version the sweep is there to find
    is given up, it is found one interval later.
    """
    return polled_from is not None and window.start >= polled_from


def choose(
    sweeps: list[Sweep], last_done: dict[str, datetime | None], server_now: datetime
) -> list[Sweep]:
    """The sweeps due now; only the longest is run, and it counts for every due one."""
    return [s for s in sweeps if s.due(last_done.get(s.name), server_now)]
