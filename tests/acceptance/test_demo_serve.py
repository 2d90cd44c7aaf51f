"""`syncd demo --serve`: the quickstart, then the daemon and its status page until Ctrl-C.

Its screenshot (build/screenshots/demo_serve.png) is the one README.md shows (copied to
docs/status-page.png)."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from tests.acceptance.conftest import clean_env, syncd_command
from tests.browser import browser, require_chromium
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


def test_demo_serve_keeps_the_status_page_up_until_ctrl_c(tmp_path: Path) -> None:
    require_chromium()
    directory = tmp_path / "syncd-demo"
    log = tmp_path / "demo.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            syncd_command(
                "demo", "--dir", str(directory), "--patients", "40", "--serve", "--port", "0"
            ),
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(iter(process.stdout.readline, "")),  # type: ignore[union-attr]
        daemon=True,
    )
    reader.start()
    try:
        wait_until(
            lambda: any("Status page: http://" in line for line in lines) or process.poll(),
            "the status page's address",
            within=180,
            interval=0.2,
        )
        assert process.poll() is None, "".join(lines)[-3000:]
        url = re.search(r"http://127\.0\.0\.1:\d+/", "".join(lines)).group(0)  # type: ignore[union-attr]
        with browser("demo_serve") as visit:
            assert visit.open(url).status == 200
            page = visit.page
            # The demo's export has 6 rows broken on purpose, one fixed overnight.
            assert page.locator("#quarantine tr.quarantined").count() == 5
            assert page.locator("#jobs tr.run").count() >= 7
            assert page.locator("#sinks tr.sink").count() == 1
            assert visit.console_errors == []
            assert visit.foreign_requests(url) == []
        assert process.poll() is None
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=90) == 0, log.read_text()[-3000:]
        reader.join(timeout=10)
        assert lines[-1].strip() == "stopped"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(timeout=10)
        process.stdout.close()  # type: ignore[union-attr]
