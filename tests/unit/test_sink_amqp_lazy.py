"""The AMQP sink keeps aio-pika optional: nothing imports it until a batch is published."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import asyncio, sys
from syncd.sinks.amqp import AmqpSink
sink = AmqpSink("bus", "amqp://guest:guest@127.0.0.1:1/", "events", "k")
assert asyncio.run(sink.deliver([])) == []
asyncio.run(sink.aclose())
print("aio_pika" in sys.modules)
"""


def test_aio_pika_is_not_imported_by_loading_or_an_empty_batch() -> None:
    """Importing the module, building a sink and an empty batch never import aio_pika."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip().splitlines()[-1] == "False"  # after any log lines
