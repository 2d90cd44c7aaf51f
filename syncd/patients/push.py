"""The patient push job: stream a source into Voxares, pushing only what changed.

`PatientPush` is the job the runner schedules: it holds one source, one provider name and
the normalisation policy, and each `run` is a `syncd.patients.run.PushRun`, which reads the
source in batches, decides each row (`syncd.patients.plan`), pushes what changed and
records each batch in one transaction; the module docstring there says how (threads,
outage stop, cursors, crash safety). A run returns its `syncd.patients.counts.PushCounts`,
whose `outcome` the job runner records.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Final, Literal

import structlog
from sqlalchemy import Engine

from syncd.normalize import NormalizePolicy
from syncd.patients.counts import PushCounts
from syncd.patients.outage import DEFAULT_OUTAGE_AFTER
from syncd.patients.payload import normalise, upsert_body
from syncd.patients.run import PushRun, PushSetup
from syncd.sources.base import Source
from syncd.voxares.client import VoxaresClient

log = structlog.get_logger(__name__)

MissingRows = Literal["ignore", "mark_inactive"]
JOB_NAME: Final = "push_patients"


class PatientPush:
    """The push job for one source and one provider name (see the module docstring).

    `missing_rows="mark_inactive"` marks mirror rows that a complete run did not read as
    inactive (they turn active again when they reappear); "ignore" leaves them alone. A run
    is complete only when no batch aborted AND the source says its read reached the end
    (`SourceRead.complete`): a patient missing from a partial read is not gone.
    """

    name = JOB_NAME

    def __init__(
        self,
        engine: Engine,
        client: VoxaresClient,
        source: Source,
        policy: NormalizePolicy,
        *,
        provider: str,
        batch_size: int = 500,
        missing_rows: MissingRows = "ignore",
        outage_after: int = DEFAULT_OUTAGE_AFTER,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if outage_after < 1:
            raise ValueError("outage_after must be at least 1")
        if missing_rows not in ("ignore", "mark_inactive"):
            raise ValueError("missing_rows must be 'ignore' or 'mark_inactive'")
        self._provider = provider
        self._setup = PushSetup(
            engine=engine,
            client=client,
            source=source,
            provider=provider,
            batch_size=batch_size,
            mark_missing_inactive=missing_rows == "mark_inactive",
            outage_after=outage_after,
            normalise=partial(normalise, policy=policy),
            upsert_body=partial(upsert_body, provider=provider),
        )

    def __repr__(self) -> str:
        return f"PatientPush(source={self._setup.source.name!r}, provider={self._provider!r})"

    async def run(
        self,
        run_id: int,
        *,
        dry_run: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> PushCounts:
        """Push the source once; `progress` is called with the number of rows done so far.

        Raises `Unauthorized`/`Forbidden` (the key or its scope is wrong), `SourceError` and
        `StateError`; batches finished before the error stay recorded. An outage is not
        raised: the run stops early and says so in its counts (`outcome`, `stopped_early`).
        """
        run = PushRun(self._setup, run_id, dry_run=dry_run, progress=progress)
        counts = await run.execute()
        # DEBUG: the job runner logs the run's one INFO line with these counts.
        log.debug(
            "patients.pushed",
            created=counts.created,
            updated=counts.updated,
            unchanged=counts.unchanged,
            quarantined=counts.quarantined,
            duplicates=counts.duplicates,
            failed=counts.failed,
            not_pushed=counts.not_pushed,
            stopped_early=counts.stopped_early,
            inactivated=counts.inactivated,
            rows=counts.rows,
            landlines_dropped=counts.landlines_dropped,
            invalid_phones_dropped=counts.invalid_phones_dropped,
            dry_run=dry_run,
        )
        return counts
