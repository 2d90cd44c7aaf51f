"""Window arithmetic and paging decisions for the form-submission poller (pure, no I/O).

The list endpoint pages by offset, in an undocumented order, with inclusive
`updatedFrom`/`updatedTo` bounds, while the server keeps updating and inserting
submissions. The poller therefore reads the stream as a sequence of closed time windows
`[start, end]` (API time, millisecond resolution) and only trusts a window's listing when
a paging pass over it was provably complete:

* the `count` was the same on every page (nothing entered or left the window meanwhile), and
* the number of distinct ids seen equals that count (no item was skipped or shown twice
  because the order shifted between page requests).

An unstable window is listed again a few times, then split in two at the median `updatedAt`
it listed (so each half holds about half its items); a window that holds more items than
can be paged safely (`max_window_items`) is split at once, into a first part sized to hold
about that many items at the pace of the parts already listed (`Pace`) and a rest, which
is cut again without a listing while its expected count is still too large (`Part`): one
list call per cut at most, where halving at the first page's median paid one per page of
clustered items. A window whose end lies at
least `settle` before the server's clock can only lose items (an update moves an item to the
server's "now", past the window; an insert is stamped "now" too), so a later window always
catches what moved out of this one.

Windows are kept in the API's rendered resolution (milliseconds), but the server may store
and compare `updatedAt` more finely (a Node + PostgreSQL server keeps microseconds, so an
item stored at `...15.123456Z` is rendered `...15.123Z` yet matches neither
`updatedTo=...15.123Z` nor `updatedFrom=...15.124Z`). Every query therefore asks for
`[start, end + 1 ms]` (`Window.query_to`): it covers the sub-millisecond tail of its last
millisecond whatever the storage precision, the two halves of a split overlap by exactly
that instant, and a tie window `[t, t]` asks for `[t, t + 1 ms]`. The overlap is read twice
at most and absorbed by the version records.

Everything here takes and returns plain values; the poller does the I/O.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

MILLISECOND = timedelta(milliseconds=1)


def floor_ms(moment: datetime) -> datetime:
    """Truncate an aware datetime to the API's resolution (milliseconds), in UTC."""
    if moment.tzinfo is None:
        raise ValueError("window arithmetic needs timezone-aware datetimes")
    utc = moment.astimezone(UTC)
    return utc.replace(microsecond=utc.microsecond // 1000 * 1000)


@dataclass(frozen=True, slots=True)
class Window:
    """A closed interval `[start, end]` of API `updatedAt` values, both bounds inclusive."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("window bounds must be timezone-aware")
        if self.end < self.start:
            raise ValueError("window end precedes its start")

    @property
    def width_ms(self) -> int:
        """Width in whole milliseconds (0 for a window holding a single timestamp)."""
        return (self.end - self.start) // MILLISECOND

    @property
    def query_to(self) -> datetime:
        """The `updatedTo` that covers every value stored within the window's last millisecond.

        `end + 1 ms` (inclusive) is the first value that renders after the window: asking
        for it reads at most that one instant twice (absorbed by the version records),
        where asking for `end` would miss `end + 0.456 ms` on a server storing microseconds.
        """
        return self.end + MILLISECOND

    @property
    def splittable(self) -> bool:
        """Whether the window spans more than one millisecond timestamp."""
        return self.width_ms > 0

    def halves(self, at: datetime | None = None) -> tuple[Window, Window]:
        """Split into two disjoint, adjacent windows that together cover this one.

        The first half ends at `at` (clamped into `[start, end - 1 ms]`), by default at the
        middle in time. Bounds are inclusive, so the second half starts one millisecond
        after the first ends: no timestamp is covered twice and none is left out.
        """
        if not self.splittable:
            raise ValueError("a zero-width window cannot be split")
        if at is None:
            mid = self.start + (self.width_ms // 2) * MILLISECOND
        else:
            mid = min(max(floor_ms(at), self.start), self.end - MILLISECOND)
        return Window(self.start, mid), Window(mid + MILLISECOND, self.end)

    def after(self, done: Window) -> Window | None:
        """What is left of this window once its prefix `done` (same start) is complete.

        None when `done` reaches this window's end. The rest starts one millisecond after
        `done` ends, and `done`'s query already covered its last millisecond's tail.
        """
        if done.start != self.start or not self.start <= done.end <= self.end:
            raise ValueError("done must be a prefix of this window")
        if done.end == self.end:
            return None
        return Window(done.end + MILLISECOND, self.end)


def next_window(
    *,
    watermark: datetime | None,
    start_from: datetime,
    server_now: datetime,
    overlap: timedelta,
    settle: timedelta,
    max_window: timedelta,
) -> Window | None:
    """The next window to poll, or None when the stream is caught up.

    The window runs from `watermark - overlap` (first run: `start_from`) to
    `server_now - settle`, capped at `max_window` wide
    (except the first, see below). `server_now` is the API's clock,
    never ours. The overlap re-reads a margin already covered (versions already emitted
    are deduplicated downstream); the settle keeps the window's end far enough in the
    past that no write in flight on the server can still be stamped inside it.
    """
    if max_window <= overlap:
        raise ValueError("max_window must be larger than overlap, or windows cannot advance")
    horizon = floor_ms(server_now - settle)
    if watermark is None:
        start = floor_ms(start_from)
        if horizon < start:
            return None
        # The first window takes all history at once: walking years hour by hour would cost
        # two calls per empty hour. Its size is bounded by count instead (a window with more
        # than max_window_items is split in time), like every other window.
        return Window(start, horizon)
    else:
        if horizon <= watermark:
            return None
        start = floor_ms(watermark - overlap)
    return Window(start, min(horizon, start + max_window))


@dataclass(frozen=True, slots=True)
class Listed:
    """One list item as far as the poller cares: its id and the `updatedAt` listed.

    The ids of its patient and form are kept for a submission that is gone by the time
    its detail is read: its removal event can still name them.
    """

    submission_id: str
    updated_at: datetime
    status: str | None = None
    patient_id: str | None = None
    form_id: str | None = None


def _merge(into: dict[str, Listed], items: Iterable[Listed]) -> None:
    """Add items, keeping the newest listed version of an id seen more than once."""
    for item in items:
        seen = into.get(item.submission_id)
        if seen is None or item.updated_at > seen.updated_at:
            into[item.submission_id] = item


@dataclass(slots=True)
class PagingPass:
    """One pass over a window's pages, 0, 1, 2, ..., accumulated until it can be judged.

    The pass expects `ceil(count / page_size)` pages (at least one), where `count` is the
    first page's total. It ends early as soon as a page reports another count.
    """

    page_size: int
    count: int | None = None
    pages: int = 0
    count_changed: bool = False
    listed: dict[str, Listed] = field(default_factory=dict)

    def record(self, count: int, items: Iterable[Listed]) -> None:
        """Take the next page's total `count` and items."""
        if self.count is None:
            self.count = count
        elif count != self.count:
            self.count_changed = True
        self.pages += 1
        _merge(self.listed, items)

    @property
    def expected_pages(self) -> int | None:
        """How many pages the first page's count implies, once known."""
        if self.count is None:
            return None
        return max(1, math.ceil(self.count / self.page_size))

    @property
    def next_page(self) -> int | None:
        """The zero-based page to fetch next, or None when the pass is over."""
        expected = self.expected_pages
        if expected is None:
            return 0
        if self.count_changed or self.pages >= expected:
            return None
        return self.pages

    @property
    def stable(self) -> bool:
        """Whether the pass is over and proves a complete listing of the window."""
        return self.next_page is None and not self.count_changed and len(self.listed) == self.count


@dataclass(slots=True)
class Pace:
    """How densely the completed parts of one window held items: the size of the next part.

    A window holding more than `max_window_items` is cut into parts, earliest first. The
    first page of an oversized window is a poor guide to where to cut: the list's order
    is undocumented, and in creation or time order that page holds only the earliest (or
    latest) items, so cutting at its median costs one extra list call per page when the
    items cluster (a cut after the first hundred items, a probe of the rest, and so on).
    The parts already listed completely say how many items a millisecond held just
    before the cut; the next part is sized from that. A pace that proves wrong costs a
    list call (an oversized part is split again), never an item: any cut is lossless.
    """

    since: datetime | None = None  # the earliest `updatedAt` listed in the completed parts
    until: datetime | None = None  # the end of the latest completed part
    items: int = 0

    def record(self, part: Window, stamps: Iterable[datetime]) -> None:
        """Take a completed part (parts complete in time order) and the `updatedAt`s it listed."""
        seen = [floor_ms(stamp) for stamp in stamps]
        if self.since is None:
            if not seen:
                # An empty part before any item says nothing: it may span all history.
                return
            self.since = min(seen)
        self.items += len(seen)
        self.until = part.end if self.until is None else max(self.until, part.end)

    def width_for(self, items: int) -> int | None:
        """Milliseconds expected to hold `items` at this pace, or None before any item."""
        if self.since is None or self.until is None or self.items == 0:
            return None
        span_ms = max(1, (self.until - self.since) // MILLISECOND + 1)
        return max(1, items * span_ms // self.items)


def paced_cut(window: Window, count: int, target: int, pace: Pace) -> datetime | None:
    """Where the first part of an oversized window should end, or None without a pace.

    The first part is sized to hold about `target` items at the pace of the parts before
    it, and never wider than the window's share `target / count` of its time: a pace
    that lags a burst then shrinks the part at each try instead of cutting a millisecond
    off the window's end. The cut leaves both parts non-empty in time.
    """
    if not window.splittable or count <= target:
        return None
    width = pace.width_for(target)
    if width is None:
        return None
    share = max(1, (window.width_ms + 1) * target // count)
    return window.start + (min(width, share) - 1) * MILLISECOND


@dataclass(frozen=True, slots=True)
class Part:
    """A part of a window waiting to be polled, and how many items it is expected to hold.

    The rest of an oversized window after its first part holds what the window counted
    minus what the parts completed since the cut listed (parts complete earliest first,
    so those are exactly the ones carved before it). A rest expected to be oversized
    too is cut again at the pace without listing it: its first page would only say so.
    The expectation steers cost only; an update moving items out makes it too high, a
    late commit too low, and the parts still cover the window whatever it says.
    """

    window: Window
    parent_count: int | None = None  # the count of the window this rest was cut from
    listed_before: int = 0  # items the poll had listed when it was cut

    def expected(self, listed_now: int) -> int | None:
        """Items expected in this part once the poll has listed `listed_now`, if known."""
        if self.parent_count is None:
            return None
        return max(0, self.parent_count - (listed_now - self.listed_before))

    def presplit(self, listed_now: int, target: int, pace: Pace) -> tuple[Part, Part] | None:
        """The first part and the rest to poll instead, when this part is expected oversized."""
        expected = self.expected(listed_now)
        if expected is None:
            return None
        cut = paced_cut(self.window, expected, target, pace)
        if cut is None:
            return None
        first, rest = self.window.halves(at=cut)
        return Part(first), Part(rest, expected, listed_now)


class Verdict(enum.Enum):
    """What the poller does after recording a page."""

    NEXT_PAGE = "next_page"  # the pass goes on
    ACCEPT = "accept"  # the listing is complete: fetch the details
    RELIST = "relist"  # start a new pass over the same window
    SPLIT = "split"  # poll the two halves instead
    GIVE_UP = "give_up"  # fail the window; the watermark stays, the next run retries


@dataclass(frozen=True, slots=True)
class PagingPolicy:
    """Limits that decide between re-listing, splitting and giving up."""

    page_size: int
    # A window reporting more items than this is split before it is paged through.
    max_window_items: int
    # Passes repeated on an unstable splittable window before it is split.
    max_relists: int = 2
    # Passes tried on a window that cannot be split before the run fails.
    max_unsplittable_passes: int = 25

    def __post_init__(self) -> None:
        if self.page_size < 1 or self.max_window_items < 1:
            raise ValueError("page_size and max_window_items must be positive")


class WindowPaging:
    """The paging state machine for one window: ask `next_page`, feed `record`, obey it.

    A window that cannot be split (all its items share one millisecond) is paged with
    retries until it is listed completely, because no narrower filter exists. That loop
    terminates in practice: the bounds are inclusive and lie in the settled past, so the
    window's set is fixed except for updates, which move items OUT of it (to a later
    `updatedAt` that the next window catches). Each departure changes the count once;
    between departures, passes see the same set. For such a window the ids of every page
    that reported the same count are also pooled across passes: with the count unchanged
    nothing left, so once the pool holds `count` distinct ids it is the whole set, even if
    the server's order shifts between requests so that no single pass sees every id.
    """

    def __init__(self, window: Window, policy: PagingPolicy) -> None:
        self.window = window
        self.policy = policy
        self.passes = 1
        self.current = PagingPass(policy.page_size)
        self._pool: dict[str, Listed] = {}
        self._pool_count: int | None = None
        self._accepted: dict[str, Listed] | None = None
        self._oversized: int | None = None

    @property
    def relists(self) -> int:
        """Passes started after the first."""
        return self.passes - 1

    @property
    def next_page(self) -> int:
        """The page the caller must fetch next."""
        page = self.current.next_page
        if page is None:
            raise RuntimeError("the pass is over: obey the last verdict")
        return page

    @property
    def listed(self) -> Mapping[str, Listed]:
        """The complete listing, once the verdict was ACCEPT."""
        if self._accepted is None:
            raise RuntimeError("the window has not been accepted")
        return self._accepted

    def record(self, count: int, items: list[Listed]) -> Verdict:
        """Take one page (its total count and items) and say what to do next."""
        self.current.record(count, items)
        if not self.window.splittable:
            self._pool_page(count, items)
            if self._pool_count is not None and len(self._pool) == self._pool_count:
                self._accepted = dict(self._pool)
                return Verdict.ACCEPT
        elif count > self.policy.max_window_items:
            self._oversized = count
            return Verdict.SPLIT
        if self.current.next_page is not None:
            return Verdict.NEXT_PAGE
        if self.current.stable:
            self._accepted = dict(self.current.listed)
            return Verdict.ACCEPT
        return self._after_unstable_pass()

    def halves(self) -> tuple[Window, Window]:
        """The window split in two at the median `updatedAt` listed so far (see `split`).

        Splitting at the items rather than at the middle in time halves the items each time:
        a wide window whose items cluster (the first window spans all history) would
        otherwise need dozens of halvings, each listed several times, before any half fits
        in one page.
        """
        seen = sorted(item.updated_at for item in self.current.listed.values())
        if not seen:
            return self.window.halves()
        return self.window.halves(at=seen[(len(seen) - 1) // 2])

    @property
    def oversized(self) -> int | None:
        """The count of a window split for holding more than `max_window_items`, else None."""
        return self._oversized

    def split(self, pace: Pace) -> tuple[Window, Window]:
        """The parts to poll instead (SPLIT verdict).

        An oversized window is cut where its first part holds about `max_window_items` at
        the pace of the parts completed before it (`paced_cut`); without a pace, or for a
        window that would not list stably, at the median listed (`halves`).
        """
        if self._oversized is not None:
            cut = paced_cut(self.window, self._oversized, self.policy.max_window_items, pace)
            if cut is not None:
                return self.window.halves(at=cut)
        return self.halves()

    def _pool_page(self, count: int, items: list[Listed]) -> None:
        if count != self._pool_count:
            # The set changed: ids pooled under the old count may have left the window.
            self._pool = {}
            self._pool_count = count
        _merge(self._pool, items)

    def _after_unstable_pass(self) -> Verdict:
        if self.window.splittable:
            if self.relists < self.policy.max_relists:
                return self._relist()
            return Verdict.SPLIT
        if self.passes < self.policy.max_unsplittable_passes:
            return self._relist()
        return Verdict.GIVE_UP

    def _relist(self) -> Verdict:
        self.passes += 1
        self.current = PagingPass(self.policy.page_size)
        return Verdict.RELIST
