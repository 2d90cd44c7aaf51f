"""When to try a failed delivery again, and when to give up on it (pure, no I/O).

A failed attempt waits `max(Retry-After, backoff)` where the backoff is exponential with
full jitter (a uniform draw in `[0, min(cap, initial * multiplier**(attempt-1))]`), so many
events failing at once do not come back in lock-step. A delivery is given up (dead) once it
has made `max_attempts` attempts, or once it has been waiting `max_age` since it was queued.

Tests switch the waiting off by passing a policy with tiny numbers, not by patching.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Exponential backoff with full jitter, capped; a receiver's Retry-After wins if longer."""

    initial_seconds: float = 10.0
    max_seconds: float = 3600.0
    multiplier: float = 2.0
    # A Retry-After beyond this is read as this (a hostile header must not park an event).
    max_retry_after_seconds: float = 86_400.0

    def __post_init__(self) -> None:
        if self.initial_seconds < 0 or self.max_seconds < self.initial_seconds:
            raise ValueError("backoff needs 0 <= initial_seconds <= max_seconds")
        if self.multiplier < 1 or self.max_retry_after_seconds < 0:
            raise ValueError("backoff needs multiplier >= 1 and max_retry_after_seconds >= 0")

    def ceiling(self, attempt: int) -> float:
        """The largest backoff after the `attempt`-th failed attempt (counting from 1)."""
        if self.initial_seconds == 0:
            return 0.0
        ceiling = self.initial_seconds
        # Step by step, stopping at the cap: multiplier**attempt overflows a float when big.
        for _ in range(max(attempt, 1) - 1):
            ceiling *= self.multiplier
            if ceiling >= self.max_seconds:
                return self.max_seconds
        return min(ceiling, self.max_seconds)

    def delay(
        self,
        attempt: int,
        retry_after: float | None = None,
        rand: Callable[[], float] = random.random,
    ) -> float:
        """Seconds to wait after the `attempt`-th failed attempt."""
        jittered = rand() * self.ceiling(attempt)
        if retry_after is None:
            return jittered
        wish = min(max(retry_after, 0.0), self.max_retry_after_seconds)
        return max(wish, jittered)


@dataclass(frozen=True, slots=True)
class Reschedule:
    """Try again at `at`."""

    at: datetime


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop trying; `reason` (status codes and counts only) goes to `last_error`."""

    reason: str


def after_failure(
    *,
    attempts: int,
    reason: str,
    retry_after: float | None,
    queued_at: datetime,
    now: datetime,
    max_attempts: int,
    max_age: timedelta,
    policy: BackoffPolicy,
    rand: Callable[[], float] = random.random,
) -> Reschedule | GiveUp:
    """What to do with a delivery whose `attempts`-th attempt just failed for `reason`.

    `queued_at` is when the delivery was queued (fan-out, replay or an operator's retry):
    the age limit counts from there, so a replayed old event gets a fresh budget.
    """
    if attempts >= max_attempts:
        return GiveUp(f"{reason}; gave up after {attempts} attempts")
    if now - queued_at >= max_age:
        hours = max_age.total_seconds() / 3600
        return GiveUp(f"{reason}; gave up after {attempts} attempts in {hours:g} hours")
    wait = policy.delay(attempts, retry_after, rand)
    return Reschedule(now + timedelta(seconds=wait))
