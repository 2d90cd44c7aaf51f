"""The file source: `*.hl7` files dropped in a directory, single messages or batches.

A file may hold one message, several, or FHS/BHS batches (the file and batch header and
trailer segments are dropped; each MSH starts a message). Every message goes through the
receive path (`Receiver.receive`, without a socket: the ACK is not sent anywhere), and
the file is then moved to `processed/` beside it. A crash before the move reads the file
again next time: the messages already recorded are duplicates (same sender and MSH-10)
and are not stored twice.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import structlog

from syncd.hl7.receiver import Receiver
from syncd.testing_hooks import step

log = structlog.get_logger(__name__)

PROCESSED: Final = "processed"
_BATCH_SEGMENTS: Final = (b"FHS", b"BHS", b"BTS", b"FTS")
_LINE: Final = re.compile(rb"\r\n|\n|\r")


def split_messages(data: bytes) -> Iterator[bytes]:
    """Each message of a file's bytes (segments joined by CR), batch envelopes dropped."""
    current: list[bytes] = []
    for segment in _LINE.split(data.lstrip(b"\xef\xbb\xbf")):
        if not segment.strip():
            continue
        head = segment[:3]
        if head in _BATCH_SEGMENTS:
            continue
        if head == b"MSH" and current:
            yield b"\r".join(current) + b"\r"
            current = []
        current.append(segment)
    if current:
        yield b"\r".join(current) + b"\r"


class Hl7FileDrop:
    """Reads the files matching `glob` in `directory` through the receive path."""

    def __init__(self, directory: Path, glob: str, receiver: Receiver) -> None:
        self._directory = directory
        self._glob = glob
        self._receiver = receiver

    def scan_once(self) -> int:
        """Record every message of every waiting file; return how many files were done."""
        done = 0
        processed = self._directory / PROCESSED
        for path in sorted(self._directory.glob(self._glob)):
            if not path.is_file():
                continue
            messages = 0
            for message in split_messages(path.read_bytes()):
                self._receiver.receive(message)
                messages += 1
            step("hl7.file_before_move")
            processed.mkdir(exist_ok=True)
            os.replace(path, processed / path.name)
            log.info("hl7.file_read", file=path.name, messages=messages)
            done += 1
        return done
