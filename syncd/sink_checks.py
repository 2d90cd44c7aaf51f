"""`syncd doctor`'s checks of the outbox sinks: placeholders left in, and reachability.

A sink copied from the documented template still points at `crm.example.org` with the
template's sample secret: it would dead-letter every event (or, worse, sign them with a
published secret). Each configured sink is checked for that first, then reached without
delivering anything: a TCP connect (with the TLS handshake for https and amqps, so a wrong
certificate shows here), an AMQP login for a broker, a writable directory for a file sink.

Details name the sink, the host and the port, never a URL's path, query or credentials,
nor a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from syncd.config import AmqpSink, FileSink, Settings, WebhookSink

# RFC 2606 / RFC 6761 names that never belong to a real receiver.
_PLACEHOLDER_DOMAINS: Final = ("example.com", "example.net", "example.org")
_PLACEHOLDER_TLDS: Final = ("example", "invalid", "test")
_DEFAULT_PORTS: Final = {"https": 443, "http": 80, "amqps": 5671, "amqp": 5672}


@dataclass(frozen=True, slots=True)
class SinkVerdict:
    """One sink's check: the sink's name, whether it passed, and why."""

    sink: str
    ok: bool
    detail: str


def placeholder_host(host: str | None) -> bool:
    """Whether `host` is a documentation name (example.org, anything.example, ...)."""
    if not host:
        return False
    name = host.lower().rstrip(".")
    if name.rsplit(".", 1)[-1] in _PLACEHOLDER_TLDS:
        return True
    return any(name == d or name.endswith("." + d) for d in _PLACEHOLDER_DOMAINS)


def template_secrets(template: str) -> frozenset[str]:
    """Every webhook secret written in the config template, commented out or not."""
    return frozenset(re.findall(r"whsec_[A-Za-z0-9+/=]+", template))


def placeholder_problems(
    name: str, sink: WebhookSink | FileSink | AmqpSink, example_secrets: frozenset[str]
) -> list[str]:
    """What of the template's sample values `sink` still carries (empty when none)."""
    problems = []
    if isinstance(sink, WebhookSink | AmqpSink):
        host = _host_port(sink.url)[1]
        if placeholder_host(host):
            problems.append(
                f"outbox.sinks.{name}.url: {host} is the template's example, not a receiver "
                "(set the real URL, or remove the sink)"
            )
    secret = sink.secret if isinstance(sink, WebhookSink) else None
    if secret is not None and secret.get_secret_value() in example_secrets:
        problems.append(
            f"outbox.sinks.{name}.secret: the template's sample secret, which is public "
            "(set the secret the receiver was given)"
        )
    return problems


async def check_sinks(settings: Settings, template: str) -> list[SinkVerdict]:
    """One verdict per configured sink: placeholders first, then reachability."""
    examples = template_secrets(template)
    verdicts = []
    for name, sink in settings.outbox.sinks.items():
        problems = placeholder_problems(name, sink, examples)
        if problems:
            verdicts.append(SinkVerdict(name, False, "; ".join(problems)))
            continue
        if isinstance(sink, FileSink):
            verdicts.append(_directory_verdict(name, sink.directory))
        elif isinstance(sink, WebhookSink):
            verdicts.append(await _connect_verdict(name, sink.url, sink.connect_timeout))
        else:
            verdicts.append(await _amqp_verdict(name, sink.url))
    return verdicts


def _host_port(url: str) -> tuple[str, str | None, int | None]:
    """(scheme, host, port) of `url`, the port defaulted by scheme."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.scheme, parts.hostname, port or _DEFAULT_PORTS.get(parts.scheme)


async def _connect_verdict(name: str, url: str, within: float) -> SinkVerdict:
    """Reach a webhook receiver: TCP connect, and the TLS handshake for https. Nothing is
    sent over the connection (a test request could be taken for an event)."""
    scheme, host, port = _host_port(url)
    where = f"{scheme}://{host}:{port}"
    tls = ssl.create_default_context() if scheme == "https" else None
    reason = await _connect(host, port, tls, within)
    if reason is not None:
        return SinkVerdict(name, False, f"cannot reach {where} ({reason})")
    shown = "TLS handshake done" if tls else "TCP connection made"
    return SinkVerdict(name, True, f"{where} is reachable ({shown}; nothing was sent)")


async def _connect(
    host: str | None, port: int | None, tls: ssl.SSLContext | None, within: float
) -> str | None:
    """Why a connection to host:port cannot be made within `within` seconds, or None."""
    if host is None or port is None:
        return "no host or port in the URL"
    try:
        async with asyncio.timeout(within):
            _, writer = await asyncio.open_connection(host, port, ssl=tls)
    except TimeoutError:
        return f"no answer within {within:g}s"
    except ssl.SSLError as exc:
        return f"TLS failed: {exc.reason or type(exc).__name__}"
    except OSError as exc:
        # asyncio's own text quotes the address tried; the system's reason is enough.
        return os.strerror(exc.errno) if exc.errno else type(exc).__name__
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


async def _amqp_verdict(name: str, url: str, within: float = 10.0) -> SinkVerdict:
    """Log in to the broker (credentials and virtual host checked), then leave."""
    import aio_pika

    scheme, host, port = _host_port(url)
    where = f"{scheme}://{host}:{port}"
    try:
        connection = await aio_pika.connect(url, timeout=within)
    except Exception as exc:  # aiormq's texts can quote the URL, with its password
        return SinkVerdict(name, False, f"cannot log in at {where} ({type(exc).__name__})")
    await connection.close()
    return SinkVerdict(name, True, f"{where}: logged in")


def _directory_verdict(name: str, directory: Path) -> SinkVerdict:
    """A file sink's directory is writable, or can be created (doctor creates nothing)."""
    if directory.is_dir():
        if os.access(directory, os.W_OK | os.X_OK):
            return SinkVerdict(name, True, f"{directory} is writable")
        return SinkVerdict(name, False, f"{directory} is not writable by this user")
    parent = directory.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
        return SinkVerdict(name, True, f"{directory} will be created at the first delivery")
    return SinkVerdict(
        name, False, f"{directory} does not exist and cannot be created under {parent}"
    )
