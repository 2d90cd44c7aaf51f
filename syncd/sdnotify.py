"""A tiny sd_notify(3) client: tell systemd we are ready, stopping, or still alive.

The unit runs with `Type=notify` and `WatchdogSec=`: systemd waits for `READY=1` before it
considers the service started, and restarts it when `WATCHDOG=1` pings stop arriving. The
protocol is one AF_UNIX datagram of newline-separated `KEY=VALUE` lines sent to the socket
named by `$NOTIFY_SOCKET` (a leading `@` means the Linux abstract namespace). It is small
enough that a dependency (sdnotify, systemd-python) would cost more than it saves.

Outside systemd (`$NOTIFY_SOCKET` unset: a terminal, Docker, the tests) every call is a no-op
that returns False, so callers never need to ask where they run.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)


def _address(raw: str) -> str | bytes:
    """The socket address for a `$NOTIFY_SOCKET` value (`@` = the abstract namespace)."""
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    return raw


def notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1" or several lines) to systemd.

    Returns True when the datagram was sent, False when there is no notify socket or the
    send failed. A failure is logged and swallowed: the daemon's work matters more than
    telling systemd about it, and a missing watchdog ping is noticed by systemd anyway.
    """
    raw = os.environ.get("NOTIFY_SOCKET", "")
    if not raw or raw[0] not in "/@":
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(_address(raw))
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("sdnotify.failed", error=type(exc).__name__, errno=exc.errno)
        return False
    return True


def ready() -> bool:
    """Tell systemd that start-up is complete (the unit becomes `active`)."""
    return notify("READY=1")


def stopping() -> bool:
    """Tell systemd that a graceful shutdown has begun."""
    return notify("STOPPING=1")


def status(text: str) -> bool:
    """Set the one-line status shown by `systemctl status` (ids and counts only)."""
    # A newline would start a new KEY=VALUE assignment; keep the status on one line.
    return notify("STATUS=" + " ".join(text.splitlines()))


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings, or None when systemd expects none from us.

    Half of `$WATCHDOG_USEC`, as sd_watchdog_enabled(3) advises, and only when
    `$WATCHDOG_PID` is unset or names this process (a child must not ping for its parent).
    """
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


async def watchdog_task(is_alive: Callable[[], bool], *, interval: float | None = None) -> None:
    """Send `WATCHDOG=1` every `interval` seconds while `is_alive()` says the daemon works.

    Runs until cancelled. `interval` defaults to `watchdog_interval()`; with no watchdog
    configured it returns at once. When `is_alive()` is False (for example the main loop's
    heartbeat is stale) no ping is sent, so systemd's watchdog fires and restarts the unit:
    a wedged daemon is worse than a restarted one.
    """
    period = watchdog_interval() if interval is None else interval
    if period is None:
        return
    was_alive = True
    while True:
        alive = is_alive()
        if alive:
            notify("WATCHDOG=1")
        elif was_alive:
            log.warning("sdnotify.watchdog_withheld", interval=period)
        was_alive = alive
        await asyncio.sleep(period)
