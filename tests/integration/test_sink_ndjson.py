"""NdjsonFileSink on the real filesystem: lines, modes, fsync, rotation, crash repair."""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from syncd.sinks.base import DeadLetter, Delivered, EventEnvelope, Retry
from syncd.sinks.ndjson import NdjsonFileSink

DAY_ONE = datetime(2025, 5, 20, 23, 59, 0, tzinfo=UTC)


class Clock:
    """A settable clock for the sink's UTC-day rotation."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _event(number: int, **payload: Any) -> EventEnvelope:
    return EventEnvelope(
        event_id=f"evt-{number}",
        event_type="form_submission.updated",
        created_at=datetime(2025, 5, 20, 9, 0, tzinfo=UTC) + timedelta(seconds=number),
        payload={"n": number, **payload},
    )


def _lines(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def _files(directory: Path) -> list[str]:
    return sorted(os.listdir(directory), key=lambda name: (len(name), name))


@pytest.fixture
async def make_sink() -> AsyncIterator[Callable[..., NdjsonFileSink]]:
    """Builds sinks for a test and closes them afterwards."""
    sinks: list[NdjsonFileSink] = []

    def make(directory: Path, **options: Any) -> NdjsonFileSink:
        options.setdefault("clock", Clock(DAY_ONE))
        sink = NdjsonFileSink("archive", directory, **options)
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        await sink.aclose()


async def test_batches_append_one_json_line_per_event(tmp_path: Path, make_sink: Any) -> None:
    """Each event is one line equal to its to_json(); later batches append to the same file."""
    sink = make_sink(tmp_path / "out")
    first, second = [_event(1), _event(2)], [_event(3, city="Čakovec")]

    assert await sink.deliver(first) == [Delivered(), Delivered()]
    assert await sink.deliver(second) == [Delivered()]

    assert _files(tmp_path / "out") == ["events-20250520-1.ndjson"]
    lines = _lines(tmp_path / "out" / "events-20250520-1.ndjson")
    assert lines == [event.to_json() for event in first + second]


async def test_outcomes_are_reported_once_the_batch_is_on_disk(
    tmp_path: Path, make_sink: Any
) -> None:
    """`answered` gets every event's outcome once, by position, equal to what deliver
    returns (the batch is one write and one fsync)."""
    reported: list[tuple[int, Any]] = []
    events = [_event(1), _event(2, bad=float("nan")), _event(3)]
    outcomes = await make_sink(tmp_path).deliver(
        events, answered=lambda i, o: reported.append((i, o))
    )
    assert outcomes == [Delivered(), DeadLetter("payload is not JSON (ValueError)"), Delivered()]
    assert reported == list(enumerate(outcomes))


async def test_directory_is_0700_and_files_0600(tmp_path: Path, make_sink: Any) -> None:
    """A new directory (even nested) is created 0700 and the event file 0600."""
    directory = tmp_path / "a" / "b"
    await make_sink(directory).deliver([_event(1)])
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "events-20250520-1.ndjson").stat().st_mode) == 0o600


async def test_existing_loose_file_is_tightened_to_0600(tmp_path: Path, make_sink: Any) -> None:
    """A file someone created world-readable is made 0600 before patient data goes in."""
    path = tmp_path / "events-20250520-1.ndjson"
    path.write_text("")
    path.chmod(0o644)
    await make_sink(tmp_path).deliver([_event(1)])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_fsync_follows_the_batch_last_line(
    tmp_path: Path, make_sink: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is fsynced once per batch, after all of the batch's lines are written."""
    real_fsync = os.fsync
    synced: list[tuple[str, int]] = []

    def spy(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        synced.append((os.path.basename(target), os.fstat(fd).st_size))
        real_fsync(fd)

    sink = make_sink(tmp_path)
    await sink.deliver([_event(0)])  # creates the file (and fsyncs the directory)
    path = tmp_path / "events-20250520-1.ndjson"
    monkeypatch.setattr(os, "fsync", spy)

    await sink.deliver([_event(n) for n in range(1, 6)])

    assert synced == [(path.name, path.stat().st_size)]


async def test_size_rotation_never_splits_a_line(tmp_path: Path, make_sink: Any) -> None:
    """Files rotate before a line that would pass rotate_bytes; every file holds whole lines."""
    events = [_event(n, pad="x" * 60) for n in range(10)]
    line_size = len(json.dumps(events[0].to_json(), separators=(",", ":"))) + 1
    sink = make_sink(tmp_path, rotate_bytes=line_size * 3 + 10)

    assert await sink.deliver(events[:4]) == [Delivered()] * 4
    assert await sink.deliver(events[4:]) == [Delivered()] * 6

    names = _files(tmp_path)
    assert names == [f"events-20250520-{i}.ndjson" for i in (1, 2, 3, 4)]
    assert [len(_lines(tmp_path / name)) for name in names] == [3, 3, 3, 1]
    assert all((tmp_path / name).stat().st_size <= line_size * 3 + 10 for name in names)
    read_back = [line for name in names for line in _lines(tmp_path / name)]
    assert read_back == [event.to_json() for event in events]


async def test_line_larger_than_rotate_bytes_gets_a_file_of_its_own(
    tmp_path: Path, make_sink: Any
) -> None:
    """An oversized line is written whole into a fresh file rather than split."""
    sink = make_sink(tmp_path, rotate_bytes=200)
    await sink.deliver([_event(1), _event(2, big="y" * 500), _event(3)])
    names = _files(tmp_path)
    assert [len(_lines(tmp_path / name)) for name in names] == [1, 1, 1]
    assert _lines(tmp_path / names[1])[0]["data"]["big"] == "y" * 500


async def test_daily_rotation_follows_the_utc_day(tmp_path: Path, make_sink: Any) -> None:
    """A new UTC day starts a new file; local time past midnight, still UTC day one, does not."""
    clock = Clock(DAY_ONE)
    sink = make_sink(tmp_path, clock=clock)
    await sink.deliver([_event(1)])
    clock.now = datetime(2025, 5, 21, 1, 30, tzinfo=timezone(timedelta(hours=2)))  # 23:30 UTC
    await sink.deliver([_event(2)])
    clock.now = DAY_ONE + timedelta(minutes=1)  # 2025-05-21 00:00 UTC
    await sink.deliver([_event(3)])

    assert _files(tmp_path) == ["events-20250520-1.ndjson", "events-20250521-1.ndjson"]
    assert [line["id"] for line in _lines(tmp_path / "events-20250520-1.ndjson")] == [
        "evt-1",
        "evt-2",
    ]
    assert [line["id"] for line in _lines(tmp_path / "events-20250521-1.ndjson")] == ["evt-3"]


async def test_without_daily_rotation_the_file_spans_days(tmp_path: Path, make_sink: Any) -> None:
    """With rotate_daily off, a new day keeps appending to the current file."""
    clock = Clock(DAY_ONE)
    sink = make_sink(tmp_path, clock=clock, rotate_daily=False)
    await sink.deliver([_event(1)])
    clock.now = DAY_ONE + timedelta(days=3)
    await sink.deliver([_event(2)])
    assert _files(tmp_path) == ["events-20250520-1.ndjson"]


async def test_restart_continues_the_newest_file_of_the_day(tmp_path: Path, make_sink: Any) -> None:
    """A new sink (daemon restart) appends to today's highest-numbered file."""
    (tmp_path / "events-20250519-7.ndjson").write_text("")
    (tmp_path / "events-20250520-1.ndjson").write_text('{"id":"old-1"}\n')
    (tmp_path / "events-20250520-2.ndjson").write_text('{"id":"old-2"}\n')
    (tmp_path / "notes.txt").write_text("not ours")

    await make_sink(tmp_path).deliver([_event(1)])

    assert [line["id"] for line in _lines(tmp_path / "events-20250520-2.ndjson")] == [
        "old-2",
        "evt-1",
    ]
    assert (tmp_path / "events-20250520-1.ndjson").read_text() == '{"id":"old-1"}\n'


async def test_torn_last_line_from_a_crash_is_cut_before_appending(
    tmp_path: Path, make_sink: Any
) -> None:
    """A half-written last line (crash mid-write) is removed, so every line stays JSON."""
    path = tmp_path / "events-20250520-1.ndjson"
    path.write_text('{"id":"kept"}\n{"id":"torn","data":{"na')
    with capture_logs() as logs:
        await make_sink(tmp_path).deliver([_event(1)])
    assert [line["id"] for line in _lines(path)] == ["kept", "evt-1"]
    assert any(entry["event"] == "sink.ndjson.torn_tail_cut" for entry in logs)


async def test_file_of_only_a_torn_line_is_emptied(tmp_path: Path, make_sink: Any) -> None:
    """A file holding nothing but a partial line is cut to empty, then appended to."""
    path = tmp_path / "events-20250520-1.ndjson"
    path.write_text('{"id":"to' + "r" * 70_000)  # longer than one backward read
    await make_sink(tmp_path).deliver([_event(1)])
    assert [line["id"] for line in _lines(path)] == ["evt-1"]


async def test_unserialisable_event_is_dead_lettered_and_the_rest_written(
    tmp_path: Path, make_sink: Any
) -> None:
    """An event whose payload is not JSON is DeadLetter; its batch-mates are still written."""
    sink = make_sink(tmp_path)
    outcomes = await sink.deliver([_event(1), _event(2, bad=float("inf")), _event(3)])
    assert outcomes == [Delivered(), DeadLetter("payload is not JSON (ValueError)"), Delivered()]
    assert [line["id"] for line in _lines(tmp_path / "events-20250520-1.ndjson")] == [
        "evt-1",
        "evt-3",
    ]


async def test_unusable_directory_is_a_retry_then_recovers(tmp_path: Path, make_sink: Any) -> None:
    """When the directory cannot be created the batch is Retry; once it can, delivery resumes."""
    blocked = tmp_path / "out"
    blocked.write_text("a file where the directory should be")
    sink = make_sink(blocked)

    outcomes = await sink.deliver([_event(1), _event(2)])
    assert outcomes == [Retry("FileExistsError EEXIST")] * 2

    blocked.unlink()
    assert await sink.deliver([_event(1), _event(2)]) == [Delivered()] * 2


@pytest.fixture
def file_size_limit() -> Iterator[Callable[[int], None]]:
    """Sets RLIMIT_FSIZE (writes past it fail with EFBIG) and restores it afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def limit(size: int) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))

    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)


async def test_failed_write_mid_batch_is_rolled_back(
    tmp_path: Path, make_sink: Any, file_size_limit: Callable[[int], None]
) -> None:
    """A write error halfway through a batch truncates the batch's lines and answers Retry."""
    sink = make_sink(tmp_path)
    await sink.deliver([_event(0)])
    path = tmp_path / "events-20250520-1.ndjson"
    before = path.read_bytes()
    batch = [_event(n, pad="z" * 4000) for n in range(1, 4)]

    with capture_logs():  # keep log output off pytest's capture files while limited
        file_size_limit(len(before) + 6000)  # room for one padded line, not two
        outcomes = await sink.deliver(batch)
        file_size_limit(resource.RLIM_INFINITY)

    assert outcomes == [Retry("OSError EFBIG")] * 3
    assert path.read_bytes() == before
    assert await sink.deliver(batch) == [Delivered()] * 3
    assert [line["id"] for line in _lines(path)] == ["evt-0", "evt-1", "evt-2", "evt-3"]
