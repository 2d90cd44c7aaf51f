"""What the daemon runs for an HL7 feed: the listener, the file drop and the apply loop.

The apply job runs after each accepted message (woken, never more than one run at a time)
and every `apply_interval_seconds` in any case; each run goes through `JobRunner`, so it
has its lock, its run record and its metrics like any scheduled job.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

import structlog
from sqlalchemy import Engine

from syncd.config_fields import open_to_everyone
from syncd.config_hl7 import Hl7Settings
from syncd.exceptions import ConfigError
from syncd.hl7.apply import Hl7Apply
from syncd.hl7.files import Hl7FileDrop
from syncd.hl7.mllp import MllpListener
from syncd.hl7.receiver import Receiver
from syncd.jobs import JobRunner

log = structlog.get_logger(__name__)

_STOP_GRACE_SECONDS = 15.0


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server TLS context from a certificate chain and its key (TLS 1.2 at least)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        with Path(key).open("rb") as handle:  # the private key: refused if anyone may read it
            exposed = open_to_everyone(handle.fileno(), Path(key))
    except OSError as exc:
        raise ConfigError(
            [f"hl7.tls_key_file: cannot read {key}: {exc.strerror or type(exc).__name__}"]
        ) from None
    if exposed is not None:
        raise ConfigError([f"hl7.tls_key_file: {exposed}"])
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            [f"hl7.tls_cert_file: cannot load the certificate and key ({type(exc).__name__})"]
        ) from None
    return context


class Hl7Feed:
    """Receives HL7 messages (MLLP and/or files) and applies them (see the module doc)."""

    name = "hl7"

    def __init__(self, engine: Engine, apply: Hl7Apply, settings: Hl7Settings) -> None:
        self._engine = engine
        self._apply = apply
        self._settings = settings
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.receiver = Receiver(
            engine,
            source="mllp",
            default_charset=settings.default_charset,
            on_accepted=self._accepted,
        )
        self.listener: MllpListener | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def _accepted(self) -> None:
        # Called in the receiver's worker thread.
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def start(self, runner: JobRunner) -> None:
        """Bind the listener (a busy port is a `ConfigError` naming `hl7.port`) and start
        the apply loop and the file drop."""
        s = self._settings
        self._loop = asyncio.get_running_loop()
        if s.listen:
            tls = None
            if s.tls_cert_file is not None and s.tls_key_file is not None:
                tls = tls_context(s.tls_cert_file, s.tls_key_file)
            self.listener = MllpListener(
                self.receiver.handle,
                host=s.host,
                port=s.port,
                tls=tls,
                allowed_peers=s.networks(),
                max_message_bytes=s.max_message_bytes,
            )
            try:
                await self.listener.start()
            except OSError as exc:
                raise ConfigError(
                    [f"hl7.port: cannot listen on {s.host}:{s.port} ({exc.strerror or exc})"]
                ) from None
        self._tasks.append(asyncio.create_task(self._apply_loop(runner)))
        if s.files_directory is not None:
            drop = Hl7FileDrop(s.files_directory, s.files_glob, self.receiver)
            self._tasks.append(asyncio.create_task(self._files_loop(drop)))

    def wake(self) -> None:
        """Run the apply job now (after the run in progress, if any)."""
        self._wake.set()

    async def _apply_loop(self, runner: JobRunner) -> None:
        while not self._stopping:
            # Not `asyncio.wait_for`: on Python 3.11 it can swallow a cancellation that
            # arrives as the event is set, and the loop would then never end.
            waiter = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait([waiter], timeout=self._settings.apply_interval_seconds)
            finally:
                waiter.cancel()
            if self._stopping:
                return
            self._wake.clear()
            await runner.run_once(self._apply)

    async def _files_loop(self, drop: Hl7FileDrop) -> None:
        while not self._stopping:
            try:
                if await asyncio.to_thread(drop.scan_once):
                    self._wake.set()
            except Exception as exc:  # a bad file must not stop the feed
                log.error("hl7.files_failed", error=type(exc).__name__)
            await asyncio.sleep(self._settings.files_interval_seconds)

    async def stop(self) -> None:
        """Stop receiving first (unacknowledged messages are resent by their senders),
        then the loops; a message recorded but not applied is applied by the next start."""
        self._stopping = True
        if self.listener is not None:
            await self.listener.close()
        self._wake.set()
        if self._tasks:
            # The apply run in progress finishes its batch (bounded); the rest is cancelled.
            await asyncio.wait(self._tasks[:1], timeout=_STOP_GRACE_SECONDS)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await asyncio.to_thread(self.receiver.close)
