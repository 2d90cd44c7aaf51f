"""Client-side limits on Voxares calls: a request rate and a number of calls in flight.

The rate is kept by GCRA evaluated at the moment a request is released (not by handing out
slots in advance): a request goes when the real clock says it conforms, so a stalled event
loop cannot release a pile of pre-booked requests at once.

The GCRA is a model of the server's token bucket built from our own send times: a bucket
refilled at `requests_per_second * (1 - headroom)` holding `burst + 1` tokens (the server is
assumed to hold at least one token more than the burst we use back to back; the contract
publishes no limit). A request goes as soon as the modelled bucket holds a token and
`SERVER_MARGIN` (half a token) besides, so what leaves always conforms to a bucket of
`burst + 1 - SERVER_MARGIN` tokens at 98 % of the rate:

- lateness is caught up within the burst instead of accumulating: a request that woke or
  was written late leaves the modelled bucket fuller, and the next ones may follow it
  closer, up to half an interval (`CATCH_UP_TOKENS`). Each request is late by
  the event loop's timer (epoll sleeps in whole milliseconds: 0-1 ms) plus the path from
  release to write (0.35-0.55 ms at the median): 1-1.3 ms at the median in B2, about what
  a catch-up of a quarter token (1.25 ms at 200/s, the previous setting) forgave, so half
  the requests lost time (B2: 0.926 of the limit; BENCHMARKS.md item 27);
- the margin is the server's slack for requests that reach it closer together than we
  sent them (its own event loop handling one request late and the next on time);
- `headroom` (2 %) keeps the server's bucket refilling slightly faster than we drain it, so
  whatever phase it is in when we start (full, or drained by an earlier run) it drifts back
  to full.

The first request starts the model as if the catch-up allowance were spent: a start-up,
when new connections make arrivals uneven, gets no credit it did not earn by lateness.
(A server bucket of capacity 1 refuses any pair of requests that arrive closer than its
interval, which jitter makes unavoidable at its full rate.)

Charged when sent, not when released. The server counts a request when it arrives, and
a request released just before the event loop stalls (a collection, the worker thread
holding the GIL for its 5 ms switch interval, a new connection's set-up) leaves late,
right next to the one released after the stall: the server then sees two requests where
our bucket counted them an interval apart, and the one after them is refused. Measured in
B2 (BENCHMARKS.md): 10 of 14 mid-run 429s followed a request that left 3.7-94 ms after
its release. So when the transport reports the moment a request's bytes go out
(`syncd.http_transport.on_send`, our pooled transport does), each release stays pending
until then and is charged at `max(release, send)`; the rate's state is recomputed from
the oldest pending release, so later decisions see where the requests really went. While
a request is released but not yet sent, it is counted as leaving now (for at most
`SEND_HORIZON` seconds, so a slow connect holds the others back only that long), so the
next release waits for it instead of joining it. A transport that reports nothing keeps
the release-time charging.

A 429 on the key (the server disagrees with our idea of its rate) slows the limiter down
(`slow_down`, recovered by itself within a few dozen requests); a long Retry-After pauses
every call on the key. The refused call itself always waits its Retry-After (`retry.py`).

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
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import structlog

from syncd import metrics

log = structlog.get_logger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


# What the modelled server bucket keeps in reserve, in tokens, and so how much lateness is
# caught up (the rest of the spare token): see the module docstring. At 200/s the margin is
# 2.45 ms of arrival jitter at the server (with the 2 % headroom), the catch-up 2.5 ms of
# lateness: B2's release-to-write path and timer together stay below it in ~98 % of
# requests. A catch-up of 0.75 (margin 0.25) measured no better rate in B2 and more 429s
# on a loaded host (BENCHMARKS.md item 27).
SERVER_MARGIN = 0.5
CATCH_UP_TOKENS = 1.0 - SERVER_MARGIN
# After a 429 the interval grows by half (up to 16 times the configured one) and shrinks back
# by 1 % per request sent: one stray 429 costs a fraction of a second at a reduced rate,
# while a limit truly below ours is approached from above instead of hit over and over.
SLOWDOWN = 1.5
MAX_SLOWDOWN = 16.0
RECOVERY = 0.99
# A Retry-After this long is a quota or an outage rather than bucket smoothing: every call
# on the key then waits it out, not just the refused one.
SHARED_PAUSE_FROM = 5.0
# How long a released request not yet reported sent is assumed to be leaving "now": longer
# than the loop stalls B2 measured (a full collection: 60-100 ms), short enough that a
# slow connect (up to `connect_timeout`) holds the requests behind it back only this long.
SEND_HORIZON = 0.25
# Below this interval (above 1,000 requests/s, e.g. the "no limit" of benchmarks) writes
# are not waited for: asyncio's timers are about 1 ms coarse, so pacing by the write
# could not be finer, and a caller would spin on sub-millisecond sleeps until the
# previous request was written. Such a rate is charged at release, as before.
SEND_CHARGED_FROM_INTERVAL = 0.001


@dataclass(frozen=True)
class ClientLimits:
    """Limits for one API key.

    requests_per_second: the server's rate (None: no rate limit); max_concurrency: calls in
    flight; burst: requests that may go back to back after an idle spell; headroom: the
    fraction of the rate left unused so the server's bucket stays full.
    """

    requests_per_second: float | None = 10.0
    max_concurrency: int = 8
    burst: int = 1
    headroom: float = 0.02

    def __post_init__(self) -> None:
        rate = self.requests_per_second
        if rate is not None and not (math.isfinite(rate) and rate > 0):
            raise ValueError("requests_per_second must be a positive number or None")
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if self.burst < 1:
            raise ValueError("burst must be at least 1")
        if not 0 <= self.headroom < 1:
            raise ValueError("headroom must be at least 0 and below 1")


class Release:
    """One request the rate let go: when, at what interval, and when it was sent (if known).

    `sent()` (called by the transport on the request's first write) charges it at the send
    time; `done()` (the call's slot ends) settles it whether or not it was sent.
    """

    __slots__ = ("_limiter", "at", "charged", "interval", "reported", "settled")

    def __init__(self, limiter: RateLimiter, at: float, interval: float, reported: bool) -> None:
        self._limiter = limiter
        self.at = at
        self.charged = at
        self.interval = interval
        self.reported = reported  # a send report is expected
        self.settled = not reported

    def sent(self) -> None:
        """The request's first bytes are being written now (idempotent)."""
        if not self.settled:
            self.charged = max(self.at, self._limiter._clock())
            self._limiter._settle(self)

    def done(self) -> None:
        """The call's slot ended: stop waiting for a send report."""
        if not self.settled:
            self._limiter._settle(self)

    def charge(self, now: float) -> float:
        """When the server may see this request, as far as the rate is concerned."""
        if self.settled:
            return self.charged
        return max(self.at, min(now, self.at + SEND_HORIZON))


class RateLimiter:
    """GCRA at release time: at most `rate` requests per second, `burst` back to back.

    Releases that expect a send report are charged when sent (see the module docstring).
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: int = 1,
        headroom: float = 0.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._base_interval = 1.0 / (rate * (1.0 - headroom))
        self._interval = self._base_interval
        self._burst = burst
        self._clock = clock
        self._sleep = sleep
        # Theoretical arrival time of the next request after every settled release older
        # than the oldest unsettled one; None until the first request, which starts the
        # bucket with `burst` tokens: the catch-up allowance is earned by lateness, never
        # spent at the start, when new connections already make arrivals uneven.
        self._tat: float | None = None
        # Releases since the oldest one still waiting for its send report, in release order.
        self._pending: deque[Release] = deque()
        # Nothing is released before this moment (a long Retry-After).
        self._hold_until = -math.inf
        # One request at a time looks at the clock, in arrival order; the rest queue here.
        self._turn = asyncio.Lock()

    @property
    def interval(self) -> float:
        """Seconds between requests in a sustained stream (now, slow-downs included)."""
        return self._interval

    @property
    def _tolerance(self) -> float:
        return (self._burst - 1 + CATCH_UP_TOKENS) * self._interval

    def slow_down(self) -> None:
        """The server refused a call for its rate: widen the interval (it recovers by itself)."""
        self._interval = min(self._interval * SLOWDOWN, self._base_interval * MAX_SLOWDOWN)

    def defer(self, seconds: float) -> None:
        """Release nothing before `seconds` from now (the server asked us to back off)."""
        self._hold_until = max(self._hold_until, self._clock() + seconds)

    def _theoretical_arrival(self, now: float) -> float:
        """The GCRA's TAT: the settled state plus every pending release at its charge."""
        assert self._tat is not None
        tat = self._tat
        for release in self._pending:
            tat = max(tat, release.charge(now)) + release.interval
        return tat

    def _settle(self, release: Release) -> None:
        """Mark `release` settled and fold the settled head of the queue into the state."""
        release.settled = True
        pending = self._pending
        while pending and pending[0].settled:
            head = pending.popleft()
            assert self._tat is not None
            self._tat = max(self._tat, head.charged) + head.interval

    async def acquire(self) -> float:
        """Wait until a request may go, charged now; returns the seconds waited."""
        _, waited = await self._take(reported=False)
        return waited

    async def take(self) -> Release:
        """Wait until a request may go; its charge waits for `Release.sent()`/`done()`
        (unless the rate is too fast for that: `SEND_CHARGED_FROM_INTERVAL`)."""
        reported = self._base_interval >= SEND_CHARGED_FROM_INTERVAL
        release, _ = await self._take(reported=reported)
        return release

    async def _take(self, *, reported: bool) -> tuple[Release, float]:
        started = self._clock()
        async with self._turn:
            while True:  # until the clock says go: a defer() or a late send may move the goal
                now = self._clock()
                if self._tat is None:
                    self._tat = now + CATCH_UP_TOKENS * self._interval
                goal = max(self._theoretical_arrival(now) - self._tolerance, self._hold_until)
                wait = goal - now
                if wait <= 0:
                    break
                await self._sleep(wait)
            release = Release(self, now, self._interval, reported)
            if reported or self._pending:
                self._pending.append(release)
                if not reported:
                    self._settle(release)
            else:
                self._tat = max(self._tat, now) + self._interval
            self._interval = max(self._base_interval, self._interval * RECOVERY)
        waited = now - started
        if waited > 0:
            metrics.RATE_LIMIT_WAIT.inc(waited)
        return release, waited


class Limiter:
    """Both limits of one API key: a concurrency bound, then the rate."""

    def __init__(
        self, limits: ClientLimits, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
    ) -> None:
        self.limits = limits
        self._semaphore = asyncio.Semaphore(limits.max_concurrency)
        self._rate = (
            RateLimiter(
                limits.requests_per_second,
                burst=limits.burst,
                headroom=limits.headroom,
                clock=clock,
                sleep=sleep,
            )
            if limits.requests_per_second is not None
            else None
        )
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        """Calls holding a slot right now."""
        return self._in_flight

    @asynccontextmanager
    async def slot(self, *, send_reported: bool = False) -> AsyncIterator[Release | None]:
        """Hold one call's place: a concurrency slot first, then the rate.

        In that order so that a call the rate lets go leaves at once; the other way round it
        could wait for a concurrency slot after its turn and leave bunched with others.
        `send_reported`: the caller's transport calls the yielded `Release.sent()` when the
        request is written (None is yielded when there is no rate).
        """
        async with self._semaphore:
            release: Release | None = None
            if self._rate is not None:
                if send_reported:
                    release = await self._rate.take()
                else:
                    await self._rate.acquire()
            self._in_flight += 1
            try:
                yield release
            finally:
                self._in_flight -= 1
                if release is not None:
                    release.done()

    def rate_limited(self, retry_after: float | None) -> None:
        """React to a 429 on this key: slow the rate down, and pause every call on the key
        when the server asked for a long wait (the refused call waits its Retry-After anyway).
        """
        if self._rate is None:
            return
        self._rate.slow_down()
        if retry_after is not None and retry_after >= SHARED_PAUSE_FROM:
            self._rate.defer(retry_after)


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
