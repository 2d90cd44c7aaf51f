"""Retry decisions for Voxares calls: pure functions of an error, a policy and the time.

Which errors are worth another attempt, and how long to wait before it. The waiting itself
is done by the client's retry loop; nothing here sleeps or does I/O.

- Retried: 429, 500, 502, 503, 504, and transport failures (connect errors, timeouts,
  dropped connections). `POST /messages/send` turns its ambiguous failures into
  `SendOutcomeUnknown` before they get here, and that is never retried.
- Never retried: 400, 401, 403, 404, 409, 422 (and any other status), malformed answers.
- Backoff: exponential with full jitter (a uniform draw between 0 and the capped
  exponential), and never less than the server's `Retry-After`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime

from syncd.exceptions import (
    RateLimited,
    SendOutcomeUnknown,
    ServerError,
    VoxaresError,
    VoxaresTransportError,
)

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one call tries.

    attempts: total attempts, the first included. initial: the cap of the first backoff, in
    seconds, doubling per retry up to max_backoff. timeout: the total time budget of one
    call in seconds (None: no budget); a retry whose wait would overrun it is not made.
    wait: False skips the waits (tests) while every decision stays the same.
    """

    attempts: int = 5
    initial: float = 0.5
    max_backoff: float = 30.0
    timeout: float | None = 120.0
    wait: bool = True

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.initial < 0 or self.max_backoff < 0:
            raise ValueError("backoff times must not be negative")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError("timeout must be positive or None")

    @classmethod
    def no_wait(cls, attempts: int = 5) -> RetryPolicy:
        """A policy that decides like the default one but never sleeps (for tests)."""
        return cls(attempts=attempts, wait=False)


def is_retryable(error: BaseException) -> bool:
    """Whether another attempt could succeed where this one failed."""
    if isinstance(error, SendOutcomeUnknown):
        return False
    if isinstance(error, VoxaresTransportError):
        return True
    if isinstance(error, RateLimited | ServerError):
        return error.status in RETRYABLE_STATUSES
    return False


def retry_after_of(error: BaseException) -> float | None:
    """The server's `Retry-After` carried by an error, in seconds, if any."""
    if isinstance(error, RateLimited | ServerError):
        return error.retry_after
    return None


def parse_retry_after(value: str | None, *, now: datetime) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP-date.

    `now` should be the server's clock (the response's `Date`) when known, so that the two
    clocks disagreeing does not shorten the wait. A date in the past means 0; garbage, None.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # "-0000" in an HTTP-date means UTC
        return None
    return max(0.0, (moment - now).total_seconds())


def backoff(
    policy: RetryPolicy,
    retry_number: int,
    *,
    retry_after: float | None = None,
    draw: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number `retry_number` (1 = the first retry).

    Full jitter: uniform in [0, min(max_backoff, initial * 2**(retry_number-1))], raised to
    `retry_after` when the server asked for more. `draw` returns a float in [0, 1).
    """
    exponent = min(retry_number - 1, 62)  # keeps 2**n finite; the cap applies long before
    ceiling = min(policy.max_backoff, policy.initial * 2.0**exponent)
    delay = draw() * ceiling
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def next_delay(
    error: BaseException,
    *,
    policy: RetryPolicy,
    retry_number: int,
    elapsed: float,
    draw: Callable[[], float] = random.random,
) -> float | None:
    """The wait before the next attempt, or None to give up and raise `error`.

    Gives up when the error is not retryable, when the attempts are used up, or when the
    wait (which is never shorter than Retry-After) would overrun the policy's time budget.
    """
    if not isinstance(error, VoxaresError) or not is_retryable(error):
        return None
    if retry_number >= policy.attempts:
        return None
    delay = backoff(policy, retry_number, retry_after=retry_after_of(error), draw=draw)
    if policy.timeout is not None and elapsed + delay > policy.timeout:
        return None
    return delay
