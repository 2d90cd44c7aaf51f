"""A real browser for the status page's tests: Debian's headless Chromium driven by
Playwright (its wheel bundles the driver; no `playwright install`, no browser download).

`.ci/run` installs the `chromium` package. Without it a test skips saying so, except under
CI=true, where it fails. Every page load records console errors, uncaught exceptions and
any request to another origin than the page's (the page must work offline), and each test
leaves a screenshot under build/screenshots/ (a CI artifact).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

CHROMIUM = Path(os.environ.get("SYNCD_TEST_CHROMIUM", "/usr/bin/chromium"))
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "build" / "screenshots"


def require_chromium() -> None:
    """Skip (fail under CI=true) when Chromium or Playwright is missing."""
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} not found (apt-get install -y chromium; .ci/run does)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "the playwright package is not installed (pip install -e '.[dev]')"
    if missing is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser tests need Chromium under CI: {missing}")
    pytest.skip(missing)


@dataclass
class Visit:
    """One browser page and what it did."""

    page: Any  # playwright.sync_api.Page
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def open(self, url: str, **headers: str) -> Any:
        """Load `url`; the response (Playwright's)."""
        if headers:
            self.page.set_extra_http_headers(headers)
        return self.page.goto(url, wait_until="load")

    def foreign_requests(self, url: str) -> list[str]:
        """Requests made to any origin other than `url`'s."""
        origin = urlsplit(url)[:2]
        return [r for r in self.requests if urlsplit(r)[:2] != origin]

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@contextmanager
def browser(name: str) -> Iterator[Visit]:
    """A fresh headless Chromium (its own user-data-dir) and one page; a screenshot named
    after `name` is kept on the way out, whether the test passed or not."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="syncd-chromium-") as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = context.new_page()
            visit = Visit(page)
            page.on(
                "console",
                lambda m: visit.console_errors.append(m.text) if m.type == "error" else None,
            )
            page.on("pageerror", lambda e: visit.page_errors.append(str(e)))
            page.on("request", lambda r: visit.requests.append(r.url))
            page.on("requestfailed", lambda r: visit.failed.append(r.url))
            try:
                yield visit
            finally:
                if page.url.startswith("http"):
                    visit.screenshot(name)
        finally:
            context.close()
