"""Which HTTPS origins go through the proxy `HTTPS_PROXY` names (syncd.http_proxy)."""

from __future__ import annotations

import base64

import pytest

from syncd.exceptions import ConfigError
from syncd.http_proxy import Proxy, ProxyRoutes, parse_proxy_url, routes_from_environment

PROXY = Proxy(host="proxy.clinic.lan", port=3128)


def test_proxy_url_with_credentials_and_default_port() -> None:
    """User and password (percent-decoded) become a Basic Proxy-Authorization; no port
    means 80; the repr never shows the credentials."""
    proxy = parse_proxy_url("http://it%40clinic:s3cr%3At@proxy.clinic.lan")
    assert (proxy.host, proxy.port) == ("proxy.clinic.lan", 80)
    assert proxy.authorization == b"Basic " + base64.b64encode(b"it@clinic:s3cr:t")
    assert "s3cr" not in repr(proxy)
    assert parse_proxy_url("proxy.clinic.lan:3128") == PROXY  # scheme-less, as curl takes it


@pytest.mark.parametrize(
    "url", ["socks5://proxy:1080", "https://proxy:443", "http://", "http://proxy:99999"]
)
def test_unusable_proxy_url_names_the_variable(url: str) -> None:
    """Anything but http://host[:port] stops start-up with one line naming HTTPS_PROXY."""
    with pytest.raises(ConfigError, match="HTTPS_PROXY"):
        parse_proxy_url(url)


def test_only_https_to_other_hosts_goes_through_the_proxy() -> None:
    """Loopback and plain-http origins are reached directly; HTTPS elsewhere is tunnelled."""
    routes = ProxyRoutes(https=PROXY)
    assert routes.for_origin("https", "api.voxares.example") == PROXY
    assert routes.for_origin("https", "127.0.0.1") is None
    assert routes.for_origin("https", "::1") is None
    assert routes.for_origin("https", "localhost") is None
    assert routes.for_origin("http", "receiver.clinic.lan") is None
    assert ProxyRoutes().for_origin("https", "api.voxares.example") is None


@pytest.mark.parametrize(
    ("entry", "host", "bypassed"),
    [
        ("clinic.lan", "receiver.clinic.lan", True),
        (".clinic.lan", "receiver.clinic.lan", True),
        ("clinic.lan", "clinic.lan", True),
        ("clinic.lan", "notclinic.lan", False),
        ("*", "api.voxares.example", True),
        ("10.0.0.0/8", "10.2.3.4", True),
        ("10.0.0.0/8", "11.2.3.4", False),
        ("10.0.0.0/8", "receiver.clinic.lan", False),
    ],
)
def test_no_proxy_entries(entry: str, host: str, bypassed: bool) -> None:
    """NO_PROXY: `*`, a host, a domain (with or without its leading dot), or a network."""
    routes = ProxyRoutes(https=PROXY, bypass=(entry,))
    assert (routes.for_origin("https", host) is None) is bypassed


def test_routes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTPS_PROXY and NO_PROXY are read as curl reads them (either case)."""
    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
    assert routes_from_environment() == ProxyRoutes()
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.clinic.lan:3128")
    monkeypatch.setenv("NO_PROXY", " clinic.lan , 10.0.0.0/8,")
    routes = routes_from_environment()
    assert routes == ProxyRoutes(https=PROXY, bypass=("clinic.lan", "10.0.0.0/8"))
