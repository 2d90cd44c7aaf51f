"""Who a worker is, and whether a worker on this host is still alive.

Leases (job locks, outbox claims) are owned by `host:pid[:tag]`. After a kill -9 the next
process on the same host can tell that the owner is gone and take the lease back at once,
instead of waiting out its expiry. A lease owned by another host is never judged here.
"""

from __future__ import annotations

import os
import socket


def host_name() -> str:
    """This host's name, the first part of every owner id."""
    return socket.gethostname()


def owner_id(tag: str | None = None) -> str:
    """`host:pid`, or `host:pid:tag` for several workers in one process."""
    base = f"{host_name()}:{os.getpid()}"
    return f"{base}:{tag}" if tag else base


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (signal 0 probes, sends nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True
