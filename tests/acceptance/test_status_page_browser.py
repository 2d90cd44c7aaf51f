"""The status page in a real browser (headless Chromium), against a real daemon (`syncd
run`) and a served sandbox: it loads with no console error and no request elsewhere, its
charts hold the expected points, the quarantined row and the `unknown` SMS appear once the
sandbox has produced them, and a canary patient's data is nowhere in the HTML.

Screenshots: build/screenshots/ (a CI artifact)."""

from __future__ import annotations

import csv
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from syncd.sandbox.faults import FaultConfig, FaultRule
from syncd.state.db import make_engine, upgrade
from syncd.state.models import MessageRequest, QuarantinedRow
from syncd.status_page import samples
from tests.acceptance.conftest import Workspace, config_text
from tests.acceptance.daemon_process import free_port, running
from tests.browser import browser, require_chromium
from tests.status_page_data import CANARY, CANARY_ID, CANARY_SMS_TEXT, canary_values, seed_samples
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

HEADER = ("PatientID", "FirstName", "LastName", "MobilePhone", "Email", "BirthDate")
SMS_KEY = "browser-canary-sms"


def _export(path: Path) -> None:
    rows = [
        (
            CANARY_ID,
            CANARY["firstName"],
            CANARY["lastName"],
            "091 555 0142",
            CANARY["email"],
            "23.07.1961",
        ),
        ("EHR-000002", "Ana", "Horvat", "091 234 5678", "ana@example.org", "1980-01-02"),
        ("EHR-BROKEN-3", "Ivan", "Babić", "092 345 6789", "ivan.babic@", "1975-05-06"),
    ]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)


def _config(ws: Workspace, port: int) -> Path:
    text = config_text(base_url=ws.practice.sandbox.base_url, directory=ws.dir, submissions=True)
    text = text.replace("[health]\nenabled = false\n", f"[health]\nport = {port}\n")
    # A short read timeout: the sandbox's hung send turns `unknown` within seconds.
    text = text.replace("[voxares]\n", "[voxares]\nread_timeout = 3\nretry_attempts = 1\n")
    text += (
        "\n[messages]\nenabled = true\ninterval_seconds = 1\n"
        f'\n[outbox.sinks.files]\ntype = "file"\ndirectory = "{ws.dir.as_posix()}/outbox"\n'
        "\n[status_page]\nsample_interval_seconds = 5\nrefresh_seconds = 30\n"
    )
    ws.config.write_text(text, encoding="utf-8")
    return ws.config


@pytest.fixture
def daemon(workspace: Workspace, tmp_path: Path) -> Iterator[tuple[Workspace, str]]:
    """`syncd run` on the served sandbox with its status page on a free port; samples of
    an `archive` sink seeded in the past (the daemon never samples it: it has no deliveries),
    so its line's points are known."""
    require_chromium()
    port = free_port()
    _export(workspace.export)
    _config(workspace, port)
    engine = make_engine(f"sqlite:///{workspace.state_db}")
    try:
        upgrade(engine)
        now = datetime.now(UTC)
        # 24 h in 15-min buckets: 2 h and 6 h ago; 7 days in hours: also 50 h ago.
        past = [now - timedelta(hours=h) for h in (2, 6, 50)]
        seed_samples(engine, past, metric=samples.PENDING, subject="archive")
    finally:
        engine.dispose()
    notify = tmp_path / "notify"
    notify.mkdir()
    argv = [*_syncd(), "run", "--config", str(workspace.config)]
    with running(argv, env=workspace.env(), cwd=workspace.dir, notify_dir=notify) as d:
        d.wait_ready()
        d.wait_healthz(port)
        yield workspace, f"http://127.0.0.1:{port}/"
    workspace.practice.sandbox.admin.set_faults(None)


def _syncd() -> list[str]:
    from tests.acceptance.conftest import syncd_command

    return syncd_command()


def _count(ws: Workspace, query: object) -> int:
    engine = make_engine(f"sqlite:///{ws.state_db}", create=False)
    try:
        with Session(engine) as session:
            return int(session.scalar(query) or 0)  # type: ignore[call-overload]
    finally:
        engine.dispose()


def _page_html(url: str) -> str:
    return httpx.get(url, timeout=30).text


def test_page_loads_clean_with_charts(daemon: tuple[Workspace, str]) -> None:
    _ws, url = daemon
    wait_until(lambda: 'data-job="push_patients"' in _page_html(url), "a patient push run")
    wait_until(lambda: "form_submissions" in _page_html(url), "a lag sample", within=90)
    with browser("status_page_loads") as visit:
        response = visit.open(url)
        assert response.status == 200
        page = visit.page
        assert page.title().startswith("syncd: ")
        # The seeded `archive` line (series 0: series are sorted by sink name).
        assert page.locator("#chart-backlog-1d .serie-0 circle.dot").count() == 2
        assert page.locator("#chart-backlog-7d .serie-0 circle.dot").count() == 3
        for chart in ("lag-1d", "lag-7d", "backlog-1d", "backlog-7d"):
            figure = page.locator(f"#chart-{chart}")
            stated = int(figure.get_attribute("data-points") or -1)
            assert figure.locator("circle.dot").count() == stated
        assert page.locator("#chart-lag-1d circle.dot").count() >= 1  # the live lag
        assert page.locator("#jobs tr.run").count() >= 2
        assert visit.console_errors == []
        assert visit.page_errors == []
        assert visit.foreign_requests(url) == []
        assert visit.failed == []


def test_quarantine_and_unknown_sms_appear_without_canary_data(
    daemon: tuple[Workspace, str],
) -> None:
    ws, url = daemon
    wait_until(
        lambda: _count(ws, select(func.count()).select_from(QuarantinedRow)) == 1,
        "the broken row quarantined",
    )
    wait_until(lambda: 'data-job="push_patients"' in _page_html(url), "a patient push run")
    # The sandbox accepts the SMS, then never answers: the daemon cannot know, `unknown`.
    ws.practice.sandbox.admin.set_faults(
        FaultConfig(
            rules=[
                FaultRule(
                    method="POST",
                    path_prefix="/messages/send",
                    hang_rate=1.0,
                    hang_phase="after",
                    hang_seconds=30,
                )
            ]
        )
    )
    sent = subprocess.run(
        [
            *_syncd(),
            "messages",
            "send",
            "--provider-id",
            CANARY_ID,
            "--content",
            CANARY_SMS_TEXT,
            "--key",
            SMS_KEY,
            "--config",
            str(ws.config),
        ],
        env=ws.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert sent.returncode == 0, sent.stderr[-2000:]
    unknown = select(func.count()).where(
        MessageRequest.key == SMS_KEY, MessageRequest.state == "unknown"
    )
    wait_until(lambda: _count(ws, unknown) == 1, "the SMS in unknown", within=90)
    ws.practice.sandbox.admin.set_faults(None)
    with browser("status_page_decisions") as visit:
        visit.open(url)
        page = visit.page
        row = page.locator("#quarantine tr.quarantined")
        assert row.count() == 1
        assert row.first.get_attribute("data-row") == "EHR-BROKEN-3"
        assert "email" in row.first.inner_text()
        sms = page.locator(f'#unknown-sms tr.sms-unknown[data-key="{SMS_KEY}"]')
        assert sms.count() == 1
        expected = f"messages resolve {SMS_KEY} --mark-sent --config {ws.config}"
        assert expected in sms.inner_text()
        html = page.content()
        assert visit.console_errors == []
        assert visit.foreign_requests(url) == []
    raw = _page_html(url)
    for text in (html, raw):
        leaked = [v for v in canary_values() if v.lower() in text.lower()]
        assert not leaked, f"{len(leaked)} canary values on the page"
    assert CANARY_ID in raw  # ids are shown: the canary's absence above is meaningful
