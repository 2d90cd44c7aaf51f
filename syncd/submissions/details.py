"""Reading the detail of one listed form submission, at least as new as it was listed.

The list and the detail may be served by replicas that lag each other (see the contract's
form-submission facts): a detail older than listed, malformed, or missing is read again a
few times (`stale_attempts`, with a short backoff). A detail still older than listed is
`Deferred` to the reconciliation sweep instead of stalling the stream; one that answered
404, 403 or 410 on every read is `Gone` (recorded as `form_submission.removed`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Final

import stamina
import structlog

from syncd import testing_hooks
from syncd.exceptions import VoxaresHTTPError, VoxaresMalformedResponse
from syncd.submissions.counts import PollCounts
from syncd.submissions.store import Gone
from syncd.submissions.window import Listed
from syncd.voxares.client import VoxaresClient
from syncd.voxares.models import SubmissionDetail

log = structlog.get_logger(__name__)

# Crash point (`syncd.testing_hooks`): a detail was read, nothing of it recorded yet.
STEP_AFTER_DETAIL: Final = "poller.after_detail"

# Statuses of a detail read that mean the listed submission is gone (the list and the
# detail may be served by different replicas, see the contract's form-submission facts).
GONE_STATUSES: Final = frozenset({403, 404, 410})


class _StillStale(Exception):
    """Internal: the detail read is older than the listed version (retried by stamina)."""


class _Missing(Exception):
    """Internal: the detail answered 404, 403 or 410 (read again by stamina)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass(frozen=True, slots=True)
class Deferred:
    """A listed version whose detail stayed older than listed: left to the sweep."""

    listed: Listed


# What a detail read of a listed item came to.
DetailOutcome = SubmissionDetail | Gone | Deferred


def rereads(errors: Collection[type[Exception]], *, attempts: int, wait: float) -> Any:
    """A stamina retry context for reads worth repeating after `errors` (GETs, no backoff
    beyond `wait` doubling up to 2 s: a lagging replica catches up in moments)."""
    return stamina.retry_context(
        on=tuple(errors),
        attempts=attempts,
        timeout=None,
        wait_initial=wait,
        wait_max=max(wait, 2.0),
        wait_jitter=0,
    )


class DetailReader:
    """Reads details for one poller, `concurrency` at a time."""

    def __init__(
        self,
        client: VoxaresClient,
        stream: str,
        *,
        concurrency: int,
        stale_attempts: int,
        stale_wait: float,
    ) -> None:
        self._client = client
        self._stream = stream
        self._concurrency = concurrency
        self._attempts = stale_attempts
        self._wait = stale_wait
        self._slots = asyncio.Semaphore(concurrency)

    def start_run(self) -> None:
        """Call at the start of each run: a semaphore belongs to the event loop that first
        waits on it, and a run may be on another loop than the last (one-shot commands)."""
        self._slots = asyncio.Semaphore(self._concurrency)

    async def read(self, item: Listed, counts: PollCounts) -> DetailOutcome:
        """The detail of a listed item, at least as new as listed, or what became of it."""
        # Nearly every first read succeeds: it is made without a stamina retry context
        # (building and stepping one cost ~7 % of the event loop's time per detail). Its
        # failure, if it is one worth a re-read, is replayed as the context's first attempt,
        # so the schedule, the attempt numbers and stamina's retry hooks stay as they were.
        first_failure: Exception | None = None
        try:
            return await self._read_once(item, counts, attempt=1)
        except (_StillStale, _Missing, VoxaresMalformedResponse) as exc:
            first_failure = exc
        detail: SubmissionDetail | None = None
        try:
            # A malformed answer is read again like a stale one (as list pages are), and so
            # is a missing one: a replica behind the list may not hold the submission yet.
            retried = (_StillStale, _Missing, VoxaresMalformedResponse)
            async for attempt in rereads(retried, attempts=self._attempts, wait=self._wait):
                with attempt:
                    if first_failure is not None:
                        replayed, first_failure = first_failure, None
                        raise replayed
                    detail = await self._read_once(item, counts, attempt=attempt.num)
        except _StillStale:
            log.warning(
                "poller.detail_deferred",
                stream=self._stream,
                submission_id=item.submission_id,
                reads=self._attempts,
                hint="left to the reconciliation sweep",
            )
            return Deferred(item)
        except _Missing as missing:
            return Gone(item, missing.status)
        assert detail is not None
        return detail

    async def _read_once(
        self, item: Listed, counts: PollCounts, *, attempt: int
    ) -> SubmissionDetail:
        """One read of the detail; raises `_StillStale` or `_Missing` for a lagging replica."""
        try:
            async with self._slots:
                detail = await self._client.get_form_submission(item.submission_id)
        except VoxaresHTTPError as exc:
            if exc.status in GONE_STATUSES:
                raise _Missing(exc.status) from None
            raise
        counts.details += 1
        testing_hooks.step(STEP_AFTER_DETAIL)
        # Newer than listed is fine: that version is emitted (and its own listing later is
        # a duplicate). Older means a lagging read, and so does another status at the same
        # rendered millisecond.
        if _older_than_listed(detail, item):
            counts.stale_details += 1
            log.debug(
                "poller.detail_stale",
                stream=self._stream,
                submission_id=item.submission_id,
                attempt=attempt,
            )
            raise _StillStale
        return detail


def _older_than_listed(detail: SubmissionDetail, item: Listed) -> bool:
    if detail.updated_at != item.updated_at:
        return detail.updated_at < item.updated_at
    return item.status is not None and detail.submission_status != item.status
