"""`ManualClock`: a clock for the sandbox that moves only when told to.

Pass it as `Sandbox(clock=ManualClock())` to make message progress and every timestamp
deterministic in tests and demos.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

DEFAULT_START = datetime(2025, 5, 20, 9, 15, tzinfo=UTC)


class ManualClock:
    """Returns `now`, an aware UTC datetime, until `advance` or `set` moves it."""

    def __init__(self, start: datetime = DEFAULT_START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        """Move forward by `seconds`; the new time."""
        self.now += timedelta(seconds=seconds)
        return self.now

    def set(self, moment: datetime) -> None:
        """Jump to `moment` (aware)."""
        self.now = moment
