"""Named crash points, so tests can kill the daemon at an exact step of its work.

Code that must survive a crash calls `step("poller.after_page")` at each point where a
crash would be interesting. Normally that does nothing. With the environment variable
`SYNCD_CRASH_AT=<name>[:<n>]` set, the n-th time (default 1) the named step is reached the
process sends itself SIGKILL: no cleanup, no `finally`, no flush, like a power cut.
In-process tests can instead install a callback with `set_callback` (for example one that
raises at a chosen step) and then run a fresh instance to prove the work resumes.

The variable is read once, at import, so an unset hook costs one global lookup and a test.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable

ENV_VAR = "SYNCD_CRASH_AT"


def _parse(spec: str | None) -> tuple[str, int] | None:
    """`name` or `name:n` into (name, n); None when unset or empty."""
    if not spec:
        return None
    name, sep, nth = spec.rpartition(":")
    if not sep or not nth.isdigit():
        return spec, 1
    return name, max(1, int(nth))


_crash_at = _parse(os.environ.get(ENV_VAR))
_callback: Callable[[str], None] | None = None
_reached: Counter[str] = Counter()


def step(name: str) -> None:
    """Mark that the named step was reached; crash here if told to."""
    if _crash_at is None and _callback is None:
        return
    if _callback is not None:
        _callback(name)
    if _crash_at is not None and _crash_at[0] == name:
        _reached[name] += 1
        if _reached[name] == _crash_at[1]:
            os.kill(os.getpid(), signal.SIGKILL)


def set_callback(callback: Callable[[str], None] | None) -> None:
    """Call `callback(name)` at every step from now on (None removes it); for tests."""
    global _callback
    _callback = callback
