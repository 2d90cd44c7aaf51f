"""`syncd sandbox serve` as an operator starts it: what it prints at start (issue 11)."""

from __future__ import annotations

import queue
import signal
import subprocess
import threading
import time

import httpx

from syncd.sandbox.seed import DEMO_API_KEY, DEMO_KEY_SECRET
from tests.acceptance.conftest import clean_env, syncd_command


def read_notice(lines: queue.Queue[str], until: str, timeout: float = 30) -> list[str]:
    """The lines from `lines` up to the one starting with `until`."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2).rstrip("\n")
        except queue.Empty:
            continue
        seen.append(line)
        if line.startswith(until):
            return seen
    raise AssertionError(f"no line starting with {until!r} in {seen}")


def test_sandbox_serve_prints_its_base_url_and_where_the_key_is() -> None:
    """The notice names the API base URL (which works with the demo key) and where the key
    is documented, without printing the key."""
    process = subprocess.Popen(
        syncd_command("sandbox", "serve", "--port", "0"),
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    # Read by a thread: select() on a buffered pipe misses lines already in its buffer.
    assert process.stdout is not None
    stdout = process.stdout
    received: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [received.put(line) for line in stdout])
    reader.start()
    try:
        lines = read_notice(received, "Stop with Ctrl-C")
        [base] = [line for line in lines if line.startswith("API base URL: ")]
        base_url = base.removeprefix("API base URL: ").split()[0]
        answer = httpx.get(
            f"{base_url}/patients",
            headers={"Authorization": f"Bearer {DEMO_API_KEY}"},
            timeout=10,
        )
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        reader.join(timeout=30)  # the pipe ends with the process
        stdout.close()
    assert base_url.endswith("/api/v1/integration")
    assert answer.status_code == 200
    [key_line] = [line for line in lines if line.startswith("API key: ")]
    assert "README.md" in key_line
    text = "\n".join(lines)
    assert DEMO_API_KEY not in text
    assert DEMO_KEY_SECRET not in text
