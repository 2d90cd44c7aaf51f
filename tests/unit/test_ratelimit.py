"""The client-side limiter keeps its rate exactly, bounds calls in flight, and is shared."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections.abc import Callable

import httpx
import pytest

from syncd import metrics
from syncd.voxares import ClientLimits, Limiter, RateLimiter, VoxaresClient, limiter_for, limits
from syncd.voxares.limits import Release, key_fingerprint
from syncd.voxares.testing import ScriptedTransport, json_response


class FakeTime:
    """A clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def server_rejections(send_times: list[float], rate: float, capacity: float) -> int:
    """How many requests a token-bucket server (rate, capacity, starting full) would 429."""
    tokens, last, rejected = capacity, send_times[0], 0
    for moment in send_times:
        tokens = min(capacity, tokens + (moment - last) * rate)
        last = moment
        if tokens >= 1 - 1e-6:  # float rounding of the clock, not a real burst
            tokens -= 1
        else:
            rejected += 1
    return rejected


async def release_times(limiter: RateLimiter, fake: FakeTime, count: int) -> list[float]:
    """The fake-clock moments at which `count` back-to-back requests are let go."""
    times = []
    for _ in range(count):
        await limiter.acquire()
        times.append(fake.now)
    return times


async def test_sustained_stream_keeps_the_rate_exactly() -> None:
    """2000 queued requests at 200/s (no headroom) go out at 200/s, 5 ms apart."""
    fake = FakeTime()
    limiter = RateLimiter(200.0, clock=fake.clock, sleep=fake.sleep)
    sends = await release_times(limiter, fake, 2000)
    achieved = (len(sends) - 2) / (sends[-1] - sends[1])
    assert achieved == pytest.approx(200.0, rel=1e-6)
    gaps = [b - a for a, b in itertools.pairwise(sends[1:])]
    assert min(gaps) == pytest.approx(0.005)


async def test_output_fits_a_server_bucket_one_token_larger_than_the_burst() -> None:
    """Whatever the phase, what leaves fits a bucket of the same rate holding burst+1 tokens."""
    fake = FakeTime()
    limiter = RateLimiter(200.0, burst=2, clock=fake.clock, sleep=fake.sleep)
    sends = await release_times(limiter, fake, 500)
    fake.now += 0.0137  # an idle spell of odd length: the next burst starts out of phase
    sends += await release_times(limiter, fake, 500)
    assert server_rejections(sends, rate=200.0, capacity=3.0) == 0
    # ...while a server bucket of just `burst` tokens would have to refuse some.
    assert server_rejections(sends, rate=200.0, capacity=2.0) > 0


async def test_headroom_leaves_the_server_bucket_refilling() -> None:
    """With 2 % headroom a 200/s limiter sends 196/s, so a server bucket drifts back to full."""
    fake = FakeTime()
    limiter = RateLimiter(200.0, headroom=0.02, clock=fake.clock, sleep=fake.sleep)
    sends = await release_times(limiter, fake, 1000)
    achieved = (len(sends) - 2) / (sends[-1] - sends[1])
    assert achieved == pytest.approx(196.0, rel=1e-6)
    assert limiter.interval == pytest.approx(1 / 196)


async def test_burst_goes_at_once_then_the_stream_is_paced() -> None:
    """With burst 3, three requests go at once at the start, then one per interval."""
    fake = FakeTime()
    limiter = RateLimiter(10.0, burst=3, clock=fake.clock, sleep=fake.sleep)
    sends = await release_times(limiter, fake, 6)
    offsets = [round(t - 1000.0, 6) for t in sends]
    assert offsets == pytest.approx([0.0, 0.0, 0.0, 0.1, 0.2, 0.3])


async def test_late_wakeups_do_not_cost_throughput() -> None:
    """A sleeper that always wakes 20 % of an interval late still keeps the full rate."""
    fake = FakeTime()

    async def late_sleep(seconds: float) -> None:
        fake.now += seconds + 0.002  # a busy event loop, 2 ms late at 100/s

    limiter = RateLimiter(100.0, clock=fake.clock, sleep=late_sleep)
    sends = await release_times(limiter, fake, 201)
    assert sends[-1] - sends[0] == pytest.approx(2.0, abs=0.01)


async def test_a_stalled_loop_does_not_release_a_pile_of_requests() -> None:
    """After a long stall only the bucket's worth goes at once: no pre-booked slots pile up."""
    fake = FakeTime()
    limiter = RateLimiter(100.0, burst=1, clock=fake.clock, sleep=fake.sleep)
    await release_times(limiter, fake, 10)
    fake.now += 1.0  # the event loop stalled for a second
    sends = await release_times(limiter, fake, 5)
    assert sends[1] - sends[0] == pytest.approx(0.005)  # 1.5 tokens at most
    assert [b - a for a, b in itertools.pairwise(sends[1:])] == pytest.approx([0.01] * 3)


async def test_a_request_sent_late_is_charged_when_it_left() -> None:
    """Released, then held up 40 ms before its bytes went out: the next one waits for that.

    Charged at release (the old way), the next request would go at once after the stall,
    right next to the late one, and a third an interval later would find the server's
    2-token bucket empty (B2's mid-run 429s).
    """
    fake = FakeTime()
    limiter = RateLimiter(200.0, clock=fake.clock, sleep=fake.sleep)
    first = await limiter.take()
    fake.now += 0.040  # the loop stalled between the release and the write
    first.sent()
    first.done()
    second = await limiter.take()
    second.sent()
    third = await limiter.take()
    # Paced from the moment `first` left: half an interval (the server's margin), then one.
    assert second.at - 1000.040 == pytest.approx(0.5 * 0.005)
    assert third.at - second.at == pytest.approx(0.005)


async def test_a_release_not_yet_sent_counts_as_leaving_now() -> None:
    """While an earlier release has not been written, the next waits instead of joining it."""
    fake = FakeTime()
    pending: list[Release] = []

    async def sleep(seconds: float) -> None:
        for release in pending:
            release.sent()  # the stalled request is written as soon as anyone yields
        fake.now += seconds

    limiter = RateLimiter(200.0, clock=fake.clock, sleep=sleep)
    first = await limiter.take()
    pending.append(first)
    fake.now += 0.030  # stalled; `first` is still unsent when the next caller looks
    second = await limiter.take()
    # The next goes half an interval after `first` really left, not at once beside it.
    assert first.charged == pytest.approx(1000.030)
    assert second.at - first.charged == pytest.approx(0.5 * 0.005)


async def test_an_unsent_release_holds_the_others_back_only_so_long() -> None:
    """A request stuck before its write (a slow connect) delays the rest by SEND_HORIZON."""
    fake = FakeTime()
    limiter = RateLimiter(200.0, clock=fake.clock, sleep=fake.sleep)
    stuck = await limiter.take()
    fake.now += 5.0  # connecting for five seconds, never written yet
    nxt = await limiter.take()
    assert nxt.at == pytest.approx(1005.0)  # not held back: the horizon passed long ago
    stuck.done()  # failed without a write: settled at its release time
    nxt.sent()
    assert not limiter._pending


async def late_writes(*, reported: bool) -> list[float]:
    """1,000 requests through a 200/s limiter (2 % headroom), each written 0-6 ms after its
    release (the GIL's 5 ms switch interval, new connections); their write times."""
    fake = FakeTime()
    limiter = RateLimiter(200.0, headroom=0.02, clock=fake.clock, sleep=fake.sleep)
    lateness = itertools.cycle([0.0004, 0.0, 0.006, 0.0004, 0.0051, 0.0, 0.0, 0.0009])
    written: list[float] = []
    for _ in range(1000):
        if reported:
            release = await limiter.take()
        else:
            await limiter.acquire()
        fake.now += next(lateness)
        if reported:
            release.sent()
            release.done()
        written.append(fake.now)
    return written


async def test_writes_charged_when_sent_fit_a_two_token_server_bucket() -> None:
    """Charged at the write, late writes never overfill a 2-token bucket of the same rate;
    charged at release, the same late writes would be refused over and over."""
    reported = await late_writes(reported=True)
    assert server_rejections(sorted(reported), rate=200.0, capacity=2.0) == 0
    assert (len(reported) - 1) / (reported[-1] - reported[0]) > 0.8 * 200
    at_release = await late_writes(reported=False)
    assert server_rejections(sorted(at_release), rate=200.0, capacity=2.0) > 50


async def test_a_rate_too_fast_for_timers_is_charged_at_release() -> None:
    """Above 1,000/s nobody waits for writes: an unsent release does not hold the next."""
    fake = FakeTime()
    limiter = RateLimiter(1_000_000.0, clock=fake.clock, sleep=fake.sleep)
    first = await limiter.take()
    second = await limiter.take()
    assert first.settled
    assert second.at - first.at == pytest.approx(0.000_001)  # one interval, one sleep
    assert len(fake.slept) == 1


async def test_slot_reports_a_send_only_when_asked() -> None:
    """`slot(send_reported=True)` yields the release to report; the default yields None."""
    limiter = Limiter(ClientLimits(requests_per_second=100.0, max_concurrency=2))
    async with limiter.slot() as plain:
        assert plain is None
    async with limiter.slot(send_reported=True) as release:
        assert release is not None
        release.sent()
        assert release.settled


async def test_defer_holds_back_the_next_release() -> None:
    """After defer(5), the next request waits five seconds."""
    fake = FakeTime()
    limiter = RateLimiter(100.0, clock=fake.clock, sleep=fake.sleep)
    await limiter.acquire()
    limiter.defer(5.0)
    assert await limiter.acquire() == pytest.approx(5.0)


async def test_a_429_slows_the_rate_which_then_recovers() -> None:
    """A short Retry-After widens the interval by half; 1 % per request brings it back."""
    fake = FakeTime()
    limiter = Limiter(
        ClientLimits(requests_per_second=100.0, headroom=0), clock=fake.clock, sleep=fake.sleep
    )
    rate = limiter._rate
    assert rate is not None
    limiter.rate_limited(retry_after=1.0)
    assert rate.interval == pytest.approx(0.015)
    async with limiter.slot():
        pass
    assert fake.now - 1000.0 < 0.1  # no shared pause for a one-second Retry-After
    for _ in range(20):
        async with limiter.slot():
            pass
    assert 0.010 < rate.interval < 0.015
    for _ in range(100):
        async with limiter.slot():
            pass
    assert rate.interval == pytest.approx(0.010)


async def test_a_long_retry_after_pauses_every_call_on_the_key() -> None:
    """A Retry-After of a minute (a quota) holds back every call, not just the refused one."""
    fake = FakeTime()
    limiter = Limiter(ClientLimits(requests_per_second=100.0), clock=fake.clock, sleep=fake.sleep)
    async with limiter.slot():
        pass
    limiter.rate_limited(retry_after=60.0)
    async with limiter.slot():
        pass
    assert fake.now - 1000.0 >= 60.0


async def test_repeated_429s_slow_down_at_most_sixteenfold() -> None:
    """However many 429s come, the interval stops growing at 16 times the configured one."""
    limiter = RateLimiter(100.0)
    for _ in range(50):
        limiter.slow_down()
    assert limiter.interval == pytest.approx(0.16)


async def test_waits_are_recorded_in_the_metric() -> None:
    """Seconds waited for the rate go to RATE_LIMIT_WAIT."""
    fake = FakeTime()
    limiter = RateLimiter(10.0, clock=fake.clock, sleep=fake.sleep)
    before = metrics.REGISTRY.get_sample_value("syncd_rate_limit_wait_seconds_total") or 0.0
    waits = [await limiter.acquire() for _ in range(3)]
    after = metrics.REGISTRY.get_sample_value("syncd_rate_limit_wait_seconds_total") or 0.0
    assert waits == pytest.approx([0.0, 0.1, 0.1])
    assert after - before == pytest.approx(0.2)


async def test_cancelled_waiter_does_not_use_up_a_turn() -> None:
    """A request cancelled while waiting leaves the schedule as if it had never asked."""
    fake = FakeTime()
    blocked = asyncio.Event()

    async def blocking_sleep(seconds: float) -> None:
        await blocked.wait()

    limiter = RateLimiter(10.0, clock=fake.clock, sleep=blocking_sleep)
    assert await limiter.acquire() == 0.0
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    fake.now += 0.11  # past the moment the cancelled request would have gone
    assert await asyncio.wait_for(limiter.acquire(), timeout=30) == 0.0


async def test_concurrency_is_bounded_and_reached() -> None:
    """With max_concurrency 3, twelve callers never have more than three calls in flight."""
    limiter = Limiter(ClientLimits(requests_per_second=None, max_concurrency=3))
    peak = 0
    release = asyncio.Event()

    async def call() -> None:
        nonlocal peak
        async with limiter.slot():
            peak = max(peak, limiter.in_flight)
            await release.wait()

    tasks = [asyncio.create_task(call()) for _ in range(12)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert limiter.in_flight == 3
    release.set()
    await asyncio.gather(*tasks)
    assert peak == 3
    assert limiter.in_flight == 0


async def test_real_time_rate_is_kept_within_generous_bounds() -> None:
    """Sixty calls at 400/s through real sleeps take about 150 ms, not less, not much more."""
    limiter = Limiter(ClientLimits(requests_per_second=400.0, max_concurrency=100, headroom=0))
    stamps: list[float] = []

    async def call() -> None:
        async with limiter.slot():
            stamps.append(time.monotonic())

    started = time.monotonic()
    await asyncio.gather(*(call() for _ in range(60)))
    elapsed = time.monotonic() - started
    assert elapsed >= 58.5 / 400 * 0.95
    assert elapsed < 2.0
    assert len(stamps) == 60


async def test_clients_with_one_key_share_one_limiter() -> None:
    """Two clients built with the same key draw on one limiter; another key has its own."""
    limits = ClientLimits(requests_per_second=50.0)
    base = "http://sandbox/api/v1/integration"

    def answer(request: object) -> httpx.Response:
        return json_response(200, {"data": [], "count": 0})

    clients = [
        VoxaresClient(
            base_url=base, api_key=key, transport=ScriptedTransport(default=answer), limits=limits
        )
        for key in ("vox-1-a", "vox-1-a", "vox-2-b")
    ]
    for client in clients:
        async with client:
            await client.list_forms()
    same, twin, other = (client._limiter for client in clients)
    assert same is not None
    assert same is twin
    assert same is not other
    assert same is limiter_for("vox-1-a", limits)


def test_fingerprint_does_not_reveal_the_key() -> None:
    """The registry and logs name a key by a short hash, never by its text."""
    fingerprint = key_fingerprint("vox-1-supersecret")
    assert "supersecret" not in fingerprint
    assert len(fingerprint) == 16
    assert fingerprint == key_fingerprint("vox-1-supersecret")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"requests_per_second": 0.0},
        {"requests_per_second": float("nan")},
        {"max_concurrency": 0},
        {"burst": 0},
        {"headroom": 1.0},
        {"headroom": -0.1},
    ],
)
def test_limits_reject_nonsense(kwargs: dict[str, float]) -> None:
    """Zero or NaN rates, no concurrency, or a zero burst are refused."""
    with pytest.raises(ValueError, match="must"):
        ClientLimits(**kwargs)  # type: ignore[arg-type]


def most_beyond_the_bucket(times: list[float], rate: float, capacity: float) -> float:
    """The largest excess of requests in any window [times[i], times[k]] over what a bucket of
    `rate` and `capacity` admits there (`k - i + 1 <= capacity + rate * span`); <= 0: fits."""
    worst = -math.inf
    for i, start in enumerate(times):
        for k in range(i, len(times)):
            span = times[k] - start
            if span > 1.0:  # a second's refill exceeds any capacity here
                break
            worst = max(worst, (k - i + 1) - (capacity + rate * span))
    return worst


async def paced_writes(
    lateness: Callable[[], float], *, count: int, idle_every: int = 0
) -> list[float]:
    """`count` requests through a 200/s limiter (2 % headroom, burst 1), each written
    `lateness()` after its release; every `idle_every` requests the caller pauses an odd
    while (the bucket refills). Their write times."""
    fake = FakeTime()
    limiter = RateLimiter(200.0, headroom=0.02, clock=fake.clock, sleep=fake.sleep)
    written: list[float] = []
    for n in range(count):
        if idle_every and n % idle_every == idle_every - 1:
            fake.now += 0.0137 * (1 + n % 7)
        release = await limiter.take()
        fake.now += lateness()
        release.sent()
        release.done()
        written.append(fake.now)
    return written


async def test_late_writes_are_caught_up_within_the_burst(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Writes up to 2.4 ms late (timer and release-to-write) keep the full rate: the next
    requests follow the late one closer. With the previous quarter-token catch-up, the
    same lateness cost 6 % of the rate (183 of 196 requests/s)."""
    cycle = [0.0015, 0.0, 0.0024, 0.0009, 0.0012, 0.0019, 0.0004, 0.0021]

    def lateness() -> Callable[[], float]:
        return itertools.cycle(cycle).__next__

    written = await paced_writes(lateness(), count=2000)
    achieved = (len(written) - 1) / (written[-1] - written[0])
    assert achieved == pytest.approx(200.0 * 0.98, rel=1e-3)
    assert server_rejections(written, rate=200.0, capacity=2.0) == 0

    monkeypatch.setattr(limits, "CATCH_UP_TOKENS", 0.25)
    quarter = await paced_writes(lateness(), count=2000)
    assert (len(quarter) - 1) / (quarter[-1] - quarter[0]) < 0.95 * 200.0 * 0.98


async def test_writes_never_exceed_the_modelled_bucket_in_any_window() -> None:
    """Whatever the lateness (0-30 ms, seeded) and idle spells, the write times fit a bucket
    of the limiter's rate holding `burst + 1 - SERVER_MARGIN` tokens in every window; so a
    server bucket of 2 tokens at the full rate takes them even when each arrives up to
    2.4 ms later than written (its margin), in any combination."""
    rng = random.Random(13)

    def lateness() -> float:
        draw = rng.random()
        if draw < 0.9:
            return rng.uniform(0.0, 0.002)
        if draw < 0.99:
            return rng.uniform(0.002, 0.007)
        return rng.uniform(0.007, 0.030)

    written = await paced_writes(lateness, count=1500, idle_every=97)
    modelled = 1 + 1 - limits.SERVER_MARGIN
    assert most_beyond_the_bucket(written, rate=196.0, capacity=modelled) <= 1e-9
    # ...with no slack to spare: the catch-up does use the bucket up to the margin.
    assert most_beyond_the_bucket(written, rate=196.0, capacity=modelled - 0.1) > 0
    for seed in range(5):
        jitter = random.Random(seed)
        arrivals = sorted(t + jitter.uniform(0.0, 0.0024) for t in written)
        assert server_rejections(arrivals, rate=200.0, capacity=2.0) == 0
