"""Window arithmetic and paging decisions of the submission poller, with plain values."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from syncd.submissions.window import (
    MILLISECOND,
    Listed,
    Pace,
    PagingPass,
    PagingPolicy,
    Part,
    Verdict,
    Window,
    WindowPaging,
    floor_ms,
    next_window,
    paced_cut,
)

T0 = datetime(2025, 5, 20, 9, 0, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


def items(*ids: str, at: datetime = T0) -> list[Listed]:
    return [Listed(i, at) for i in ids]


def nw(
    *,
    watermark: datetime | None = None,
    server_now: datetime = T0 + 10 * MIN,
    max_window: timedelta = 60 * MIN,
) -> Window | None:
    """next_window with overlap 30 s, settle 5 s and start_from T0."""
    return next_window(
        watermark=watermark,
        start_from=T0,
        server_now=server_now,
        overlap=timedelta(seconds=30),
        settle=timedelta(seconds=5),
        max_window=max_window,
    )


# --- next_window -------------------------------------------------------------------------


def test_first_window_starts_at_start_from_and_ends_settle_before_server_now() -> None:
    """With no watermark the window is [start_from, server_now - settle]."""
    assert nw() == Window(T0, T0 + 10 * MIN - timedelta(seconds=5))


def test_later_window_starts_overlap_before_the_watermark() -> None:
    """With a watermark the window starts `overlap` before it."""
    got = nw(watermark=T0 + 2 * MIN)
    assert got == Window(T0 + 2 * MIN - timedelta(seconds=30), T0 + 10 * MIN - timedelta(seconds=5))


def test_window_is_capped_by_max_window() -> None:
    """A long backlog after a watermark is read in windows at most max_window wide."""
    got = nw(watermark=T0 + 2 * MIN, server_now=T0 + 1000 * MIN, max_window=5 * MIN)
    start = T0 + 2 * MIN - timedelta(seconds=30)
    assert got == Window(start, start + 5 * MIN)


def test_first_window_takes_all_history_at_once() -> None:
    """With no watermark the window is not capped in time (splitting by count bounds it)."""
    got = nw(server_now=T0 + 1000 * MIN, max_window=5 * MIN)
    assert got == Window(T0, T0 + 1000 * MIN - timedelta(seconds=5))


def test_caught_up_when_the_horizon_does_not_pass_the_watermark() -> None:
    """No window once server_now - settle is at or before the watermark."""
    wm = T0 + 10 * MIN - timedelta(seconds=5)
    assert nw(watermark=wm) is None
    # A server clock that went backwards yields nothing either.
    assert nw(watermark=wm, server_now=T0) is None


def test_first_window_waits_when_start_from_is_in_the_servers_future() -> None:
    """start_from after the server's horizon yields no window (our clock is not theirs)."""
    assert nw(server_now=T0 - MIN) is None


def test_every_window_advances_past_the_watermark() -> None:
    """Capped windows still move the watermark forward by max_window - overlap."""
    wm = T0
    for _ in range(5):
        got = nw(watermark=wm, server_now=T0 + 1000 * MIN, max_window=MIN)
        assert got is not None
        assert got.end == wm + timedelta(seconds=30)
        wm = got.end


def test_max_window_not_larger_than_overlap_is_refused() -> None:
    """A configuration that could never advance is rejected."""
    with pytest.raises(ValueError, match="max_window"):
        nw(max_window=timedelta(seconds=30))


def test_bounds_are_floored_to_milliseconds() -> None:
    """Windows use the API's millisecond resolution."""
    got = nw(server_now=T0 + MIN + timedelta(microseconds=5999))
    assert got is not None
    assert got.end.microsecond == 5000
    assert floor_ms(T0 + timedelta(microseconds=999)) == T0


def test_naive_datetimes_are_refused() -> None:
    """Window arithmetic never guesses a timezone."""
    with pytest.raises(ValueError, match="timezone"):
        floor_ms(datetime(2025, 1, 1))


# --- Window.halves -----------------------------------------------------------------------


def test_halves_are_adjacent_disjoint_and_cover_the_window() -> None:
    """Splitting leaves no millisecond out and none covered twice (bounds are inclusive)."""
    for width in (1, 2, 3, 1000, 12345):
        w = Window(T0, T0 + width * MILLISECOND)
        a, b = w.halves()
        assert a.start == w.start
        assert b.end == w.end
        assert b.start == a.end + MILLISECOND
        assert a.width_ms + b.width_ms + 2 == w.width_ms + 1


def test_zero_width_window_cannot_be_split() -> None:
    """A window holding one timestamp is not splittable."""
    w = Window(T0, T0)
    assert not w.splittable
    with pytest.raises(ValueError, match="zero-width"):
        w.halves()


def test_inverted_window_is_refused() -> None:
    """End before start is a programming error."""
    with pytest.raises(ValueError, match="precedes"):
        Window(T0, T0 - MILLISECOND)


# --- PagingPass --------------------------------------------------------------------------


def test_pass_is_stable_when_counts_agree_and_ids_cover_the_count() -> None:
    """Three consistent pages with all distinct ids make a stable pass."""
    p = PagingPass(page_size=2)
    assert p.next_page == 0
    p.record(5, items("a", "b"))
    assert p.next_page == 1
    p.record(5, items("c", "d"))
    p.record(5, items("e"))
    assert p.next_page is None
    assert p.stable


def test_pass_with_a_duplicate_and_a_missing_id_is_unstable() -> None:
    """A shifted order shows one id twice and hides another: not stable."""
    p = PagingPass(page_size=2)
    p.record(4, items("a", "b"))
    p.record(4, items("b", "c"))
    assert p.next_page is None
    assert not p.stable


def test_pass_ends_early_when_the_count_changes() -> None:
    """A different count on a later page ends the pass as unstable."""
    p = PagingPass(page_size=2)
    p.record(6, items("a", "b"))
    p.record(5, items("c", "d"))
    assert p.count_changed
    assert p.next_page is None
    assert not p.stable


def test_empty_window_is_one_stable_page() -> None:
    """count 0 needs exactly one page."""
    p = PagingPass(page_size=100)
    p.record(0, [])
    assert p.next_page is None
    assert p.stable


def test_pass_keeps_the_newest_listed_version_of_an_id() -> None:
    """An id listed twice keeps its latest updatedAt."""
    p = PagingPass(page_size=1)
    p.record(2, [Listed("a", T0 + MIN)])
    p.record(2, [Listed("a", T0)])
    assert p.listed["a"].updated_at == T0 + MIN


# --- WindowPaging ------------------------------------------------------------------------

WIDE = Window(T0, T0 + MIN)
POINT = Window(T0, T0)


def test_stable_pass_is_accepted() -> None:
    """A consistent complete pass is accepted with every id."""
    paging = WindowPaging(WIDE, PagingPolicy(page_size=2, max_window_items=10))
    assert paging.record(3, items("a", "b")) is Verdict.NEXT_PAGE
    assert paging.next_page == 1
    assert paging.record(3, items("c")) is Verdict.ACCEPT
    assert set(paging.listed) == {"a", "b", "c"}


def test_unstable_splittable_window_is_relisted_then_split() -> None:
    """Up to max_relists new passes, then a split."""
    paging = WindowPaging(WIDE, PagingPolicy(page_size=2, max_window_items=10, max_relists=2))
    verdicts = []
    for _ in range(3):
        paging.record(3, items("a", "b"))
        verdicts.append(paging.record(3, items("b")))
    assert verdicts == [Verdict.RELIST, Verdict.RELIST, Verdict.SPLIT]
    assert paging.relists == 2


def test_too_many_items_split_after_the_first_page() -> None:
    """count > max_window_items splits before paging through."""
    paging = WindowPaging(WIDE, PagingPolicy(page_size=2, max_window_items=3))
    assert paging.record(4, items("a", "b")) is Verdict.SPLIT


def test_unsplittable_window_over_max_items_is_paged_anyway() -> None:
    """A zero-width window too large for max_window_items is still paged."""
    paging = WindowPaging(POINT, PagingPolicy(page_size=2, max_window_items=1))
    assert paging.record(3, items("a", "b")) is Verdict.NEXT_PAGE
    assert paging.record(3, items("c")) is Verdict.ACCEPT


def test_unsplittable_window_pools_ids_across_passes_with_one_count() -> None:
    """Shuffled passes with an unchanged count together prove the complete set."""
    paging = WindowPaging(POINT, PagingPolicy(page_size=2, max_window_items=10))
    paging.record(4, items("a", "b"))
    assert paging.record(4, items("a", "c")) is Verdict.RELIST
    assert paging.record(4, items("d", "a")) is Verdict.ACCEPT
    assert set(paging.listed) == {"a", "b", "c", "d"}


def test_unsplittable_pool_restarts_when_the_count_changes() -> None:
    """Ids pooled before an item left are not trusted to make up the new count."""
    paging = WindowPaging(POINT, PagingPolicy(page_size=2, max_window_items=10))
    paging.record(4, items("a", "b"))
    # Pooled with the old {a, b}, these would "cover" the new count of 3.
    assert paging.record(3, items("c")) is Verdict.RELIST
    assert paging.record(3, items("c", "d")) is Verdict.NEXT_PAGE
    assert paging.record(3, items("a")) is Verdict.ACCEPT
    assert set(paging.listed) == {"a", "c", "d"}


def test_unsplittable_window_gives_up_after_max_passes() -> None:
    """A window that never lists completely fails instead of looping forever."""
    policy = PagingPolicy(page_size=1, max_window_items=10, max_unsplittable_passes=3)
    paging = WindowPaging(POINT, policy)
    verdicts = []
    for _ in range(3):
        assert paging.record(2, items("x")) is Verdict.NEXT_PAGE
        verdicts.append(paging.record(2, items("x")))
    assert verdicts == [Verdict.RELIST, Verdict.RELIST, Verdict.GIVE_UP]


def test_shuffled_offset_paging_of_a_point_window_converges() -> None:
    """250 items sharing one timestamp, reshuffled on every request, are all listed."""
    rng = random.Random(7)
    ids = [f"s{i:03d}" for i in range(250)]
    paging = WindowPaging(POINT, PagingPolicy(page_size=100, max_window_items=100))
    requests = 0
    while True:
        page = paging.next_page
        order = ids[:]
        rng.shuffle(order)
        requests += 1
        verdict = paging.record(len(ids), items(*order[page * 100 : page * 100 + 100]))
        if verdict is Verdict.ACCEPT:
            break
        assert verdict in {Verdict.NEXT_PAGE, Verdict.RELIST}
    assert set(paging.listed) == set(ids)
    assert requests < 60


def test_listed_before_accept_is_an_error() -> None:
    """Reading an unaccepted listing is a programming error."""
    paging = WindowPaging(WIDE, PagingPolicy(page_size=2, max_window_items=10))
    with pytest.raises(RuntimeError):
        _ = paging.listed


def test_policy_refuses_nonpositive_sizes() -> None:
    """A zero page size cannot page."""
    with pytest.raises(ValueError, match="positive"):
        PagingPolicy(page_size=0, max_window_items=1)


def test_split_halves_the_listed_items_not_the_time() -> None:
    """A wide window whose items cluster is split at their median updatedAt, clamped inside."""
    wide = Window(T0 - timedelta(days=9000), T0 + MIN)
    paging = WindowPaging(wide, PagingPolicy(page_size=2, max_window_items=3))
    listed = [Listed(f"s{i}", T0 + timedelta(seconds=i)) for i in range(4)]
    assert paging.record(4, listed[:2]) is Verdict.SPLIT
    first, second = paging.halves()
    assert (first.start, first.end, second.start, second.end) == (
        wide.start,
        T0,
        T0 + timedelta(milliseconds=1),
        wide.end,
    )
    at_end = WindowPaging(Window(T0, T0 + MIN), PagingPolicy(page_size=1, max_window_items=1))
    at_end.record(2, [Listed("x", T0 + MIN)])
    assert at_end.halves()[1] == Window(T0 + MIN, T0 + MIN)


# --- storage precision: query bounds and prefixes ------------------------------------------


def test_a_query_covers_the_sub_millisecond_tail_of_its_last_millisecond() -> None:
    """updatedTo is end + 1 ms: a value stored at end + 0.456 ms is inside the query."""
    w = Window(T0, T0 + 10 * MILLISECOND)
    assert w.query_to == T0 + 11 * MILLISECOND
    stored = w.end + timedelta(microseconds=456)
    assert w.start <= stored <= w.query_to
    tie = Window(T0, T0)
    assert tie.query_to == T0 + MILLISECOND  # a tie window reads its whole millisecond


@pytest.mark.parametrize("micro", [0, 1, 456, 999])
def test_split_halves_leave_no_stored_value_uncovered(micro: int) -> None:
    """Any value stored within the window, at any precision, is inside some half's query."""
    w = Window(T0, T0 + 9 * MILLISECOND)
    first, second = w.halves()
    for ms in range(10):
        stored = T0 + ms * MILLISECOND + timedelta(microseconds=micro)
        assert any(h.start <= stored <= h.query_to for h in (first, second))


def test_what_is_left_after_a_completed_prefix() -> None:
    """after(prefix) starts 1 ms past the prefix; None once the prefix reaches the end."""
    w = Window(T0, T0 + MIN)
    first, _ = w.halves()
    assert w.after(first) == Window(first.end + MILLISECOND, w.end)
    assert w.after(w) is None
    with pytest.raises(ValueError, match="prefix"):
        w.after(Window(T0 + MILLISECOND, T0 + 2 * MILLISECOND))


# --- cutting an oversized window at the pace of its completed parts -----------------------

SECOND = timedelta(seconds=1)


def _clustered(seconds: int, per_second: int) -> list[datetime]:
    """`per_second` items sharing each whole second from T0 on (seeded data, batch jobs)."""
    return [T0 + s * SECOND for s in range(seconds) for _ in range(per_second)]


def test_pace_is_unknown_until_a_part_listed_an_item() -> None:
    """Empty parts before the first item say nothing (they may span all history)."""
    pace = Pace()
    assert pace.width_for(100) is None
    pace.record(Window(T0 - timedelta(days=9000), T0 - SECOND), [])
    assert pace.width_for(100) is None


def test_pace_counts_from_the_first_item_to_the_end_of_the_last_part() -> None:
    """10 items from T0 to a part ending at T0 + 999 ms: 100 items take 10 s."""
    pace = Pace()
    pace.record(Window(T0 - timedelta(days=1), T0 + 999 * MILLISECOND), [T0] * 10)
    assert pace.width_for(100) == 10_000
    pace.record(Window(T0 + SECOND, T0 + 2 * SECOND - MILLISECOND), [])
    assert pace.width_for(100) == 20_000  # an empty part slows the pace down
    assert pace.width_for(0) == 1  # never an empty width


def test_paced_cut_sizes_the_first_part_to_the_target_and_is_none_without_a_pace() -> None:
    """At 100 items a second, 2,000 items take 20 s; without a pace there is no cut."""
    window = Window(T0 + SECOND, T0 + 200 * SECOND)
    assert paced_cut(window, 19_900, 2_000, Pace()) is None
    pace = Pace()
    pace.record(Window(T0, T0), [T0] * 100)
    pace.record(Window(T0 + MILLISECOND, T0 + SECOND - MILLISECOND), [])
    cut = paced_cut(window, 19_900, 2_000, pace)
    assert cut == window.start + 20 * SECOND - MILLISECOND
    assert paced_cut(window, 2_000, 2_000, pace) is None  # not oversized: no cut
    assert paced_cut(Window(T0, T0), 19_900, 2_000, pace) is None  # nothing to cut


def test_paced_cut_never_takes_more_than_the_count_share_of_the_window() -> None:
    """A pace that lags a burst shrinks the part by the count's share, not by 1 ms a try."""
    slow = Pace()
    slow.record(Window(T0, T0 + 999 * SECOND), [T0])  # one item in 1,000 s
    window = Window(T0 + 1000 * SECOND, T0 + 1099 * SECOND + 999 * MILLISECOND)
    cut = paced_cut(window, 10_000, 2_000, slow)
    assert cut == window.start + 20 * SECOND - MILLISECOND  # a fifth of 100 s


def test_a_rest_expected_oversized_is_cut_without_listing_it() -> None:
    """The rest expects its parent's count minus what was listed since the cut."""
    pace = Pace()
    pace.record(Window(T0 - MIN, T0 + 19 * SECOND + 999 * MILLISECOND), _clustered(20, 100))
    rest = Part(Window(T0 + 20 * SECOND, T0 + 200 * SECOND), parent_count=20_000, listed_before=0)
    assert rest.expected(2_000) == 18_000
    split = rest.presplit(2_000, 2_000, pace)
    assert split is not None
    first, after = split
    assert first.window == Window(T0 + 20 * SECOND, T0 + 40 * SECOND - MILLISECOND)
    assert first.parent_count is None  # a first part is listed: its count is learned
    assert after.window == Window(T0 + 40 * SECOND, T0 + 200 * SECOND)
    assert after.expected(2_000) == 18_000
    assert after.expected(4_000) == 16_000
    assert rest.presplit(18_500, 2_000, pace) is None  # 1,500 expected: list it
    assert Part(rest.window).presplit(0, 2_000, pace) is None  # no expectation: list it


def test_an_oversized_window_is_split_at_the_pace_and_an_unstable_one_at_the_median() -> None:
    """`split` uses the pace only for a window split for its count."""
    pace = Pace()
    pace.record(Window(T0 - MIN, T0 + 9 * SECOND + 999 * MILLISECOND), _clustered(10, 10))
    wide = Window(T0 + 10 * SECOND, T0 + 100 * SECOND)
    policy = PagingPolicy(page_size=10, max_window_items=50)
    oversized = WindowPaging(wide, policy)
    assert oversized.record(900, items(*"abc", at=T0 + 10 * SECOND)) is Verdict.SPLIT
    assert oversized.oversized == 900
    first, _ = oversized.split(pace)
    assert first == Window(wide.start, wide.start + 5 * SECOND - MILLISECOND)
    assert WindowPaging(wide, policy).split(pace) == wide.halves()  # nothing listed yet
    unstable = WindowPaging(wide, PagingPolicy(page_size=2, max_window_items=10, max_relists=0))
    unstable.record(3, [Listed("a", T0 + 20 * SECOND), Listed("b", T0 + 30 * SECOND)])
    assert unstable.record(3, [Listed("b", T0 + 30 * SECOND)]) is Verdict.SPLIT
    assert unstable.oversized is None
    assert unstable.split(pace) == unstable.halves()


def _list_calls(stamps: list[datetime], window: Window, page_size: int, most: int) -> int:
    """List calls the poller's loop makes over a static server listing in time order."""
    listing = sorted(enumerate(stamps), key=lambda pair: pair[1])
    policy = PagingPolicy(page_size=page_size, max_window_items=most)
    pending, pace, done, calls, seen = [Part(window)], Pace(), 0, 0, 0
    while pending:
        part = pending.pop()
        presplit = part.presplit(done, most, pace)
        if presplit is not None:
            pending += [presplit[1], presplit[0]]
            continue
        rows = [(i, t) for i, t in listing if part.window.start <= t <= part.window.query_to]
        paging = WindowPaging(part.window, policy)
        while True:
            page = paging.next_page
            calls += 1
            chosen = rows[page * page_size : (page + 1) * page_size]
            verdict = paging.record(len(rows), [Listed(str(i), t) for i, t in chosen])
            if verdict is Verdict.ACCEPT:
                pace.record(part.window, [item.updated_at for item in paging.listed.values()])
                done += len(paging.listed)
                seen += len(paging.listed)
                break
            if verdict is Verdict.NEXT_PAGE:
                continue
            assert verdict is Verdict.SPLIT
            first, rest = paging.split(pace)
            pending += [Part(rest, paging.oversized, done), Part(first)]
            break
    assert seen == len(stamps)  # the parts cover the window once
    return calls


@pytest.mark.parametrize(("seconds", "per_second"), [(110, 100), (200, 100), (300, 7)])
def test_clustered_items_cost_about_one_list_call_per_page(seconds: int, per_second: int) -> None:
    """An oversized window of clustered items in time order: about ceil(n / 100) calls,
    where halving at each first page's median paid about two per page."""
    stamps = _clustered(seconds, per_second)
    window = Window(T0 - timedelta(days=7), T0 + 2 * seconds * SECOND)
    pages = -(-len(stamps) // 100)
    assert _list_calls(stamps, window, page_size=100, most=2_000) <= pages + 5
