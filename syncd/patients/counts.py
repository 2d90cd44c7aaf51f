"""What one run of the patient push job did, and the outcome that makes of the run.

Outcome (`PushCounts.outcome`): `ok` when no push failed (quarantined rows are the source's
problem, reported on their own); `partial` when some pushes failed but others got through;
`failed` when it stopped early or no push got through.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(slots=True)
class PushCounts:
    """What one run did. `rows` (rows handled) = created + updated + unchanged + quarantined
    + duplicates + failed + not_pushed (a batch read after an outage stop is left, uncounted,
    to the next run). `not_pushed`: rows to push whose push the run
    cancelled when it stopped (outage, bad key); `stopped_early`: the run stopped in an
    outage before the end of the source. In a dry run, created/updated/quarantined say what
    would have happened, and `quarantined_rows` lists (row_key, field, reason) of every
    quarantined row.

    `landlines_dropped` and `invalid_phones_dropped` count the patients pushed (in a dry
    run: that would be pushed) without the mobileNumber their row has, because the policy
    is "drop" and the number is a landline (or any non-SMS type) or not a valid number.
    A row whose raw text is unchanged since its last push is not normalised again, so it
    is counted in the run that pushed it.
    """

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    quarantined: int = 0
    duplicates: int = 0
    failed: int = 0
    not_pushed: int = 0
    inactivated: int = 0
    rows: int = 0
    stopped_early: bool = False
    landlines_dropped: int = 0
    invalid_phones_dropped: int = 0
    quarantined_rows: list[tuple[str, str | None, str]] = field(default_factory=list)

    @property
    def outcome(self) -> Literal["ok", "partial", "failed"]:
        """How the run went (see the module docstring)."""
        if self.stopped_early:
            return "failed"
        if self.failed == 0:
            return "ok"
        return "partial" if self.created + self.updated > 0 else "failed"

    @property
    def problem(self) -> str | None:
        """Id-only text for the run record when the run was not ok."""
        if self.stopped_early:
            return (
                f"stopped early: Voxares unreachable or failing ({self.failed} pushes failed, "
                f"{self.not_pushed} cancelled, the rest of the source not read); "
                "every row not pushed is tried again next run"
            )
        if self.failed:
            tried = self.created + self.updated + self.failed
            return f"{self.failed} of {tried} pushes failed (tried again next run)"
        return None
