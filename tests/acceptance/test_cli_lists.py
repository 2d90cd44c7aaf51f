"""The list commands as an operator and a script use them (issue 11, items 11-13): whole ids
that the next command takes, `--json` everywhere, the same exit 2 for every bad filter value,
SMS failure reasons in `messages list`, and `messages send` refusing what cannot be sent."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from syncd.demo_data import BROKEN_ROWS, write_sample_export
from syncd.messages.requests import submit_request
from syncd.outbox.events import emit
from syncd.sandbox.server import ServedSandbox
from syncd.state.db import make_engine
from tests.acceptance.conftest import PROVIDER, Practice, Workspace

EX_USAGE = 2
EX_CONFIG = 78
PATIENTS = 30
EVENTS = 3
GHOST = "GHOST-404"  # a patient neither the mirror nor Voxares knows


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """`result`, once it is known to have exited 0."""
    assert result.returncode == 0, result.stdout[-1000:] + result.stderr[-2000:]
    return result


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory, served: ServedSandbox) -> Workspace:
    """One installation with something in every list: quarantined rows, mirrored content,
    delivered outbox events, and an SMS request that Voxares refused."""
    created = served.admin.create_practice(f"clinic-{uuid.uuid4().hex[:8]}")
    ws = Workspace(
        tmp_path_factory.mktemp("lists"),
        Practice(served, created["id"], created["keys"][0]["key"]),
    )
    ws.write_config(
        extra=f'\n[messages]\nenabled = true\n\n[outbox.sinks.files]\ntype = "file"\n'
        f'directory = "{ws.dir.as_posix()}/events"\n'
    )
    text = ws.config.read_text(encoding="utf-8")
    ws.config.write_text(
        text.replace("[content]\nenabled = false", "[content]\nenabled = true"), encoding="utf-8"
    )
    write_sample_export(ws.export, PATIENTS)
    for command in (["db", "upgrade"], ["sync", "patients"], ["sync", "content"]):
        ok(ws.run(*command))
    engine = make_engine(f"sqlite:///{ws.state_db}")
    try:
        with Session(engine) as session, session.begin():
            for n in range(EVENTS):
                emit(session, event_type="test.listed", payload={"n": n}, ordering_key=None)
        submit_request(
            engine,
            key="refused-by-voxares",
            provider=PROVIDER,
            provider_id=GHOST,
            content="Your appointment is tomorrow.",
            origin="test",
        )
    finally:
        engine.dispose()
    ok(ws.run("sync", "outbox"))
    ws.run("sync", "messages")  # the refused send fails its request (and the run says so)
    return ws


def json_rows(ws: Workspace, *args: str) -> list[dict[str, object]]:
    """The rows of `syncd ARGS --json`, parsed."""
    rows = json.loads(ok(ws.run(*args, "--json")).stdout)
    assert isinstance(rows, list)
    return rows


# --- whole ids, and --json (item 13) -----------------------------------------------------


def test_outbox_list_shows_whole_ids_that_outbox_show_takes(populated: Workspace) -> None:
    """At the default width of a pipe (80), every event id is printed whole, and `outbox
    show` finds the event by the id as printed."""
    listed = ok(populated.run("outbox", "list"))  # no COLUMNS: rich's 80 columns
    rows = json_rows(populated, "outbox", "list")
    ids = [str(row["event_id"]) for row in rows if row["event_type"] == "test.listed"]
    assert len(ids) == EVENTS
    for row in rows:
        assert str(row["event_id"]) in listed.stdout
    shown = ok(populated.run("outbox", "show", ids[0]))
    assert f"test.listed {ids[0]}" in shown.stdout


@pytest.mark.parametrize(
    ("command", "id_field", "expected"),
    [
        (["quarantine", "list"], "row", len(BROKEN_ROWS)),
        (["outbox", "list"], "event_id", None),
        (["messages", "list"], "key", 1),
        (["content", "list"], "id", None),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_every_list_offers_json_and_whole_ids_in_its_table(
    populated: Workspace, command: list[str], id_field: str, expected: int | None
) -> None:
    """`--json` gives every row as an object; the table at 80 columns holds each id whole."""
    rows = json_rows(populated, *command)
    if expected is not None:
        assert len(rows) == expected
    assert rows, "the list is not empty"
    table = ok(populated.run(*command)).stdout
    for row in rows:
        assert str(row[id_field]) in table


def test_messages_list_says_why_a_send_failed(populated: Workspace) -> None:
    """A request Voxares refused is `failed` with the reason in the table and the JSON."""
    [request] = json_rows(populated, "messages", "list")
    assert request["key"] == "refused-by-voxares"
    assert request["state"] == "failed"
    reason = str(request["error"])
    assert "status=" in reason
    table = ok(populated.run("messages", "list")).stdout
    assert reason.split(" status=")[0] in table


# --- bad filter values (item 13) ---------------------------------------------------------

BAD_FILTERS = [
    (["outbox", "list", "--state", "bogus"], "--state"),
    (["outbox", "list", "--sink", "nope"], "--sink"),
    (["outbox", "list", "--since", "yesterday"], "--since"),
    (["outbox", "list", "--limit", "0"], "--limit"),
    (["outbox", "retry", "--sink", "nope"], "--sink"),
    (["outbox", "replay", "--since", "2024-01-01", "--sink", "nope"], "--sink"),
    (["messages", "list", "--state", "bogus"], "--state"),
    (["content", "list", "--kind", "bogus"], "--kind"),
    (["quarantine", "list", "--source", "nope"], "--source"),
    (["quarantine", "list", "--limit", "-1"], "--limit"),
]


@pytest.mark.parametrize(
    ("command", "option"), BAD_FILTERS, ids=[" ".join(c) for c, _ in BAD_FILTERS]
)
def test_a_bad_filter_value_is_exit_2_with_one_line(
    populated: Workspace, command: list[str], option: str
) -> None:
    """Every bad filter value: exit 2 and one `error: --option: why` line, nothing listed."""
    result = populated.run(*command)
    assert result.returncode == EX_USAGE, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        line for line in result.stderr.strip().splitlines() if line.startswith(f"error: {option}: ")
    ]
    assert result.stderr.strip()
    assert result.stdout == ""


def test_a_known_filter_value_is_accepted(populated: Workspace) -> None:
    """The configured sink and source, and a valid state, filter without complaint."""
    ok(populated.run("outbox", "list", "--sink", "files", "--state", "delivered"))
    ok(populated.run("quarantine", "list", "--source", "ehr-export"))


def test_version_and_short_help(tmp_path: Path) -> None:
    """`syncd --version` prints the version; `-h` works like `--help`, on subcommands too."""
    from importlib.metadata import version

    from tests.acceptance.conftest import clean_env, syncd_command

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            syncd_command(*args),
            env=clean_env(COLUMNS="120"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert ok(run("--version")).stdout.strip() == f"voxares-syncd {version('voxares-syncd')}"
    assert "Usage" in ok(run("-h")).stdout
    assert "--json" in ok(run("outbox", "list", "-h")).stdout


# --- messages send (item 12) -------------------------------------------------------------


def test_messages_send_refuses_a_patient_the_mirror_does_not_know(populated: Workspace) -> None:
    """An unknown providerId is refused at once (exit 1, one line); nothing is recorded."""
    before = json_rows(populated, "messages", "list")
    result = populated.run("messages", "send", "--provider-id", GHOST, "--content", "Hi")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: no patient '{GHOST}' in the patient mirror: not pushed yet, or quarantined "
        "(see `syncd quarantine list`)"
    ]
    assert json_rows(populated, "messages", "list") == before
    accepted = ok(
        populated.run(
            "messages", "send", "--provider-id", "EHR-000001", "--content", "Hi", "--key", "k1"
        )
    )
    assert "request k1: pending" in accepted.stdout


def test_messages_send_refuses_while_sms_is_disabled(workspace: Workspace) -> None:
    """With `messages.enabled = false` the request is refused: exit 78 naming the key."""
    ok(workspace.run("db", "upgrade"))
    result = workspace.run("messages", "send", "--provider-id", "EHR-000001", "--content", "Hi")
    assert result.returncode == EX_CONFIG
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("config error: messages.enabled: ")
