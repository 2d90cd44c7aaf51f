"""How the sinks of one delivery run share it: each sink runs its own loop, and no sink's
slow batch holds another back.

Each sink repeats passes (fan out its new events, then deliver until nothing is due)
until it has nothing to do. A sink with nothing to do keeps looking for new events every
`pause` while another sink is still working, so a hanging receiver, whose batch lasts
until the deliver timeout, never keeps a healthy sink's new events waiting for the run to
end: the run ends when every sink is idle at once.

The run's time budget stops new batches, with one exception: while a sink is finishing a
batch it claimed before the budget ran out (a straggler), the other sinks go on claiming,
since the run cannot end before the straggler does anyway. Batches claimed after the
budget keep no one going, so a run lasts at most its budget plus one deliver timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Literal

Step = Literal["again", "pause", "stop"]


def next_step(
    *,
    did_work: bool,
    waiting: bool,
    may_claim: bool,
    before_deadline: bool,
    others_working: bool,
) -> Step:
    """What a sink's loop does after a pass (pure).

    `did_work`: the pass fanned out or claimed something (there may be more at once);
    `waiting`: committed events wait behind an open transaction (fan-out will get them
    shortly); `may_claim`: the board lets this sink claim (see `RunBoard.may_claim`);
    `others_working`: another sink of the run is in a pass.
    """
    if did_work and may_claim:
        return "again"
    if waiting and before_deadline:
        return "pause"
    if may_claim and others_working:
        return "pause"
    return "stop"


class RunBoard:
    """What the sink loops of one run know of each other (one event loop: no lock)."""

    def __init__(
        self, budget_seconds: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._deadline = clock() + budget_seconds
        self._working: Counter[str] = Counter()  # sinks in a pass
        self._stragglers: Counter[str] = Counter()  # batches claimed before the deadline
        self._woken = asyncio.Event()

    def before_deadline(self) -> bool:
        """Whether the run's time budget is left."""
        return self._clock() < self._deadline

    def may_claim(self, sink: str) -> bool:
        """Whether `sink` may claim another batch: within the budget, or while another
        sink finishes a batch it claimed within it."""
        if self.before_deadline():
            return True
        return any(count for name, count in self._stragglers.items() if name != sink)

    def others_working(self, sink: str) -> bool:
        """Whether a sink other than `sink` is in a pass."""
        return any(count for name, count in self._working.items() if name != sink)

    @contextlib.contextmanager
    def working(self, sink: str) -> Iterator[None]:
        """`sink` is in a pass for the duration."""
        self._working[sink] += 1
        try:
            yield
        finally:
            self._working[sink] -= 1
            if not any(self._working.values()):
                self._wake()  # the pausing sinks may be the last ones: let them stop

    @contextlib.contextmanager
    def batch(self, sink: str) -> Iterator[None]:
        """`sink` has a batch in flight (from its claim to its record)."""
        early = self.before_deadline()
        if early:
            self._stragglers[sink] += 1
        try:
            yield
        finally:
            if early:
                self._stragglers[sink] -= 1
                if not any(self._stragglers.values()) and not self.before_deadline():
                    self._wake()  # past the budget, the last straggler is done

    async def pause(self, seconds: float) -> None:
        """Wait `seconds`, or less when what kept this sink looking is gone: no sink is in a
        pass any more, or (past the budget) the last straggler has finished."""
        woken = self._woken
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(woken.wait(), seconds)

    def _wake(self) -> None:
        self._woken.set()
        self._woken = asyncio.Event()
