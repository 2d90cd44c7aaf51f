"""The Voxares base URL's check and the request paths built from contract templates."""

from __future__ import annotations

from urllib.parse import quote

import httpx

from syncd.exceptions import ConfigError

_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def check_base_url(base_url: str, *, transport_injected: bool) -> None:
    """Refuse a base URL that would send the key in clear text to a real network host.

    https is required, except for localhost/127.0.0.1/::1 and, when a transport is injected
    (in-process sandbox, mock), a single-label host such as `http://sandbox`.
    """
    try:
        url = httpx.URL(base_url)
    except httpx.InvalidURL:
        raise ConfigError(["voxares.base_url is not a valid URL"]) from None
    if url.scheme == "https" and url.host:
        pass
    elif url.scheme == "http" and url.host:
        single_label = "." not in url.host and ":" not in url.host
        if url.host not in _LOCAL_HOSTS and not (transport_injected and single_label):
            raise ConfigError(
                ["voxares.base_url must use https:// (plain http only for localhost)"]
            )
    else:
        raise ConfigError(["voxares.base_url must be an https:// URL with a host"])
    if url.userinfo or url.query or url.fragment:
        raise ConfigError(["voxares.base_url must not carry credentials, a query or a fragment"])


def path_segment(value: str) -> str:
    """Percent-encode one path segment: `/`, `?`, `#`, `%` and dot-segments included.

    "." and ".." would be resolved away by URL normalisation and reach another endpoint.
    """
    if not value:
        raise ValueError("a path segment must not be empty")
    if value in {".", ".."}:
        return value.replace(".", "%2E")
    return quote(value, safe="")


def render_path(template: str, **segments: str) -> str:
    """A path template filled with percent-encoded segments."""
    return template.format(**{name: path_segment(value) for name, value in segments.items()})
