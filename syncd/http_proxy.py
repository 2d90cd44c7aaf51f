"""Which HTTPS origins go through an HTTP proxy, from the environment as curl reads it.

A clinic's network often allows outbound HTTPS only through a proxy. `HTTPS_PROXY` (or
`https_proxy`) names it as `http://[user:password@]host:port`; `NO_PROXY` lists hosts and
domain suffixes reached directly. Loopback hosts are always direct (the sandbox, a local
receiver). Plain-http origins are always direct: the daemon sends patient data over plain
HTTP only to loopback or, for webhooks, to a receiver the clinic runs inside its network.

Through a proxy the connection is a tunnel (`CONNECT host:port`) and TLS runs end to end
inside it: the proxy sees the host name, never the requests (`syncd.http_connection`).
"""

from __future__ import annotations

import base64
import ipaddress
import urllib.request
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from syncd.exceptions import ConfigError


@dataclass(frozen=True)
class Proxy:
    """An HTTP proxy to tunnel through; `authorization` is its Proxy-Authorization value."""

    host: str
    port: int
    authorization: bytes | None = None

    def __repr__(self) -> str:  # never the credentials
        return f"Proxy(host={self.host!r}, port={self.port})"


@dataclass(frozen=True)
class ProxyRoutes:
    """The proxy for HTTPS origins, and the `NO_PROXY` entries that bypass it."""

    https: Proxy | None = None
    bypass: tuple[str, ...] = ()

    def for_origin(self, scheme: str, host: str) -> Proxy | None:
        """The proxy to tunnel through to `host`, or None to connect directly."""
        if self.https is None or scheme != "https" or _is_loopback(host):
            return None
        if any(_bypasses(entry, host.lower()) for entry in self.bypass):
            return None
        return self.https


def routes_from_environment() -> ProxyRoutes:
    """`HTTPS_PROXY`/`NO_PROXY` as the process sees them; `ConfigError` naming the variable
    when the proxy URL is not `http://host:port`."""
    environment = urllib.request.getproxies_environment()  # lower case first, as curl
    url = environment.get("https")
    if not url:
        return ProxyRoutes()
    entries = (entry.strip().lower() for entry in environment.get("no", "").split(","))
    return ProxyRoutes(https=parse_proxy_url(url), bypass=tuple(e for e in entries if e))


def route_note(url: str) -> str:
    """For a failure report: " through the proxy host:port (HTTPS_PROXY)" when requests to
    `url` would be tunnelled, else ""."""
    try:
        parts = urlsplit(url)
        proxy = routes_from_environment().for_origin(parts.scheme, parts.hostname or "")
    except (ValueError, ConfigError):
        return ""
    return f" through the proxy {proxy.host}:{proxy.port} (HTTPS_PROXY)" if proxy else ""


def parse_proxy_url(url: str) -> Proxy:
    """`http://[user:password@]host[:port]` as a `Proxy` (port 80 when none is given)."""
    problem = ConfigError(["HTTPS_PROXY must be an http://host:port URL"])
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        port = parts.port or 80
    except ValueError:
        raise problem from None
    if parts.scheme != "http" or not parts.hostname:
        raise problem
    authorization = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = b"Basic " + base64.b64encode(credentials.encode())
    return Proxy(host=parts.hostname, port=port, authorization=authorization)


def _bypasses(entry: str, host: str) -> bool:
    """Whether one `NO_PROXY` entry covers `host`: `*`, the host itself or a domain it is
    under (`example.org` and `.example.org` both cover `api.example.org`), or a network
    holding its address (`10.0.0.0/8`)."""
    if entry == "*":
        return True
    if "/" in entry:
        try:
            return ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return False
    domain = entry.lstrip(".")
    return host == domain or host.endswith("." + domain)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
