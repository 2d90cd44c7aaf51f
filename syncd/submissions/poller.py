"""The form-submission poller: the latest visible version of each submission into the outbox, once.

One run reads the server's clock (the `Date` header of a cheap list call), then polls
windows `[watermark - overlap, server_now - settle]` (see `window.py`) until caught up:

1. save the window in `poller_state` BEFORE fetching it; a crashed run's window is resumed
   as saved, so no time range is skipped whatever the clock says by then;
2. list it until a paging pass is provably complete (re-list, split, see `WindowPaging`),
   each query covering the sub-millisecond tail of its last millisecond (`Window.query_to`);
   a window holding more than `max_window_items` is cut into parts sized at the pace of
   the parts already listed (`Pace`, `Part`), about one list call per 100 items;
3. skip every listed `(id, updatedAt)` already recorded, or older than a recorded version
   (the overlap and a re-run cost list calls, not detail reads);
4. fetch the other details, a bounded number at a time. A detail older than listed (a
   lagging replica) or malformed is read again a few times; one still older is left to the
   sweep (step 7) instead of stalling the stream. A detail answering 404, 403 or 410 on
   every read is recorded as `form_submission.removed`;
5. emit one outbox event per version not yet recorded, each in the transaction of its
   `submission_versions` row (one transaction per batch of details), and never a version
   older than one already recorded for the same submission;
6. after each completed part of a split window, save what is left of it, and when every
   part is done, move the watermark to the window's end and clear the saved window, in
   one transaction;
7. when due, sweep a long lookback behind the watermark (`sweep.py`): list calls, and a
   detail read only for a listed version never recorded. A version found there is logged
   as a warning with how late it was: it means `settle`/`overlap` are too small for this
   server. A due sweep over nothing but what this run just listed (a first run, a long
   catch-up) is left due for the next run instead of repeating every list call.

A failure anywhere leaves the watermark where it was: the next run repeats what is left of
the window, and the version records make the repeat emit nothing twice and read no detail
twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import structlog
from sqlalchemy import Engine

from syncd import metrics, testing_hooks
from syncd.exceptions import (
    RateLimited,
    ServerError,
    VoxaresMalformedResponse,
    VoxaresTransportError,
    WindowUnstable,
)
from syncd.submissions.counts import PollCounts
from syncd.submissions.details import STEP_AFTER_DETAIL as STEP_AFTER_DETAIL
from syncd.submissions.details import Deferred, DetailOutcome, DetailReader, rereads
from syncd.submissions.store import Gone, PollerStore, Recorded
from syncd.submissions.sweep import Sweep, listed_by_this_run, sweep_window
from syncd.submissions.window import (
    Listed,
    Pace,
    PagingPolicy,
    Part,
    Verdict,
    Window,
    WindowPaging,
    next_window,
)
from syncd.voxares import contract
from syncd.voxares.client import VoxaresClient
from syncd.voxares.models import Page, SubmissionDetail, SubmissionFilters, SubmissionSummary

log = structlog.get_logger(__name__)

# Crash points (`syncd.testing_hooks`), in the order a window reaches them.
STEP_WINDOW_SAVED: Final = "poller.window_saved"
STEP_AFTER_PAGE: Final = "poller.after_page"
STEP_AFTER_OUTBOX_INSERT: Final = "poller.after_outbox_insert"
STEP_BEFORE_WATERMARK: Final = "poller.before_watermark"
STEP_AFTER_WATERMARK: Final = "poller.after_watermark"


@dataclass(frozen=True, slots=True)
class _Split:
    """A part that is polled as two: its first part, the rest, and its count if oversized."""

    first: Window
    rest: Window
    count: int | None


# Failures of a part that a new attempt at it may not meet.
TRANSIENT: Final = (ServerError, RateLimited, VoxaresTransportError, VoxaresMalformedResponse)


def _as_timedelta(value: float | timedelta) -> timedelta:
    return value if isinstance(value, timedelta) else timedelta(seconds=value)


class SubmissionPoller:
    """Polls `GET /form-submissions` into `form_submission.updated` outbox events.

    `overlap` and `settle` are durations (seconds or timedelta) on the server's clock;
    `start_from` is where a stream without a watermark begins; `provider` is this
    daemon's provider name, preferred when resolving a patient's EHR id through the mirror;
    `sweeps` are the reconciliation sweeps run at the end of a run when due.
    """

    def __init__(
        self,
        engine: Engine,
        client: VoxaresClient,
        *,
        overlap: float | timedelta,
        settle: float | timedelta,
        page_size: int,
        max_window_seconds: float,
        max_window_items: int,
        detail_concurrency: int,
        start_from: datetime,
        provider: str,
        stream: str = "form_submissions",
        max_relists: int = 2,
        max_unsplittable_passes: int = 25,
        stale_attempts: int = 4,
        stale_wait: float = 0.25,
        sweeps: Sequence[Sweep] = (),
    ) -> None:
        if start_from.tzinfo is None:
            raise ValueError("start_from must be timezone-aware")
        if not 1 <= page_size <= contract.MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {contract.MAX_PAGE_SIZE}")
        if detail_concurrency < 1 or stale_attempts < 1:
            raise ValueError("detail_concurrency and stale_attempts must be positive")
        self._client = client
        self._store = PollerStore(engine, stream, provider=provider)
        self._overlap = _as_timedelta(overlap)
        self._settle = _as_timedelta(settle)
        self._max_window = timedelta(seconds=max_window_seconds)
        if self._max_window <= self._overlap:
            raise ValueError("max_window_seconds must exceed overlap")
        self._start_from = start_from
        self._page_size = page_size
        self._policy = PagingPolicy(
            page_size=page_size,
            max_window_items=max_window_items,
            max_relists=max_relists,
            max_unsplittable_passes=max_unsplittable_passes,
        )
        self._details = DetailReader(
            client,
            stream,
            concurrency=detail_concurrency,
            stale_attempts=stale_attempts,
            stale_wait=stale_wait,
        )
        self._stale_attempts = stale_attempts
        self._stale_wait = stale_wait
        self._sweeps = tuple(sweeps)
        self.stream = stream

    async def run(self, run_id: int | None) -> PollCounts:
        """Poll windows until caught up with the server's clock, then sweep when due.

        Raises `PollWindowFailed` (unstable window), `VoxaresError` or `StateError` with
        the watermark unmoved; the next run resumes what is left of the same window.
        """
        counts = PollCounts()
        self._details.start_run()
        state = await asyncio.to_thread(self._store.load)
        window = state.window
        resumed = window is not None
        server_now: datetime | None = None
        if window is None:
            server_now = await self._server_now()
            window = self._next(state.watermark, server_now)
        watermark = state.watermark
        # Where this run's listing begins: a sweep within it would only repeat it.
        polled_from = None if window is None else window.start
        while window is not None:
            if resumed:
                log.info(
                    "poller.window_resumed",
                    stream=self.stream,
                    run_id=run_id,
                    window_start=contract.format_timestamp(window.start),
                    window_end=contract.format_timestamp(window.end),
                )
            else:
                await asyncio.to_thread(self._store.save_window, window)
                testing_hooks.step(STEP_WINDOW_SAVED)
            await self._poll_window(window, counts, run_id, keep_progress=True)
            testing_hooks.step(STEP_BEFORE_WATERMARK)
            await asyncio.to_thread(self._store.finish_window, window)
            testing_hooks.step(STEP_AFTER_WATERMARK)
            counts.windows += 1
            watermark = window.end
            log.debug(
                "poller.window_done",
                stream=self.stream,
                run_id=run_id,
                window_start=contract.format_timestamp(window.start),
                window_end=contract.format_timestamp(window.end),
            )
            if server_now is None:
                server_now = await self._server_now()
            window, resumed = self._next(watermark, server_now), False
        if watermark is not None and server_now is not None:
            lag = (server_now - watermark).total_seconds()
            metrics.WATERMARK_LAG.labels(stream=self.stream).set(max(0.0, lag))
        if self._sweeps and watermark is not None:
            await self._sweep_when_due(
                counts, run_id, server_now or await self._server_now(), polled_from
            )
        log.debug("poller.run_done", stream=self.stream, run_id=run_id, **counts.as_dict())
        return counts

    async def reconcile(self, run_id: int | None, *, since: datetime | None = None) -> PollCounts:
        """Sweep by hand (`syncd sync reconcile`): re-list from `since` to the watermark.

        Without `since` the longest configured lookback is swept (a week by default).
        """
        counts = PollCounts()
        self._details.start_run()
        server_now = await self._server_now()
        if since is not None:
            lookback = server_now - since
        else:
            lookback = max((s.lookback for s in self._sweeps), default=timedelta(days=7))
        await self._sweep(lookback, counts, run_id, server_now)
        log.info("poller.reconcile_done", stream=self.stream, run_id=run_id, **counts.as_dict())
        return counts

    async def _sweep_when_due(
        self,
        counts: PollCounts,
        run_id: int | None,
        server_now: datetime,
        polled_from: datetime | None,
    ) -> None:
        """Run the longest of the sweeps that are due, and record it done for all of them.

        A sweep over nothing but what this run listed is left due for the next run
        (`listed_by_this_run`).
        """
        last = await asyncio.to_thread(self._store.sweeps_done, [s.name for s in self._sweeps])
        due = [s for s in self._sweeps if s.due(last.get(s.name), server_now)]
        if not due:
            return
        longest = max(due, key=lambda s: s.lookback)
        if not await self._sweep(longest.lookback, counts, run_id, server_now, polled_from):
            log.debug("poller.sweep_deferred", stream=self.stream, run_id=run_id)
            return
        await asyncio.to_thread(self._store.finish_sweeps, [s.name for s in due], server_now)

    async def _sweep(
        self,
        lookback: timedelta,
        counts: PollCounts,
        run_id: int | None,
        server_now: datetime,
        polled_from: datetime | None = None,
    ) -> bool:
        """Sweep `lookback` behind the watermark; False when left for the next run."""
        state = await asyncio.to_thread(self._store.load)
        window = sweep_window(lookback=lookback, server_now=server_now, watermark=state.watermark)
        if window is None:
            return True
        if listed_by_this_run(window, polled_from):
            return False
        counts.sweeps += 1
        await self._poll_window(window, counts, run_id, keep_progress=False, found_at=server_now)
        log.debug(
            "poller.sweep_done",
            stream=self.stream,
            run_id=run_id,
            window_start=contract.format_timestamp(window.start),
            window_end=contract.format_timestamp(window.end),
            found=counts.sweep_found,
        )
        return True

    def _next(self, watermark: datetime | None, server_now: datetime) -> Window | None:
        return next_window(
            watermark=watermark,
            start_from=self._start_from,
            server_now=server_now,
            overlap=self._overlap,
            settle=self._settle,
            max_window=self._max_window,
        )

    async def _server_now(self) -> datetime:
        """The server's clock, from the `Date` header of a one-item list call."""
        page = await self._client.list_form_submissions(None, page=0, page_size=1)
        if page.server_date is None:
            raise VoxaresMalformedResponse(
                "The answer has no usable Date header; the poller needs the server's clock.",
                method="GET",
                path=contract.FORM_SUBMISSIONS,
            )
        return page.server_date

    async def _poll_window(
        self,
        window: Window,
        counts: PollCounts,
        run_id: int | None,
        *,
        keep_progress: bool,
        found_at: datetime | None = None,
    ) -> None:
        """List and emit a window, splitting it (earlier half first) as the listing demands.

        The parts complete in time order, so what is done is always a prefix of the window:
        with `keep_progress` the rest is saved after each part, and a failed run resumes
        there. `found_at` (the server's clock) marks a sweep: what it emits was missed.
        """
        pending = [Part(window)]
        pace = Pace()  # how densely the parts done so far held items (sizes the next cuts)
        done_items = 0  # items listed by the parts done so far
        target = self._policy.max_window_items
        while pending:
            part = pending.pop()
            # A rest expected to be oversized is cut at once: listing its first page
            # would only say so (one list call per cut, see `Part`).
            presplit = part.presplit(done_items, target, pace)
            if presplit is not None:
                pending += [presplit[1], presplit[0]]
                counts.splits += 1
                log.debug("poller.window_split", stream=self.stream, width_ms=part.window.width_ms)
                continue
            # A part that fails on a transient answer is tried again at once: what it
            # recorded is kept, so a retry re-lists it and reads only what is missing.
            async for attempt in self._rereads(*TRANSIENT):
                with attempt:
                    outcome = await self._poll_part(part.window, counts, run_id, found_at, pace)
            if isinstance(outcome, _Split):
                pending += [Part(outcome.rest, outcome.count, done_items), Part(outcome.first)]
                counts.splits += 1
                log.debug("poller.window_split", stream=self.stream, width_ms=part.window.width_ms)
                continue
            done_items += outcome
            rest = window.after(Window(window.start, part.window.end))
            if keep_progress and rest is not None:
                await asyncio.to_thread(self._store.save_window, rest)

    async def _poll_part(
        self,
        part: Window,
        counts: PollCounts,
        run_id: int | None,
        found_at: datetime | None,
        pace: Pace,
    ) -> int | _Split:
        """List a part and emit what it holds (how many it listed), or the parts to poll instead."""
        listed = await self._list(part, counts, pace)
        if isinstance(listed, _Split):
            return listed
        counts.listed += len(listed)
        await self._emit(await self._unrecorded(listed, counts), counts, run_id, found_at)
        pace.record(part, (item.updated_at for item in listed.values()))
        return len(listed)

    async def _unrecorded(self, listed: Mapping[str, Listed], counts: PollCounts) -> list[Listed]:
        """The listed versions that need a detail read, oldest first."""
        histories = await asyncio.to_thread(self._store.histories, listed)
        todo = [
            item
            for item in listed.values()
            if item.submission_id not in histories or not histories[item.submission_id].covers(item)
        ]
        counts.known_skipped += len(listed) - len(todo)
        return sorted(todo, key=lambda i: (i.updated_at, i.submission_id))

    async def _list(
        self, window: Window, counts: PollCounts, pace: Pace
    ) -> Mapping[str, Listed] | _Split:
        """The window's complete listing, or the two parts to poll instead."""
        paging = WindowPaging(window, self._policy)
        filters = SubmissionFilters(updated_from=window.start, updated_to=window.query_to)
        while True:
            page = await self._page(filters, paging.next_page)
            counts.pages += 1
            testing_hooks.step(STEP_AFTER_PAGE)
            verdict = paging.record(page.count, [_listed(item) for item in page.data])
            if verdict is Verdict.ACCEPT:
                return paging.listed
            if verdict is Verdict.SPLIT:
                first, rest = paging.split(pace)
                # The rest of an oversized window is expected to hold its count minus
                # what the first part lists; an unstable one's count says nothing.
                return _Split(first, rest, paging.oversized)
            if verdict is Verdict.RELIST:
                counts.relists += 1
                log.debug(
                    "poller.window_relisted",
                    stream=self.stream,
                    width_ms=window.width_ms,
                    passes=paging.passes,
                    count=page.count,
                )
            elif verdict is Verdict.GIVE_UP:
                raise WindowUnstable(
                    f"stream={self.stream} window of {window.width_ms} ms did not list "
                    f"completely in {paging.passes} passes"
                )

    async def _page(self, filters: SubmissionFilters, number: int) -> Page[SubmissionSummary]:
        """One list page; a malformed answer is read again (up to `stale_attempts` reads).

        The client never retries a malformed answer; a GET can safely be repeated, and
        without this one garbled page in a window of hundreds fails the whole window, so a
        low but steady rate of them would keep a large window from ever completing.
        """
        async for attempt in self._rereads(VoxaresMalformedResponse):
            with attempt:
                return await self._client.list_form_submissions(
                    filters, page=number, page_size=self._page_size
                )
        raise AssertionError("unreachable: stamina re-raises the last failure")

    def _rereads(self, *errors: type[Exception]) -> Any:
        """A stamina retry context for reads that are worth repeating after `errors`."""
        return rereads(errors, attempts=self._stale_attempts, wait=self._stale_wait)

    async def _emit(
        self,
        items: Sequence[Listed],
        counts: PollCounts,
        run_id: int | None,
        found_at: datetime | None,
    ) -> None:
        """Fetch details a page-size batch at a time and record each batch in one commit.

        The next batch's fetches start before this batch is recorded (two batches in
        flight, the detail semaphore bounding the calls), so the detail concurrency stays
        full across batch boundaries instead of draining at the end of every batch.
        """
        batches = [
            items[offset : offset + self._page_size]
            for offset in range(0, len(items), self._page_size)
        ]
        if not batches:
            return
        current = self._fetch(batches[0], counts)
        try:
            for number in range(len(batches)):
                following = (
                    self._fetch(batches[number + 1], counts) if number + 1 < len(batches) else None
                )
                try:
                    results = await asyncio.gather(*current, return_exceptions=True)
                    await self._record(results, counts, run_id, found_at)
                except BaseException:
                    if following is not None:
                        await _cancel_all(following)
                    raise
                if following is None:
                    break
                current = following
        except BaseException:
            await _cancel_all(current)
            raise

    def _fetch(
        self, batch: Sequence[Listed], counts: PollCounts
    ) -> list[asyncio.Task[DetailOutcome]]:
        """Start fetching the details of one batch (the semaphore bounds the calls)."""
        return [asyncio.create_task(self._details.read(item, counts)) for item in batch]

    async def _record(
        self,
        results: Sequence[DetailOutcome | BaseException],
        counts: PollCounts,
        run_id: int | None,
        found_at: datetime | None,
    ) -> None:
        """Record a batch's fetched details in one commit, then raise its first failure."""
        details = [r for r in results if isinstance(r, SubmissionDetail)]
        gone = [r for r in results if isinstance(r, Gone)]
        counts.deferred += sum(isinstance(r, Deferred) for r in results)
        # Record what was fetched even when some failed: the work is kept, and the
        # failed ones fail the window below (the watermark stays for the next run).
        if details:
            recorded: Recorded = await asyncio.to_thread(self._store.record, details, run_id)
            counts.emitted += recorded.emitted
            counts.duplicates_skipped += recorded.duplicates
            counts.superseded += len(recorded.superseded)
            testing_hooks.step(STEP_AFTER_OUTBOX_INSERT)
            log.debug(
                "poller.batch_recorded",
                stream=self.stream,
                details=len(details),
                emitted=recorded.emitted,
                duplicates=recorded.duplicates,
                superseded=len(recorded.superseded),
                first_seq=min(recorded.event_seqs, default=None),
                last_seq=max(recorded.event_seqs, default=None),
            )
            if found_at is not None:
                self._report_found(recorded, found_at, counts)
        if gone:
            removed = await asyncio.to_thread(self._store.record_removed, gone, run_id)
            counts.removed += removed.emitted
            for item in gone:
                log.warning(
                    "poller.submission_gone",
                    stream=self.stream,
                    submission_id=item.listed.submission_id,
                    status=item.status,
                )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise failures[0]

    def _report_found(self, recorded: Recorded, found_at: datetime, counts: PollCounts) -> None:
        """Count and log the versions a sweep emitted: polling missed each of them."""
        if not recorded.emitted_versions:
            return
        counts.sweep_found += len(recorded.emitted_versions)
        metrics.SWEEP_FOUND.labels(stream=self.stream).inc(len(recorded.emitted_versions))
        worst = 0.0
        for submission_id, updated_at in recorded.emitted_versions:
            late = max(0.0, (found_at - updated_at).total_seconds())
            worst = max(worst, late)
            log.warning(
                "poller.sweep_found",
                stream=self.stream,
                submission_id=submission_id,
                late_seconds=round(late, 3),
                hint="settle_seconds/overlap_seconds are too small for this server",
            )
        metrics.SWEEP_LATENESS.labels(stream=self.stream).set(worst)


def _listed(item: SubmissionSummary) -> Listed:
    return Listed(
        item.id,
        item.updated_at,
        status=item.submission_status,
        patient_id=item.patient.id if item.patient else None,
        form_id=item.form.id if item.form else None,
    )


async def _cancel_all(tasks: Sequence[asyncio.Task[DetailOutcome]]) -> None:
    """Cancel unfinished fetches and wait for every task, retrieving their outcomes."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
