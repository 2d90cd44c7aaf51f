"""`syncd doctor` on what it used to call ok (issue 11, item 9): the template's placeholder
webhook and secret, sinks that cannot be reached, and an export in the wrong encoding."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from syncd.demo_data import write_sample_export
from syncd.examples import example_config
from tests.acceptance.conftest import Workspace

WIDE = "250"
PATIENTS = 30


@pytest.fixture
def installed(workspace: Workspace) -> Workspace:
    """A workspace with a sample export (UTF-8) and a migrated state database."""
    write_sample_export(workspace.export, PATIENTS)
    assert workspace.run("db", "upgrade").returncode == 0
    return workspace


@pytest.fixture
def listening() -> Iterator[int]:
    """A loopback port something listens on (a receiver that accepts connections)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def doctor(ws: Workspace, extra: str = "") -> tuple[int, dict[str, str]]:
    """Run doctor with `extra` config appended: its exit code and {check: line}."""
    ws.write_config(extra=extra)
    result = ws.run("doctor", env=ws.env(COLUMNS=WIDE))
    lines = {}
    for line in result.stdout.splitlines():
        check = line.split()[1].rstrip(":")
        lines[check] = line
    return result.returncode, lines


def template_webhook() -> tuple[str, str]:
    """The webhook URL and secret the shipped config template carries as examples."""
    template = example_config()
    url = re.search(r'\burl = "(https://[^"]*example[^"]*)"', template)
    secret = re.search(r"(whsec_[A-Za-z0-9+/=]+)", template)
    assert url is not None
    assert secret is not None
    return url.group(1), secret.group(1)


def test_the_templates_placeholder_webhook_fails_doctor(installed: Workspace) -> None:
    """The template's example URL and sample secret are named as placeholders (no secret
    printed), and doctor exits 1."""
    url, secret = template_webhook()
    code, lines = doctor(
        installed, f'\n[outbox.sinks.crm]\ntype = "webhook"\nurl = "{url}"\nsecret = "{secret}"\n'
    )
    assert code == 1
    line = lines["sink:crm"]
    assert line.startswith("FAIL sink:crm: outbox.sinks.crm.url: ")
    assert "the template's example" in line
    assert "outbox.sinks.crm.secret: the template's sample secret" in line
    assert secret not in line


def test_a_real_looking_url_with_the_sample_secret_still_fails(
    installed: Workspace, listening: int
) -> None:
    """Only the secret left from the template: that alone fails the sink."""
    _, secret = template_webhook()
    code, lines = doctor(
        installed,
        f'\n[outbox.sinks.crm]\ntype = "webhook"\nurl = "http://127.0.0.1:{listening}/hook"\n'
        f'secret = "{secret}"\n',
    )
    assert code == 1
    assert lines["sink:crm"].startswith("FAIL sink:crm: outbox.sinks.crm.secret: ")


def test_sinks_are_reached_without_sending_anything(
    installed: Workspace, listening: int, tmp_path: Path
) -> None:
    """A listening receiver and a writable directory are ok; a closed port fails naming
    host and port, never the URL's path or token."""
    secret = "whsec_Q2xpbmljT3duU2VjcmV0Rm9yVGhpc1JlY2VpdmVy"
    refused = closed_port()
    code, lines = doctor(
        installed,
        f'\n[outbox.sinks.crm]\ntype = "webhook"\nurl = "http://127.0.0.1:{listening}/hook"\n'
        f'secret = "{secret}"\n'
        f'\n[outbox.sinks.gone]\ntype = "webhook"\n'
        f'url = "http://127.0.0.1:{refused}/hook?token=s3cr3tT0ken"\nsecret = "{secret}"\n'
        f'\n[outbox.sinks.archive]\ntype = "file"\ndirectory = "{tmp_path}/events/new"\n',
    )
    assert code == 1
    assert lines["sink:crm"].startswith(f"ok   sink:crm: http://127.0.0.1:{listening} is reachable")
    assert lines["sink:gone"] == (
        f"FAIL sink:gone: cannot reach http://127.0.0.1:{refused} (Connection refused)"
    )
    assert lines["sink:archive"].startswith("ok   sink:archive: ")
    assert not (tmp_path / "events").exists()  # doctor creates nothing
    assert all(line.startswith("ok") for check, line in lines.items() if check != "sink:gone")


def test_an_amqp_broker_is_logged_in_to(installed: Workspace, rabbitmq_url: str) -> None:
    """A broker with the right credentials is ok; a wrong password fails, not printed."""
    parts = urlsplit(rabbitmq_url)
    wrong = urlunsplit(parts._replace(netloc=f"guest:Wr0ngPassw0rd@{parts.hostname}:{parts.port}"))
    code, lines = doctor(
        installed,
        f'\n[outbox.sinks.bus]\ntype = "amqp"\nurl = "{rabbitmq_url}"\n'
        f'\n[outbox.sinks.badbus]\ntype = "amqp"\nurl = "{wrong}"\n',
    )
    assert code == 1
    assert lines["sink:bus"].startswith("ok   sink:bus: amqp://127.0.0.1:5672: logged in")
    assert lines["sink:badbus"].startswith("FAIL sink:badbus: cannot log in at amqp://")
    assert "Wr0ngPassw0rd" not in lines["sink:badbus"]


def test_a_windows_1250_export_fails_the_source_check(installed: Workspace) -> None:
    """An export written in cp1250 while utf-8 is configured fails, naming the setting and
    the line of the first undecodable byte; the same export in UTF-8 is ok."""
    code, lines = doctor(installed)
    assert code == 0, lines
    assert "decodes as utf-8-sig" in lines["source"]
    text = installed.export.read_text(encoding="utf-8")
    first_bad = next(n for n, line in enumerate(text.splitlines(), 1) if not line.isascii())
    installed.export.write_bytes(text.encode("cp1250"))
    code, lines = doctor(installed)
    assert code == 1
    assert lines["source"].startswith(
        f"FAIL source: patients.source.encoding: ehr-export.csv is not utf-8-sig (first "
        f"undecodable byte on line {first_bad})"
    )
    assert "cp1250" in lines["source"]


def test_an_unreachable_proxy_is_named_by_the_api_check(installed: Workspace) -> None:
    """With HTTPS_PROXY set, an API that cannot be reached is reported with the proxy it
    was reached through, so the admin knows which hop to look at."""
    installed.write_config()
    config = installed.config.read_text(encoding="utf-8")
    real_looking = "https://api.voxares.test/api/v1/integration"
    installed.config.write_text(
        config.replace(installed.practice.sandbox.base_url, real_looking), encoding="utf-8"
    )
    port = closed_port()
    proxy = f"http://127.0.0.1:{port}"
    result = installed.run("doctor", env=installed.env(COLUMNS=WIDE, HTTPS_PROXY=proxy))
    assert result.returncode != 0
    api = [line for line in result.stdout.splitlines() if " api" in line]
    assert api == [
        f"FAIL api: cannot reach the Voxares API through the proxy 127.0.0.1:{port} "
        "(HTTPS_PROXY): The request did not complete (ConnectError). call=GET /patients"
    ]


def test_a_proxy_that_is_not_an_http_url_stops_start_up(installed: Workspace) -> None:
    """HTTPS_PROXY=socks5://... is refused at start-up in one line naming the variable."""
    installed.write_config()
    result = installed.run("doctor", env=installed.env(HTTPS_PROXY="socks5://proxy.lan:1080"))
    assert result.returncode == 78
    assert result.stderr.strip().splitlines() == [
        "config error: HTTPS_PROXY must be an http://host:port URL"
    ]
