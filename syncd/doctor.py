"""`syncd doctor`: check config, database, API key, sinks and source, saying what is wrong
plainly.

Each check returns a `Finding`; the CLI prints them and exits non-zero when one failed. The
source check decodes every file of a CSV export with the configured encoding: a Windows-1250
export read as UTF-8 passes a header check and then quarantines most of its rows.
"""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from syncd.compose import Runtime, build_source
from syncd.exceptions import (
    DatabaseNotMigrated,
    Forbidden,
    SourceError,
    SyncdError,
    Unauthorized,
    VoxaresError,
    VoxaresTransportError,
)
from syncd.http_proxy import route_note
from syncd.sink_checks import check_sinks
from syncd.state.db import check_migrated

_CHUNK: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class Finding:
    """One check's verdict."""

    check: str
    ok: bool
    detail: str
    # An ok that deserves a second look (shown as WARN; the exit code stays 0).
    warning: bool = False


async def diagnose(rt: Runtime) -> list[Finding]:
    """Run every check against a built runtime."""
    findings = [Finding("config", True, "configuration is valid")]
    exposed = rt.settings.health.exposure_warning()
    if exposed:
        findings.append(Finding("health", True, exposed, warning=True))
    s = rt.settings
    page_exposed = s.status_page.exposure_warning(s.health.host, health_enabled=s.health.enabled)
    if page_exposed:
        findings.append(Finding("status_page", True, page_exposed, warning=True))
    findings.append(await asyncio.to_thread(_database, rt))
    findings.extend(await _api(rt))
    findings.extend(await _sinks(rt))
    if rt.settings.patients.enabled:
        findings.append(await asyncio.to_thread(_source, rt))
    if rt.settings.hl7.enabled:
        findings.append(_hl7_listener(rt))
    return findings


def _hl7_listener(rt: Runtime) -> Finding:
    """The MLLP port can be bound now (a running daemon holds it: then it is in use)."""
    import socket

    h = rt.settings.hl7
    if not h.listen:
        return Finding("hl7", True, "listener off (files only)")
    try:
        infos = socket.getaddrinfo(h.host, h.port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:
        return Finding(
            "hl7",
            False,
            f"cannot listen on {h.host}:{h.port} ({exc.strerror or type(exc).__name__}); "
            "another process (or a running syncd) holds it: set hl7.port",
        )
    return Finding("hl7", True, f"MLLP port {h.host}:{h.port} is free")


async def _sinks(rt: Runtime) -> list[Finding]:
    """Every outbox sink: not the template's example, and reachable."""
    from syncd.examples import example_config

    verdicts = await check_sinks(rt.settings, example_config())
    return [Finding(f"sink:{v.sink}", v.ok, v.detail) for v in verdicts]


def _database(rt: Runtime) -> Finding:
    try:
        check_migrated(rt.engine)
    except DatabaseNotMigrated as exc:
        return Finding("database", False, str(exc))
    except SyncdError as exc:
        return Finding("database", False, f"cannot open the state database: {exc}")
    except Exception as exc:
        return Finding("database", False, f"cannot open the state database ({type(exc).__name__})")
    return Finding("database", True, "reachable and at the current schema revision")


async def _api(rt: Runtime) -> list[Finding]:
    """Reach the API with the key and try one cheap call per scope the jobs need."""
    s = rt.settings
    probes: list[tuple[str, Callable[[], Awaitable[object]]]] = []
    if s.patients.enabled or s.messages.enabled:
        probes.append(("patients", lambda: rt.client.list_patients(page_size=1)))
    if s.submissions.enabled:
        probes.append(("form-submissions", lambda: rt.client.list_form_submissions(page_size=1)))
    if s.content.enabled or s.messages.enabled:
        probes.append(("content", lambda: rt.client.list_practice_templates(page_size=1)))
    findings = []
    for scope, call in probes:
        try:
            await call()
        except Unauthorized:
            return [
                Finding(
                    "api",
                    False,
                    "the API answered 401: the API key is wrong, revoked or not for this "
                    "environment (check voxares.api_key_file / SYNCD_VOXARES__API_KEY and "
                    "voxares.base_url)",
                )
            ]
        except Forbidden:
            findings.append(
                Finding(
                    f"api:{scope}",
                    False,
                    f"the API answered 403: the key lacks the '{scope}' scope; give it that "
                    "scope in Voxares (Settings > API Keys) or disable the job that needs it",
                )
            )
            continue
        except VoxaresTransportError as exc:
            route = route_note(s.voxares.base_url)
            return [Finding("api", False, f"cannot reach the Voxares API{route}: {exc}")]
        except VoxaresError as exc:
            findings.append(Finding(f"api:{scope}", False, str(exc)))
            continue
        findings.append(Finding(f"api:{scope}", True, "the key works for this scope"))
    return findings


def _source(rt: Runtime) -> Finding:
    """Open the patient source and read its first row (header and mapping checked)."""
    config = rt.settings.patients.source
    if config is not None and config.type == "fhir":
        return _fhir_server(rt)
    try:
        source = build_source(rt.settings)
        rows = source.rows()
        first = next(rows, None)
        close = getattr(rows, "close", None)
        if close is not None:
            close()
    except (SourceError, SyncdError) as exc:
        return Finding("source", False, str(exc))
    files = getattr(source, "files", None)
    if config is not None and config.type == "csv" and files is not None:
        for path in files():
            problem = decode_problem(Path(path), config.encoding)
            if problem is not None:
                return Finding("source", False, problem)
    detail = "readable; the mapped columns are present"
    if config is not None and config.type == "fhir-bulk":
        detail = "readable NDJSON; the first resource mapped"
    if config is not None and config.type == "csv":
        detail += f"; every file decodes as {config.encoding}"
    if first is None:
        detail = "readable, but it has no rows"
    return Finding("source", True, detail)


def _fhir_server(rt: Runtime) -> Finding:
    """A FHIR server source: reachable, its CapabilityStatement lists Patient search, and
    a one-patient search passes with the credentials (no full read is started)."""
    from syncd.sources.fhir import FhirPatientSource
    from syncd.sources.fhir_doctor import check_fhir_server

    try:
        source = build_source(rt.settings)
    except SyncdError as exc:
        return Finding("source", False, str(exc))
    assert isinstance(source, FhirPatientSource)
    ok, detail = check_fhir_server(source)
    return Finding("source", ok, detail)


def decode_problem(path: Path, encoding: str) -> str | None:
    """Why `path` does not decode as `encoding` (naming the line of the first bad byte), or
    None when all of it does. Reads the file in chunks; quotes no content."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    lines_before = 0
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as exc:
                    line = lines_before + chunk.count(b"\n", 0, max(exc.start, 0)) + 1
                    return _encoding_advice(path, encoding, line)
                lines_before += chunk.count(b"\n")
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return _encoding_advice(path, encoding, lines_before + 1)
    except OSError as exc:
        return f"{path.name}: cannot be read ({exc.strerror or type(exc).__name__})"
    return None


def _encoding_advice(path: Path, encoding: str, line: int) -> str:
    return (
        f"patients.source.encoding: {path.name} is not {encoding} (first undecodable byte "
        f"on line {line}); its rows would be quarantined: set encoding to the export's, "
        'e.g. "cp1250" for a Windows export in Central Europe, "cp1252" in Western Europe'
    )
