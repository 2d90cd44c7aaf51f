"""sd_notify over a real AF_UNIX datagram socket, as systemd would listen for it."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import uuid
from collections.abc import Iterator

import pytest
import structlog

from syncd import sdnotify
from tests.waiting import async_wait_until


class Listener:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def received(self) -> list[str]:
        """Every datagram waiting on the socket, decoded."""
        out: list[str] = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return out


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    """A notify socket at a short filesystem path (AF_UNIX paths are limited to 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="sdn", dir="/tmp") as folder:
        path = os.path.join(folder, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        try:
            yield Listener(sock, path)
        finally:
            sock.close()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test inherits a notify socket or a watchdog from the shell that runs pytest."""
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


def test_ready_sends_ready_datagram(listener: Listener) -> None:
    """ready() delivers exactly READY=1 to the socket in $NOTIFY_SOCKET."""
    assert sdnotify.ready() is True
    assert listener.received() == ["READY=1"]


def test_stopping_and_status(listener: Listener) -> None:
    """stopping() sends STOPPING=1 and status() sends a one-line STATUS=."""
    assert sdnotify.stopping()
    assert sdnotify.status("pushed 3\npolled 2")
    assert listener.received() == ["STOPPING=1", "STATUS=pushed 3 polled 2"]


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """A $NOTIFY_SOCKET starting with @ is reached in the abstract namespace."""
    name = f"syncd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("READY=1")
        assert sock.recv(64) == b"READY=1"


def test_no_socket_is_a_noop() -> None:
    """Without $NOTIFY_SOCKET (terminal, Docker) notify() sends nothing and returns False."""
    assert sdnotify.notify("READY=1") is False


def test_relative_socket_value_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """A $NOTIFY_SOCKET that is neither absolute nor abstract is not used."""
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/notify")
    assert sdnotify.notify("READY=1") is False


def test_dead_socket_returns_false_and_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A socket path nobody listens on makes notify() return False with an id-only log."""
    with tempfile.TemporaryDirectory(prefix="sdn", dir="/tmp") as folder:
        monkeypatch.setenv("NOTIFY_SOCKET", os.path.join(folder, "gone"))
        with structlog.testing.capture_logs() as logs:
            assert sdnotify.notify("READY=1") is False
    assert [e["event"] for e in logs] == ["sdnotify.failed"]
    assert logs[0]["error"] == "FileNotFoundError"


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 15.0),
        ("30000000", "self", 15.0),
        ("30000000", "other", None),
        (None, None, None),
        ("0", None, None),
        ("soon", None, None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    """The ping interval is half WATCHDOG_USEC, only when WATCHDOG_PID is unset or ours."""
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid == "self":
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    elif pid == "other":
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sdnotify.watchdog_interval() == expected


async def test_watchdog_pings_only_while_alive(listener: Listener) -> None:
    """watchdog_task pings while is_alive() is True and goes silent once it turns False."""
    alive = True
    checks = 0
    pinged: list[str] = []

    def is_alive() -> bool:
        nonlocal checks
        checks += 1
        return alive

    def collect() -> int:
        pinged.extend(listener.received())
        return len(pinged)

    task = asyncio.create_task(sdnotify.watchdog_task(is_alive, interval=0.02))
    await async_wait_until(lambda: collect() >= 3, "three pings")
    alive = False
    collect()  # a datagram is queued when sent: every ping so far is in
    stale_from = checks
    await async_wait_until(lambda: checks >= stale_from + 5, "five more checks")
    silent = listener.received()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(pinged) >= 3
    assert set(pinged) == {"WATCHDOG=1"}
    assert silent == []


async def test_watchdog_pings_once_per_alive_check(listener: Listener) -> None:
    """Each check that finds the loop alive sends one ping; each stale check sends none."""
    answers: list[bool] = []

    def is_alive() -> bool:
        answers.append(len(answers) % 3 != 1)  # alive, stale, alive, alive, stale, ...
        return answers[-1]

    task = asyncio.create_task(sdnotify.watchdog_task(is_alive, interval=0.01))
    await async_wait_until(lambda: len(answers) >= 7, "seven checks")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert False in answers
    assert listener.received() == ["WATCHDOG=1"] * answers.count(True)


async def test_watchdog_without_systemd_returns() -> None:
    """With no WATCHDOG_USEC the watchdog task ends at once instead of looping."""
    await asyncio.wait_for(sdnotify.watchdog_task(lambda: True), timeout=30)


async def test_watchdog_uses_environment_interval(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an explicit interval the task follows WATCHDOG_USEC from systemd."""
    monkeypatch.setenv("WATCHDOG_USEC", "40000")  # 40 ms: a ping every 20 ms
    pinged: list[str] = []

    def collect() -> int:
        pinged.extend(listener.received())
        return len(pinged)

    task = asyncio.create_task(sdnotify.watchdog_task(lambda: True))
    # Three pings take 40 ms; 10 s leaves any loaded machine room, yet any other reading
    # of WATCHDOG_USEC (as milliseconds: a ping every 20 s) would not get there.
    await async_wait_until(lambda: collect() >= 3, "three pings", within=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert set(pinged) == {"WATCHDOG=1"}
