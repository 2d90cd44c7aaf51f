"""Waiting for a condition instead of for a guessed amount of time.

A test that sleeps "long enough" for work to happen races the machine: on a busy 2-core CI
box the work may take ten times as long. These helpers poll the condition itself and give
up only after a deadline far beyond any plausible slowness, naming what never happened.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

# Long enough that only a real failure (the condition never holding) runs out of it.
DEADLINE_SECONDS = 60.0


def wait_until(
    condition: Callable[[], object],
    what: str,
    *,
    within: float = DEADLINE_SECONDS,
    interval: float = 0.02,
) -> None:
    """Poll `condition()` (blocking) until it is true; AssertionError naming `what` if not."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g}s waiting for {what}")
        time.sleep(interval)


async def async_wait_until(
    condition: Callable[[], object],
    what: str,
    *,
    within: float = DEADLINE_SECONDS,
    interval: float = 0.005,
) -> None:
    """Poll `condition()` on the event loop until it is true; AssertionError if it never is."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within:g}s waiting for {what}")
        await asyncio.sleep(interval)
