"""The status page over a seeded state database, on each backend: what it shows, what it
never shows (canary patient data), its charts' points, and its authentication."""

from __future__ import annotations

import base64
import re
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine
from starlette.applications import Starlette

from syncd.status_page import samples
from syncd.status_page.page import PageAccess, PageConfig, status_page_routes
from tests.status_page_data import (
    CANARY_ID,
    DEAD_EVENT_ID,
    NOW,
    SMS_KEY,
    canary_values,
    hours_ago,
    seed,
    seed_samples,
)

CONFIG_PATH = Path("/etc/syncd/config.toml")


def _app(engine: Engine, access: PageAccess | None = None) -> Starlette:
    config = PageConfig(
        freshness={"push_patients": timedelta(hours=2), "poll_submissions": timedelta(hours=2)},
        configured_sinks=("files", "hooks"),
        refresh_seconds=30,
        config_path=CONFIG_PATH,
        access=access or PageAccess(),
    )
    return Starlette(routes=status_page_routes(engine, config, now=lambda: NOW))


async def _get(app: Starlette, headers: dict[str, str] | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://page") as client:
        return await client.get("/", headers=headers or {})


@pytest.fixture
def seeded(state_engine: Engine) -> Engine:
    seed(state_engine, NOW)
    seed_samples(
        state_engine, hours_ago(NOW, 1, 1.1, 5, 30, 200), metric=samples.LAG, subject="form"
    )
    seed_samples(state_engine, hours_ago(NOW, 0.5, 2), metric=samples.PENDING, subject="files")
    seed_samples(state_engine, hours_ago(NOW, 3), metric=samples.PENDING, subject="hooks")
    return state_engine


def _figure(html: str, chart: str) -> tuple[int, int]:
    """A chart's stated point count and the dots its SVG draws."""
    found = re.search(rf'<figure id="chart-{chart}" data-points="(\d+)">(.*?)</figure>', html, re.S)
    assert found is not None, f"no chart {chart}"
    return int(found.group(1)), len(re.findall(r'<circle[^>]*class="dot ', found.group(2)))


async def test_page_shows_ids_counts_and_commands_never_patient_data(seeded: Engine) -> None:
    response = await _get(_app(seeded))
    assert response.status_code == 200
    html = response.text
    leaked = [value for value in canary_values() if value.lower() in html.lower()]
    assert not leaked, f"{len(leaked)} canary values on the page"
    # The ids an admin acts on are there, with the exact command that resolves each.
    assert CANARY_ID in html
    assert "EHR-BROKEN-3" in html
    assert "email: not a valid address" in html
    config = str(CONFIG_PATH)
    assert f"syncd messages resolve {SMS_KEY} --mark-sent --config {config}" in html
    assert f"syncd messages resolve {SMS_KEY} --resend --config {config}" in html
    assert f"syncd outbox retry --event-id {DEAD_EVENT_ID} --sink files --config {config}" in html
    assert 'class="sms-unknown"' in html
    assert 'class="dead-letter"' in html
    # The failing job first, its error shown; the verdict is critical.
    jobs = re.findall(r'<tr class="run" data-job="([^"]+)" data-outcome="([^"]+)"', html)
    assert jobs[0] == ("poll_submissions", "failed")
    assert [job for job, _ in jobs] == ["poll_submissions"] * 2 + ["push_patients"] * 2
    assert "VoxaresUnavailable: HTTP 503" in html
    assert 'id="verdict">CRITICAL<' in html


async def test_page_is_self_contained(seeded: Engine) -> None:
    """No script, no external reference, and a policy that forbids both."""
    response = await _get(_app(seeded))
    html = response.text
    assert "<script" not in html
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src" not in policy
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html)
    assert all(not ref.startswith(("http:", "https:", "//")) for ref in refs), refs
    assert re.search(r'<meta http-equiv="refresh" content="30">', html)


@pytest.mark.parametrize(
    ("chart", "points", "dots"),
    [
        # 24 h in 15-min buckets: samples 1 h and 1.1 h ago share one; 5 h ago; 30 h is out.
        ("lag-1d", 2, 2),
        # 7 days in 1-h buckets: 1 h and 1.1 h ago share one; 5 h; 30 h; 200 h is out.
        ("lag-7d", 3, 3),
        # Two sinks: files 0.5 h and 2 h ago, hooks 3 h ago.
        ("backlog-1d", 3, 3),
        ("backlog-7d", 3, 3),
    ],
)
async def test_charts_hold_one_point_per_bucket_with_samples(
    seeded: Engine, chart: str, points: int, dots: int
) -> None:
    html = (await _get(_app(seeded))).text
    assert _figure(html, chart) == (points, dots)


async def test_basic_auth(seeded: Engine) -> None:
    app = _app(seeded, PageAccess("basic", "admin:s3cret-pass"))
    refused = await _get(app)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Basic")
    assert CANARY_ID not in refused.text
    wrong = base64.b64encode(b"admin:wrong").decode()
    assert (await _get(app, {"Authorization": f"Basic {wrong}"})).status_code == 401
    right = base64.b64encode(b"admin:s3cret-pass").decode()
    assert (await _get(app, {"Authorization": f"Basic {right}"})).status_code == 200
    assert (await _get(app, {"Authorization": "Bearer admin:s3cret-pass"})).status_code == 401


async def test_bearer_auth(seeded: Engine) -> None:
    app = _app(seeded, PageAccess("bearer", "tok-123456"))
    refused = await _get(app)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    assert (await _get(app, {"Authorization": "Bearer nope"})).status_code == 401
    assert (await _get(app, {"Authorization": "Bearer tok-123456"})).status_code == 200


async def test_empty_database_renders(state_engine: Engine) -> None:
    """A fresh install: no runs, no samples, nothing to decide."""
    response = await _get(_app(state_engine))
    assert response.status_code == 200
    assert "no job has run yet" in response.text
    assert _figure(response.text, "lag-1d") == (0, 0)


def test_sampler_records_lag_and_backlog_and_prunes(state_engine: Engine) -> None:
    seed(state_engine, NOW)
    seed_samples(state_engine, hours_ago(NOW, 30, 1), metric=samples.LAG, subject="form")
    later = NOW + timedelta(minutes=2)
    stored = samples.sample_once(state_engine, retention=timedelta(hours=24), now=later)
    # The lag of the form stream, and the pending and oldest of the one sink with deliveries.
    assert stored == 3
    lag = samples.read_series(state_engine, samples.LAG, NOW - timedelta(days=7))
    assert [v for _, v in lag["form_submissions"]] == [120.0]
    assert [v for _, v in lag["form"]] == [1.0]  # the 30-h-old sample was pruned
    pending = samples.read_series(state_engine, samples.PENDING, NOW)
    assert pending == {"files": [(later, 0.0)]}  # its one delivery is dead, none pending


async def test_hl7_messages_are_counted_by_status_never_shown(seeded: Engine) -> None:
    """An HL7 feed's inbound messages appear as counts by status; a refused message's raw
    text (patient data, kept for an operator's `syncd hl7 show`) never reaches the page."""
    from sqlalchemy.orm import Session

    from syncd.state.models import Hl7Inbound

    raw = (
        b"MSH|^~\\&|EHR|CLINIC|||20261204||ADT^A08|c9|P|2.5\r"
        b"PID|1||X^^^CLINIC^MR||Zvonimirova^Canary"
    )
    with Session(seeded) as session, session.begin():
        for n, status in enumerate(("applied", "applied", "rejected")):
            session.add(
                Hl7Inbound(
                    source="mllp",
                    sender="EHR^CLINIC",
                    control_id=f"c{n}",
                    received_at=NOW,
                    status=status,
                    reason="no MSH-10" if status == "rejected" else None,
                    raw=raw if status == "rejected" else None,
                )
            )
    html = (await _get(_app(seeded))).text
    assert re.search(r"HL7 messages applied</th><td[^>]*>2<", html)
    assert re.search(r"HL7 messages rejected</th><td[^>]*>1<", html)
    assert "Zvonimirova" not in html
