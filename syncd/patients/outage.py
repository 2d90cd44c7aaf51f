"""Telling an outage from failing rows (pure): N consecutive push failures of the kind an
unreachable or failing API gives (5xx, connect error, timeout) after the client's own
retries.

Each push that reaches this count has already been retried by the client (with backoff),
so a short blip is absorbed there. A run of failures that are all of that kind, with no
answer of any other kind between them, means Voxares is down: pushing the rest of the
source would only retry every row in full for nothing. Any other answer (a success, a 4xx
rejection of one row) proves the API is up and starts the count again.
"""

from __future__ import annotations

from typing import Final

# Default of `patients.outage_after`: above two full waves of the default
# `voxares.max_concurrency` (8), so that one blip failing every push in flight at once
# (8 consecutive failures) does not stop a run, while a real outage stops it after about
# three waves (20 rows, each after the client's retries) instead of retrying every row.
DEFAULT_OUTAGE_AFTER: Final = 20


class OutageDetector:
    """Counts consecutive outage-like failures; `tripped` once `threshold` were seen."""

    def __init__(self, threshold: int = DEFAULT_OUTAGE_AFTER) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self.threshold = threshold
        self.consecutive = 0
        self.tripped = False

    def observe(self, *, outage_like: bool) -> bool:
        """Record one push's answer; True the first time the threshold is reached."""
        if not outage_like:
            self.consecutive = 0
            return False
        self.consecutive += 1
        if self.tripped or self.consecutive < self.threshold:
            return False
        self.tripped = True
        return True
