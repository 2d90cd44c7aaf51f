"""What one run of the outbox delivery job did, and the outcome that makes of the run."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal


@dataclass(slots=True)
class DeliveryCounts:
    """What one run did (the job-run record's counters)."""

    fanned_out: int = 0
    claimed: int = 0
    delivered: int = 0
    retried: int = 0
    dead: int = 0
    released: int = 0  # left pending because their sink was disabled
    lease_lost: int = 0
    sinks_disabled: int = 0
    sinks_skipped: int = 0  # disabled before the run
    pruned: int = 0  # events deleted by retention

    @property
    def outcome(self) -> Literal["ok", "partial", "failed"]:
        """`failed` when deliveries were tried and none succeeded; `partial` when some were
        retried or dead-lettered, a lease was lost or a sink was disabled in this run."""
        troubled = self.retried + self.dead + self.lease_lost + self.sinks_disabled
        if not troubled:
            return "ok"
        if self.claimed and not self.delivered and self.retried + self.dead:
            return "failed"
        return "partial"

    @property
    def problem(self) -> str | None:
        """Id-only text for the run record when the run was not ok."""
        parts = [
            f"{count} {what}"
            for count, what in (
                (self.retried, "to retry"),
                (self.dead, "dead-lettered (`syncd outbox list --state dead`)"),
                (self.lease_lost, "claims lost to another worker"),
                (self.sinks_disabled, "sink(s) disabled (`syncd outbox retry --sink NAME`)"),
            )
            if count
        ]
        if not parts:
            return None
        return f"of {self.claimed} claimed, {self.delivered} delivered; " + ", ".join(parts)

    def add(self, other: DeliveryCounts) -> None:
        """Add `other`'s counters to these."""
        for item in fields(self):
            setattr(self, item.name, getattr(self, item.name) + getattr(other, item.name))
