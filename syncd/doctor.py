"""`syncd doctor`: check config, database, API key and source, saying what is wrong plainly.

Each check returns a `Finding`; the CLI prints them and exits non-zero when one failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

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
from syncd.state.db import check_migrated


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
    findings.append(await asyncio.to_thread(_database, rt))
    findings.extend(await _api(rt))
    if rt.settings.patients.enabled:
        findings.append(await asyncio.to_thread(_source, rt))
    return findings


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
            return [Finding("api", False, f"cannot reach the Voxares API: {exc}")]
        except VoxaresError as exc:
            findings.append(Finding(f"api:{scope}", False, str(exc)))
            continue
        findings.append(Finding(f"api:{scope}", True, "the key works for this scope"))
    return findings


def _source(rt: Runtime) -> Finding:
    """Open the patient source and read its first row (header and mapping checked)."""
    try:
        source = build_source(rt.settings)
        rows = source.rows()
        first = next(rows, None)
        close = getattr(rows, "close", None)
        if close is not None:
            close()
    except (SourceError, SyncdError) as exc:
        return Finding("source", False, str(exc))
    detail = "readable; the mapped columns are present"
    if first is None:
        detail = "readable, but it has no rows"
    return Finding("source", True, detail)
