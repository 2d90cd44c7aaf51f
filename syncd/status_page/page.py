"""The status page route: `GET /` on the health server, HTML rendered on the server.

The page reloads itself (a `<meta http-equiv="refresh">`), so it works with JavaScript off;
its Content-Security-Policy forbids scripts and every request to another origin (clinic
servers are often offline, and the page must not call out). When the health server is
reachable beyond this machine, `status_page.auth` protects the page with HTTP basic auth or
a bearer token read from a credential file; /healthz, /readyz and /metrics keep their own
rules (probes and scrapers do not log in).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

import structlog
from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from syncd.config_page import PageAuth
from syncd.status_page.charts import render_chart
from syncd.status_page.queries import PageData, command, gather_page

log = structlog.get_logger(__name__)

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_ENV: Final = Environment(
    loader=PackageLoader("syncd.status_page", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True, slots=True)
class PageAccess:
    """Who may read the page: `auth` "none", "basic" (`secret` is `user:password`) or
    "bearer" (`secret` is the token)."""

    auth: PageAuth = "none"
    secret: str | None = None

    def allows(self, authorization: str | None) -> bool:
        """Whether a request with this Authorization header may read the page."""
        if self.auth == "none":
            return True
        if not authorization or self.secret is None:
            return False
        scheme, _, credentials = authorization.partition(" ")
        credentials = credentials.strip()
        if self.auth == "bearer":
            return scheme.lower() == "bearer" and _same(credentials, self.secret)
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return _same(decoded, self.secret)

    def challenge(self) -> str:
        return 'Basic realm="syncd status", charset="UTF-8"' if self.auth == "basic" else "Bearer"


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class PageConfig:
    """What the page needs besides the database."""

    freshness: Mapping[str, timedelta]  # the enabled jobs' freshness limits
    configured_sinks: Collection[str]
    refresh_seconds: int = 60
    syncd: str = "syncd"  # how the admin calls syncd, for the commands shown
    config_path: Path | None = None  # the config file, named in the commands shown
    access: PageAccess = PageAccess()


def render_page(data: PageData, config: PageConfig) -> str:
    """The page's HTML for `data`."""
    config_arg = str(config.config_path) if config.config_path is not None else None

    def cmd(*args: str) -> str:
        return command(config.syncd, *args, config=config_arg)

    charts = [(chart, render_chart(chart)) for chart in data.charts]
    return _ENV.get_template("page.html").render(
        data=data,
        charts=charts,
        refresh=config.refresh_seconds,
        cmd=cmd,
        seconds=_seconds,
        when=_when,
    )


def status_page_routes(
    engine: Engine,
    config: PageConfig,
    *,
    now: Callable[[], datetime] | None = None,
) -> list[Route]:
    """The page's routes for the health app."""
    # One thread: page views queue behind each other, never behind the jobs' executor.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="syncd-page")

    def build() -> str:
        data = gather_page(
            engine,
            freshness=config.freshness,
            configured_sinks=config.configured_sinks,
            now=now() if now is not None else None,
        )
        return render_page(data, config)

    async def page(request: Request) -> Response:
        if not config.access.allows(request.headers.get("authorization")):
            return Response(
                "authentication required\n",
                status_code=401,
                media_type="text/plain",
                headers={"WWW-Authenticate": config.access.challenge()},
            )
        try:
            html = await asyncio.get_running_loop().run_in_executor(executor, build)
        except Exception as exc:
            # The text of a database error may quote a row: its class name cannot.
            log.warning("status_page.render_failed", error=type(exc).__name__)
            return Response(
                f"status page unavailable ({type(exc).__name__})\n",
                status_code=503,
                media_type="text/plain",
            )
        return HTMLResponse(
            html,
            headers={
                "Content-Security-Policy": CONTENT_SECURITY_POLICY,
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            },
        )

    return [Route("/", page, methods=["GET"])]


def _seconds(value: float | None) -> str:
    """A duration for people: 42 s, 3 min 5 s, 2 h 10 min, 3 d 4 h."""
    if value is None:
        return "-"
    total = int(value)
    if total < 60:
        return f"{max(value, 0):.1f} s" if total < 10 else f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(start: datetime, end: datetime | None) -> float | None:
    """A run's duration in seconds, None while it runs."""
    return None if end is None else (end - start).total_seconds()


_ENV.globals["duration"] = duration
