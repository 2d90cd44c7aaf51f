"""The client-side limiter keeps its rate exactly, bounds calls in flight, and is shared."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from syncd import metrics
from syncd.voxares import ClientLimits, Limiter, RateLimiter, VoxaresClient, limiter_for
from syncd.voxares.limits import key_fingerprint
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


def test_slots_are_spaced_one_interval_apart() -> None:
    """Back-to-back requests at 200/s get slots 5 ms apart, the first one at once."""
    fake = FakeTime()
    limiter = RateLimiter(200.0, clock=fake.clock)
    delays = [limiter.reserve() for _ in range(5)]
    assert delays == pytest.approx([0.0, 0.005, 0.010, 0.015, 0.020])


def test_burst_lets_that_many_go_at_once_then_paces() -> None:
    """With burst 3, three requests go now and the fourth waits one interval."""
    fake = FakeTime()
    limiter = RateLimiter(10.0, burst=3, clock=fake.clock)
    delays = [limiter.reserve() for _ in range(5)]
    assert delays == pytest.approx([0.0, 0.0, 0.0, 0.1, 0.2])


def test_idle_time_does_not_bank_more_than_the_burst() -> None:
    """After a long idle spell, only `burst` requests go at once again."""
    fake = FakeTime()
    limiter = RateLimiter(10.0, burst=2, clock=fake.clock)
    for _ in range(4):
        limiter.reserve()
    fake.now += 3600
    delays = [limiter.reserve() for _ in range(3)]
    assert delays == pytest.approx([0.0, 0.0, 0.1])


def test_defer_holds_back_the_next_slot() -> None:
    """After defer(5), no slot is handed out for five seconds."""
    fake = FakeTime()
    limiter = RateLimiter(100.0, clock=fake.clock)
    limiter.reserve()
    limiter.defer(5.0)
    assert limiter.reserve() == pytest.approx(5.0)
    assert limiter.reserve() == pytest.approx(5.01)


async def test_sustained_stream_keeps_the_rate_and_a_strict_server_accepts_all() -> None:
    """2000 queued requests at 200/s take 10 s of schedule; a server bucket of 1 rejects none."""
    fake = FakeTime()
    limiter = RateLimiter(200.0, clock=fake.clock, sleep=fake.sleep)
    sends: list[float] = []
    for _ in range(2000):
        await limiter.acquire()
        sends.append(fake.now)
    achieved = (len(sends) - 1) / (sends[-1] - sends[0])
    assert achieved == pytest.approx(200.0, rel=1e-6)
    assert server_rejections(sends, rate=200.0, capacity=1.0) == 0


async def test_late_wakeups_do_not_cost_throughput() -> None:
    """A sleeper that wakes late does not push the schedule: later slots catch up."""
    fake = FakeTime()

    async def late_sleep(seconds: float) -> None:
        fake.now += seconds + 0.002  # every wake-up 2 ms late (a busy event loop)

    limiter = RateLimiter(100.0, clock=fake.clock, sleep=late_sleep)
    start = fake.now
    for _ in range(100):
        await limiter.acquire()
    # Without catch-up this would be 100 x 12 ms; the schedule keeps it near 100 x 10 ms.
    assert fake.now - start < 1.05


async def test_waits_are_recorded_in_the_metric() -> None:
    """Seconds slept for the rate go to RATE_LIMIT_WAIT."""
    fake = FakeTime()
    limiter = RateLimiter(10.0, clock=fake.clock, sleep=fake.sleep)
    before = metrics.REGISTRY.get_sample_value("syncd_rate_limit_wait_seconds_total") or 0.0
    for _ in range(3):
        await limiter.acquire()
    after = metrics.REGISTRY.get_sample_value("syncd_rate_limit_wait_seconds_total") or 0.0
    assert after - before == pytest.approx(0.1 + 0.1)
    assert fake.slept == pytest.approx([0.1, 0.1])


async def test_cancelled_waiter_hands_its_slot_back() -> None:
    """A request cancelled while waiting for its slot does not waste the slot."""
    limiter = RateLimiter(1.0)  # real clock: the second request would wait a whole second
    assert await limiter.acquire() == 0.0
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.reserve() == pytest.approx(1.0, abs=0.05)


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
    limiter = Limiter(ClientLimits(requests_per_second=400.0, max_concurrency=100))
    stamps: list[float] = []

    async def call() -> None:
        async with limiter.slot():
            stamps.append(time.monotonic())

    started = time.monotonic()
    await asyncio.gather(*(call() for _ in range(60)))
    elapsed = time.monotonic() - started
    assert elapsed >= 59 / 400 * 0.95
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
    ],
)
def test_limits_reject_nonsense(kwargs: dict[str, float]) -> None:
    """Zero or NaN rates, no concurrency, or a zero burst are refused."""
    with pytest.raises(ValueError, match="must"):
        ClientLimits(**kwargs)  # type: ignore[arg-type]
