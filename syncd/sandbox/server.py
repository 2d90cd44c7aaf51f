"""Serving the sandbox: `serve()` (uvicorn, for the CLI) and `ServedSandbox` (a subprocess).

`serve` binds the socket itself before uvicorn starts, so `port=0` works and the chosen port
is printed as the first line on stdout (`syncd-sandbox listening on http://host:port`);
`ServedSandbox` reads that line, then waits for `/_sandbox/health`.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from syncd.sandbox.admin_client import SandboxAdmin
from syncd.sandbox.faults import FaultConfig
from syncd.sandbox.seed import DEMO_KEY_ID
from syncd.voxares.contract import API_PREFIX

READY_PREFIX = "syncd-sandbox listening on "
# The start of the demo key: enough to recognise it, not enough to use it.
DEMO_KEY_HINT = f"vox-{DEMO_KEY_ID}-…"


class _DroppedConnectionFilter(logging.Filter):
    """Keeps uvicorn from logging a traceback for every injected dropped connection."""

    def filter(self, record: logging.LogRecord) -> bool:
        from syncd.sandbox.middleware import DroppedConnection

        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DroppedConnection)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on accepted sockets whose proto
    # says TCP, and accepted sockets inherit it from this one. With proto 0, Nagle holds the
    # body of every answer (written after its headers) until the client's delayed ACK, which
    # adds ~40 ms to each request on Linux: no real API server behaves that way.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    seed: int = 0,
    faults: FaultConfig | None = None,
    activity_rate: float = 0.0,
    persist_path: str | Path | None = None,
    log_level: str = "warning",
) -> None:
    """Serve the sandbox with uvicorn until SIGINT/SIGTERM (blocking).

    `activity_rate` > 0 starts the activity simulator at that many events per second.
    With `persist_path`, state is loaded from that SQLite file at start (when it exists) and
    snapshotted there while serving and on shutdown.
    """
    import uvicorn

    from syncd.sandbox.app import create_app
    from syncd.sandbox.state import Sandbox

    sandbox = Sandbox(seed)
    if persist_path is not None:
        from syncd.sandbox.persist import load

        load(sandbox, persist_path)
    if activity_rate > 0:
        sandbox.activity_enabled, sandbox.activity_rate = True, activity_rate
    app = create_app(sandbox, faults, persist_path=persist_path)
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,  # query strings can carry patient names (searchTerm)
        date_header=False,  # the app sets Date from the sandbox clock
        server_header=False,
        lifespan="on",
        timeout_graceful_shutdown=2,
        backlog=2048,
    )
    logging.getLogger("uvicorn.error").addFilter(_DroppedConnectionFilter())
    sock = bind_socket(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    root = f"http://{shown}:{bound_port}"
    print(f"{READY_PREFIX}{root}", flush=True)
    print(startup_notice(root), flush=True)
    uvicorn.Server(config).run(sockets=[sock])


def startup_notice(root_url: str) -> str:
    """What an operator needs to point a client at the served sandbox: the API base URL,
    and where its key is (the key itself is not printed: terminals end up in scrollback,
    screenshots and CI logs, and a habit of printing keys does not stay with demo keys)."""
    return (
        f"API base URL: {root_url}{API_PREFIX}  (voxares.base_url)\n"
        f'API key: the demo practice\'s key, {DEMO_KEY_HINT} (README.md, "The sandbox"; '
        "in code syncd.sandbox.seed.DEMO_API_KEY); a key of your own: "
        f"POST {root_url}/_sandbox/practices\n"
        "Stop with Ctrl-C."
    )


class ServedSandbox:
    """Runs `python -m syncd.sandbox serve` as a subprocess on a free loopback port.

    Use as a context manager: on enter it waits until the sandbox answers, then exposes
    `base_url` (ending in `/api/v1/integration`), `admin_url` and `admin` (a `SandboxAdmin`);
    on exit it stops the process (SIGTERM, then SIGKILL). `restart()` stops and starts it
    again on the same port (with `persist_path`, the state survives).
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        faults: FaultConfig | None = None,
        activity_rate: float = 0.0,
        persist_path: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 30.0,
    ) -> None:
        self.seed = seed
        self.faults = faults
        self.activity_rate = activity_rate
        self.persist_path = None if persist_path is None else Path(persist_path)
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self.root_url = ""
        self._process: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None
        self._admin: SandboxAdmin | None = None

    @property
    def base_url(self) -> str:
        """The API base URL, e.g. `http://127.0.0.1:40123/api/v1/integration`."""
        return self.root_url + API_PREFIX

    @property
    def admin_url(self) -> str:
        """The admin base URL, e.g. `http://127.0.0.1:40123/_sandbox`."""
        return self.root_url + "/_sandbox"

    @property
    def admin(self) -> SandboxAdmin:
        """A client of the admin endpoints (started sandboxes only)."""
        if self._admin is None:
            raise RuntimeError("the sandbox is not running")
        return self._admin

    @property
    def pid(self) -> int | None:
        """The subprocess's pid while running."""
        return None if self._process is None else self._process.pid

    def command(self) -> list[str]:
        """The command line that starts the sandbox."""
        cmd = [sys.executable, "-m", "syncd.sandbox", "serve", "--host", self.host]
        cmd += ["--port", str(self.port), "--seed", str(self.seed)]
        cmd += ["--activity-rate", str(self.activity_rate)]
        if self.faults is not None:
            cmd += ["--faults-json", json.dumps(self.faults.model_dump(mode="json"))]
        if self.persist_path is not None:
            cmd += ["--persist-path", str(self.persist_path)]
        return cmd

    def start(self) -> Self:
        """Start the subprocess and wait until it answers (RuntimeError when it does not)."""
        if self._process is not None:
            raise RuntimeError("the sandbox is already running")
        self._log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed in stop())
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._process = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
            self.command(),
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
        )
        try:
            self.root_url = self._read_ready_line(time.monotonic() + self.startup_timeout)
            self.port = int(self.root_url.rsplit(":", 1)[1])
            self._admin = SandboxAdmin(self.admin_url)
            self._wait_healthy(time.monotonic() + self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _read_ready_line(self, deadline: float) -> str:
        process = self._process
        assert process is not None
        assert process.stdout is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 0.1)
            if ready:
                line = process.stdout.readline()
                if line.startswith(READY_PREFIX):
                    return line[len(READY_PREFIX) :].strip()
                if not line and process.poll() is not None:
                    break
            elif process.poll() is not None:
                break
        raise RuntimeError(f"the sandbox did not start: {self.log_tail()}")

    def _wait_healthy(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.admin.health():
                return
            if self._process is not None and self._process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"the sandbox did not become healthy: {self.log_tail()}")

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the subprocess's stderr (uvicorn's log; it holds no patient data)."""
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        return self._log.read()[-chars:]

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the subprocess (SIGTERM, then SIGKILL after `timeout`); its exit code."""
        process, self._process = self._process, None
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        code = None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            code = process.returncode
            if process.stdout is not None:
                process.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def restart(self) -> Self:
        """Stop and start again on the same port."""
        self.stop()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
