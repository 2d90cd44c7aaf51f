"""`syncd run` as a real process, the way systemd and Docker run it: wait for its READY=1
on a notify socket and for /healthz, then stop it with SIGTERM and collect what it logged."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

READY_TIMEOUT = 90.0  # a busy 2-core CI box, a cold interpreter: generous on purpose


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class Daemon:
    """A started daemon: its process and what it said."""

    process: subprocess.Popen[str]
    notify: socket.socket
    log: Path
    messages: list[str] = field(default_factory=list)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until the daemon sends READY=1 (as systemd's Type=notify waits), or fail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the daemon exited {self.process.returncode}: {self.drain()}")
            self.notify.settimeout(0.5)
            try:
                self.messages.append(self.notify.recv(4096).decode())
            except TimeoutError:
                continue
            if any("READY=1" in m.splitlines() for m in self.messages):
                return
        raise AssertionError(f"no READY=1 within {timeout:.0f}s: {self.messages}")

    def wait_healthz(self, port: int, timeout: float = READY_TIMEOUT) -> None:
        """Until GET /healthz answers 200 on 127.0.0.1:port, or fail."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the daemon exited {self.process.returncode}: {self.drain()}")
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.3)
        raise AssertionError(f"/healthz not 200 within {timeout:.0f}s ({last})")

    def drain(self) -> str:
        """Everything the process wrote to stderr so far."""
        return self.log.read_text(encoding="utf-8", errors="replace")


@contextmanager
def running(
    argv: Sequence[str],
    *,
    env: dict[str, str],
    cwd: Path,
    notify_dir: Path,
) -> Iterator[Daemon]:
    """Start `argv` with $NOTIFY_SOCKET set; SIGTERM it on the way out and expect exit 0.

    Its stderr goes to `notify_dir/daemon.log` (a pipe nobody reads could fill and block it).
    """
    path = notify_dir / "notify.sock"
    path.unlink(missing_ok=True)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        notify.bind(str(path))
    except OSError:
        notify.close()
        raise
    os.chmod(path, 0o777)  # a service user other than ours must be able to send to it
    log = notify_dir / "daemon.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env | {"NOTIFY_SOCKET": str(path)},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
        )
    daemon = Daemon(process, notify, log)
    try:
        yield daemon
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=90)
        assert process.returncode == 0, daemon.drain()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        notify.close()
        path.unlink(missing_ok=True)
