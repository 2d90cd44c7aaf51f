"""A sink that appends events to local newline-delimited JSON files.

One line per event (`envelope.to_json()`), files named `events-YYYYMMDD-N.ndjson` in one
directory (created 0700, files 0600: the lines carry patient data). A batch counts as
delivered only after fsync. Files rotate before a line that would take the file over
`rotate_bytes`, and at a new UTC day; a line is never split across files, so every file
is valid NDJSON on its own.

Crash safety: a write that fails mid-batch is rolled back (truncated), and a torn last
line left by a crash is cut off when the file is next opened; the events of that batch
were never reported delivered, so they come again. Readers must accept duplicates of an
event id (at-least-once), as with every sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Final

import structlog

from syncd.exceptions import ConfigError
from syncd.sinks.base import (
    Answered,
    DeadLetter,
    Delivered,
    DeliveryOutcome,
    EventEnvelope,
    Retry,
    attempts_for,
    encode_event,
    outcome_counts,
    tell,
)

log = structlog.get_logger(__name__)

FILE_MODE: Final = 0o600
DIRECTORY_MODE: Final = 0o700
DEFAULT_ROTATE_BYTES: Final = 64 * 1024 * 1024
_FILE_NAME = re.compile(r"events-(\d{8})-(\d+)\.ndjson")
_OPEN_FLAGS: Final = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
_TAIL_CHUNK: Final = 64 * 1024


def file_name(day: date, index: int) -> str:
    """The file for the `index`-th file (from 1) started on UTC `day`."""
    return f"events-{day:%Y%m%d}-{index}.ndjson"


def _utc_now() -> datetime:
    return datetime.now(UTC)


class NdjsonFileSink:
    """Appends each batch to the current NDJSON file and fsyncs it."""

    def __init__(
        self,
        name: str,
        directory: str | os.PathLike[str],
        *,
        rotate_bytes: int = DEFAULT_ROTATE_BYTES,
        rotate_daily: bool = True,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if rotate_bytes < 1:
            raise ConfigError([f"sink {name}: rotate_bytes must be >= 1"])
        self._name = name
        self._clock = clock
        self._files = _FileRotation(name, Path(directory), rotate_bytes, rotate_daily)

    @property
    def name(self) -> str:
        """The configured sink name."""
        return self._name

    def __repr__(self) -> str:
        return f"NdjsonFileSink(name={self._name!r})"

    async def deliver(
        self,
        events: Sequence[EventEnvelope],
        *,
        attempts: Sequence[int] | None = None,
        answered: Answered | None = None,
    ) -> list[DeliveryOutcome]:
        """Append one line per event and fsync; all Delivered, or all Retry on an OS error
        (reported to `answered` once the fsync is done: the batch is one write)."""
        attempts_for(events, attempts)  # only checks the lengths: files do not refuse events
        outcomes: list[DeliveryOutcome] = [Delivered()] * len(events)
        lines: list[bytes] = []
        written: list[int] = []
        for position, event in enumerate(events):
            try:
                lines.append((encode_event(event) + "\n").encode())
                written.append(position)
            except (TypeError, ValueError) as exc:
                outcomes[position] = DeadLetter(f"payload is not JSON ({type(exc).__name__})")
        if lines:
            day = self._clock().astimezone(UTC).date()
            try:
                await asyncio.to_thread(self._files.append, lines, day)
            except OSError as exc:
                code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
                failed = Retry(f"{type(exc).__name__} {code}")
                for position in written:
                    outcomes[position] = failed
        for position, outcome in enumerate(outcomes):
            tell(answered, position, outcome)
        log.info("sink.batch", sink=self._name, kind="ndjson", **outcome_counts(outcomes))
        return outcomes

    async def aclose(self) -> None:
        """Close the current file."""
        await asyncio.to_thread(self._files.close)


class _FileRotation:
    """The synchronous file work, run in a worker thread; one batch at a time.

    A thread lock (not an asyncio one) guards it, because a cancelled `deliver` leaves its
    worker thread running and the next batch must still wait for it.
    """

    def __init__(self, sink: str, directory: Path, rotate_bytes: int, rotate_daily: bool):
        self._sink = sink
        self._directory = directory
        self._rotate_bytes = rotate_bytes
        self._rotate_daily = rotate_daily
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._day: date | None = None
        self._size = 0

    def append(self, lines: list[bytes], day: date) -> None:
        """Write the lines (rotating between lines as needed), then fsync every file
        written; on an OSError, truncate what this batch wrote and re-raise."""
        with self._lock:
            # (path, size before this batch) for every file this batch wrote to.
            touched: list[tuple[Path, int]] = []
            try:
                for line in lines:
                    fd = self._file_for(day, len(line))
                    if not touched or touched[-1][0] != self._path:
                        assert self._path is not None
                        touched.append((self._path, self._size))
                    _write_all(fd, line)
                    self._size += len(line)
                if self._fd is not None:
                    os.fsync(self._fd)
            except OSError:
                self._roll_back(touched)
                raise

    def close(self) -> None:
        """Close the open file, if any."""
        with self._lock:
            self._close_current()

    def _file_for(self, day: date, line_size: int) -> int:
        """The descriptor to write the next line to, rotating first when due."""
        if self._fd is None:
            self._open_latest(day)
        elif self._rotate_daily and day != self._day:
            self._rotate(day)
        if self._size > 0 and self._size + line_size > self._rotate_bytes:
            self._rotate(day)
        assert self._fd is not None
        return self._fd

    def _rotate(self, day: date) -> None:
        # The finished file is part of this batch's durability: fsync before closing.
        assert self._fd is not None
        os.fsync(self._fd)
        previous = self._path
        self._close_current()
        self._open(day, self._last_index(day) + 1)
        log.info(
            "sink.ndjson.rotated",
            sink=self._sink,
            closed=previous.name if previous else None,
            opened=self._path.name if self._path else None,
        )

    def _open_latest(self, day: date) -> None:
        """At start: continue the newest file (today's, when rotating daily) or start one."""
        self._ensure_directory()
        found = self._existing()
        if self._rotate_daily:
            found = [(d, i) for d, i in found if d == day]
        if found:
            latest_day, latest_index = max(found)
            self._open(latest_day, latest_index)
        else:
            self._open(day, 1)

    def _open(self, day: date, index: int) -> None:
        self._ensure_directory()
        path = self._directory / file_name(day, index)
        created = not path.exists()
        fd = os.open(path, _OPEN_FLAGS, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # also tightens a file someone else created
            size = _cut_torn_tail(fd)
            if created:
                _fsync_directory(self._directory)
        except OSError:
            os.close(fd)
            raise
        self._fd, self._path, self._day, self._size = fd, path, day, size

    def _existing(self) -> list[tuple[date, int]]:
        found = []
        for entry in os.listdir(self._directory):
            match = _FILE_NAME.fullmatch(entry)
            if match:
                try:
                    day = datetime.strptime(match.group(1), "%Y%m%d").date()
                except ValueError:
                    continue
                found.append((day, int(match.group(2))))
        return found

    def _last_index(self, day: date) -> int:
        return max((i for d, i in self._existing() if d == day), default=0)

    def _ensure_directory(self) -> None:
        if not self._directory.is_dir():
            self._directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
            os.chmod(self._directory, DIRECTORY_MODE)  # mkdir's mode is masked by umask

    def _close_current(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _roll_back(self, touched: list[tuple[Path, int]]) -> None:
        """Best effort: remove this batch's bytes so a retry does not duplicate lines.

        The file is closed so the next batch reopens it and re-reads its real size.
        """
        with contextlib.suppress(OSError):
            self._close_current()
        for path, size in touched:
            try:
                os.truncate(path, size)
            except OSError:
                # Left for `_cut_torn_tail` or, for whole lines, for readers' dedupe.
                log.warning("sink.ndjson.rollback_failed", sink=self._sink, file=path.name)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _cut_torn_tail(fd: int) -> int:
    """Truncate a last line that lacks its newline (a crash mid-write); return the size."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    end = size
    keep = 0
    while end > 0:
        start = max(0, end - _TAIL_CHUNK)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            keep = start + newline + 1
            break
        end = start
    os.ftruncate(fd, keep)
    os.fsync(fd)
    log.warning("sink.ndjson.torn_tail_cut", bytes=size - keep)
    return keep


def _fsync_directory(directory: Path) -> None:
    """Make a new file's directory entry durable too."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
