"""The FHIR benchmarks' child processes.

`python -m bench.fhir_child serve N`: the fixture FHIR server with N synthetic patients on a
free port, in this process (so that it does not share the reader's interpreter lock); prints
`listening http://127.0.0.1:PORT` and serves until killed.

`python -m bench.fhir_child read-bulk PATH`: one read of a Bulk NDJSON export; prints
`{"rows": ..., "problems": ..., "seconds": ..., "maxrss_kb": ...}` with this process's own
peak RSS (`VmHWM`, see bench.rss_child).
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.rss_child import peak_rss_kb
from syncd.logging import configure_logging

SYSTEM = "urn:oid:1.2.36.146.595.217.0.1"


def patient(number: int) -> dict[str, Any]:
    """A valid synthetic Patient (mobile, email, birth date, two names, an address)."""
    return {
        "resourceType": "Patient",
        "id": f"p{number}",
        "meta": {"versionId": "1"},
        "identifier": [
            {"system": SYSTEM, "value": f"MRN-{number:08d}", "use": "usual"},
            {"system": "http://hl7.org/fhir/sid/us-ssn", "value": f"000-00-{number % 10000:04d}"},
        ],
        "active": number % 50 != 0,
        "name": [
            {"use": "official", "family": f"Family{number}", "given": ["Given", "Middle"]},
            {"use": "nickname", "given": [f"Nick{number % 100}"]},
        ],
        "telecom": [
            {"system": "phone", "value": f"+38591{number % 10_000_000:07d}", "use": "mobile"},
            {"system": "email", "value": f"p{number}@example.org", "use": "home"},
        ],
        "gender": "female" if number % 2 else "male",
        "birthDate": f"19{50 + number % 50:02d}-{1 + number % 12:02d}-{1 + number % 28:02d}",
        "address": [{"use": "home", "line": [f"{number} Main St"], "city": "Zagreb"}],
    }


def serve(count: int) -> None:
    import uvicorn

    from syncd.sandbox.fhir_server import FhirFixture
    from syncd.sandbox.server import bind_socket

    fixture = FhirFixture(max_page_size=1000)
    stamp = datetime.now(UTC) - timedelta(days=1)
    for number in range(count):
        fixture.put(patient(number), at=stamp + timedelta(milliseconds=number))
    sock = bind_socket("127.0.0.1", 0)
    print(f"listening http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(fixture.app(), log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


def read_bulk(path: str) -> None:
    from syncd.sources.fhir_bulk import BulkNdjsonSource

    started = time.perf_counter()
    rows = problems = 0
    for row in BulkNdjsonSource("bench-bulk", path, identifier_system=SYSTEM).rows():
        rows += 1
        problems += row.problem is not None
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {"rows": rows, "problems": problems, "seconds": seconds, "maxrss_kb": peak_rss_kb()}
        )
    )


def main() -> None:
    configure_logging("WARNING", "json")
    mode, argument = sys.argv[1], sys.argv[2]
    if mode == "serve":
        serve(int(argument))
    elif mode == "read-bulk":
        read_bulk(argument)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
