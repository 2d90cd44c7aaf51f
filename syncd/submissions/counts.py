"""What one run of the form-submission poller did (the job run record's counters)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True)
class PollCounts:
    """What one run did, for the job run record and the logs."""

    windows: int = 0
    pages: int = 0
    listed: int = 0
    known_skipped: int = 0
    details: int = 0
    emitted: int = 0
    duplicates_skipped: int = 0
    superseded: int = 0
    stale_details: int = 0
    deferred: int = 0
    removed: int = 0
    relists: int = 0
    splits: int = 0
    sweeps: int = 0
    sweep_found: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain mapping."""
        return asdict(self)

    @property
    def idle(self) -> bool:
        """Whether the run changed nothing: no event written and no version found late.

        Windows, pages and known versions re-listed are the cost of looking, not work: an
        idle poll every minute logs at DEBUG, not a line a minute at INFO.
        """
        return not (self.emitted or self.removed or self.sweep_found or self.deferred)
