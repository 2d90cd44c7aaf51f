"""The activity simulator's clockwork: calls `Sandbox.tick` at the configured rate.

The steps themselves live in `Sandbox.tick` (deterministic, callable from tests); this loop
only converts elapsed time into a number of steps, so a rate of 0.5 per second means one step
every two seconds on average, whatever the loop interval.
"""

from __future__ import annotations

import asyncio
import time

from syncd.sandbox.state import Sandbox


def steps_due(rate: float, elapsed: float, carry: float) -> tuple[int, float]:
    """Whole steps due after `elapsed` seconds at `rate` per second, and the fraction left."""
    due = carry + rate * elapsed
    steps = int(due)
    return steps, due - steps


async def run_activity(sandbox: Sandbox, interval: float = 0.25) -> None:
    """Run forever (until cancelled): tick the sandbox while its activity is enabled."""
    carry = 0.0
    last = time.monotonic()
    while True:
        await asyncio.sleep(interval)
        now = time.monotonic()
        elapsed, last = now - last, now
        if not sandbox.activity_enabled:
            carry = 0.0
            continue
        steps, carry = steps_due(sandbox.activity_rate, elapsed, carry)
        if steps:
            sandbox.tick(steps)
