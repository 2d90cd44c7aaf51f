"""Client-side limits on Voxares calls: a request rate and a number of calls in flight.

The rate is kept by GCRA in its virtual-scheduling form: each request claims the next free
slot on a timeline spaced 1/rate apart and sleeps until its slot (one sleep per request, no
polling). Slots follow the schedule, not the moment a sleeper wakes, so a late wake-up does
not cost throughput. `burst` is how many requests may go back to back after an idle spell;
the default of 1 sends an even stream, which a server bucket of the same rate accepts as long
as its own burst allowance covers the network's jitter.

Sharing: a limit only means something if every caller using one API key goes through the
same limiter. `limiter_for()` keeps one `Limiter` per API key (keyed by a SHA-256 of the key,
never the key) per event loop, and every `VoxaresClient` takes its limiter from there, so
two clients built with the same key share one budget. The first client's limits win.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import structlog

from syncd import metrics

log = structlog.get_logger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class ClientLimits:
    """Limits for one API key: requests per second (None: unlimited) and calls in flight."""

    requests_per_second: float | None = 10.0
    max_concurrency: int = 8
    burst: int = 1

    def __post_init__(self) -> None:
        rate = self.requests_per_second
        if rate is not None and not (math.isfinite(rate) and rate > 0):
            raise ValueError("requests_per_second must be a positive number or None")
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if self.burst < 1:
            raise ValueError("burst must be at least 1")


class RateLimiter:
    """GCRA: hands out send times at most `rate` per second, `burst` back to back at most."""

    def __init__(
        self,
        rate: float,
        *,
        burst: int = 1,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._interval = 1.0 / rate
        self._tolerance = (burst - 1) * self._interval
        self._clock = clock
        self._sleep = sleep
        # Theoretical arrival time of the next request; -inf means a full bucket.
        self._tat = -math.inf

    def reserve(self) -> float:
        """Claim the next free slot and return the seconds until it (0: go now)."""
        now = self._clock()
        slot = max(now, self._tat - self._tolerance)
        self._tat = max(self._tat, slot) + self._interval
        return slot - now

    def defer(self, seconds: float) -> None:
        """Give out no slot before `seconds` from now (the server asked us to back off)."""
        self._tat = max(self._tat, self._clock() + seconds + self._tolerance)

    async def acquire(self) -> float:
        """Wait for the next slot; returns the seconds waited."""
        delay = self.reserve()
        if delay <= 0:
            return 0.0
        claimed = self._tat
        try:
            await self._sleep(delay)
        except asyncio.CancelledError:
            if self._tat == claimed:  # nobody queued behind us: hand the slot back
                self._tat -= self._interval
            raise
        metrics.RATE_LIMIT_WAIT.inc(delay)
        return delay


class Limiter:
    """Both limits of one API key: a concurrency bound, then the rate."""

    def __init__(
        self, limits: ClientLimits, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
    ) -> None:
        self.limits = limits
        self._semaphore = asyncio.Semaphore(limits.max_concurrency)
        self._rate = (
            RateLimiter(limits.requests_per_second, burst=limits.burst, clock=clock, sleep=sleep)
            if limits.requests_per_second is not None
            else None
        )
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        """Calls holding a slot right now."""
        return self._in_flight

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one call's place: a concurrency slot first, then a rate slot.

        The concurrency slot is taken first so that rate slots are claimed only by calls
        that can go out at once; otherwise slots would be spent while waiting and the
        calls would later leave in a burst.
        """
        async with self._semaphore:
            if self._rate is not None:
                await self._rate.acquire()
            self._in_flight += 1
            try:
                yield
            finally:
                self._in_flight -= 1

    def defer(self, seconds: float) -> None:
        """Hold back every call on this key for `seconds` (after a 429 with Retry-After)."""
        if self._rate is not None and seconds > 0:
            self._rate.defer(seconds)


_REGISTRY: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Limiter]] = (
    weakref.WeakKeyDictionary()
)


def key_fingerprint(api_key: str) -> str:
    """A stable, non-reversible name for an API key (for registries and logs)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


def limiter_for(api_key: str, limits: ClientLimits) -> Limiter:
    """The one limiter of this API key in the running event loop, created on first use."""
    per_loop = _REGISTRY.setdefault(asyncio.get_running_loop(), {})
    fingerprint = key_fingerprint(api_key)
    limiter = per_loop.get(fingerprint)
    if limiter is None:
        limiter = per_loop[fingerprint] = Limiter(limits)
    elif limiter.limits != limits:
        log.warning("voxares.limits_conflict", key=fingerprint, kept=str(limiter.limits))
    return limiter
