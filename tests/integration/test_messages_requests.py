"""Recording SMS requests (`submit_request`) and a human's decisions (`resolve`) on a real
state database: idempotent keys, template checks before any call, allowed transitions."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from syncd.content.mirror import JOB_NAME as CONTENT_JOB
from syncd.content.mirror import ContentMirror
from syncd.exceptions import MessageRequestError
from syncd.messages import counts_by_state, resolve, submit_request
from syncd.sandbox.faults import FaultConfig, FaultRule
from syncd.state.db import make_engine, upgrade
from syncd.state.models import AuditEntry, MessageRequest
from syncd.state.runs import finish_run, start_run
from tests.integration.test_messages_support import (
    PROVIDER,
    World,
    add_patient,
    make_world,
    migrated_sqlite,
    request,
)

SECRET_TEXT = "Ana, your HIV test result is ready"


@pytest.fixture
def engine(tmp_path: Any) -> Iterator[Engine]:
    """A migrated SQLite state database."""
    engine = make_engine(migrated_sqlite(tmp_path))
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_engine(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Engine]:
    """A migrated state database: SQLite, and PostgreSQL when it runs."""
    if request.param == "sqlite":
        url = migrated_sqlite(tmp_path)
    else:
        url = request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    if request.param != "sqlite":
        upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
async def world(tmp_path: Any) -> AsyncIterator[World]:
    w = make_world(migrated_sqlite(tmp_path))
    try:
        yield w
    finally:
        await w.close()


def submit(engine: Engine, key: str = "k-1", **fields: Any) -> MessageRequest:
    fields.setdefault("provider", PROVIDER)
    fields.setdefault("provider_id", "P-1")
    if "template_id" not in fields:
        fields.setdefault("content", SECRET_TEXT)
    fields.setdefault("origin", "api")
    return submit_request(engine, key=key, **fields)


def set_state(engine: Engine, key: str, state: str) -> None:
    with Session(engine) as session, session.begin():
        row = session.get(MessageRequest, key)
        assert row is not None
        row.state = state


def rows(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.scalar(select(func.count()).select_from(MessageRequest)) or 0)


def test_the_same_key_twice_is_one_request(any_engine: Engine) -> None:
    """Submitting the same key and body again returns the first request, unchanged."""
    first = submit(any_engine)
    set_state(any_engine, "k-1", "sent")
    second = submit(any_engine, origin="cli")
    assert (second.key, second.created_at, second.origin) == ("k-1", first.created_at, "api")
    assert second.state == "sent"
    assert rows(any_engine) == 1


def test_a_different_body_under_a_taken_key_names_the_key_not_the_text(any_engine: Engine) -> None:
    """Same key, another text or patient: an error naming the key, without the text."""
    submit(any_engine)
    for change in ({"content": "Other text"}, {"provider_id": "P-2"}):
        with pytest.raises(MessageRequestError) as info:
            submit(any_engine, **change)
        assert "'k-1'" in str(info.value)
        assert SECRET_TEXT not in str(info.value)
        assert "Other text" not in str(info.value)
    assert rows(any_engine) == 1


def test_concurrent_submits_of_one_key_make_one_request(any_engine: Engine) -> None:
    """Eight threads submitting one key at once: one row, every caller gets it."""
    results: list[MessageRequest] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(submit(any_engine, "race"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert {r.created_at for r in results} == {results[0].created_at}
    assert rows(any_engine) == 1


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"content": None, "template_id": None}, "exactly one of content and template_id"),
        ({"content": "x", "template_id": "t"}, "exactly one of content and template_id"),
        ({"content": "   "}, "content must not be empty"),
        ({"provider_id": ""}, "provider_id must not be empty"),
        ({"provider_id": "x" * 129}, "provider_id is longer than 128"),
    ],
)
def test_invalid_requests_are_refused(engine: Engine, fields: dict[str, Any], problem: str) -> None:
    """Exactly one of content/template, non-empty ids within the column sizes."""
    with pytest.raises(MessageRequestError, match=problem):
        submit(engine, **fields)
    assert rows(engine) == 0


def test_a_template_before_the_content_mirror_ever_ran_says_run_it(any_engine: Engine) -> None:
    """No content mirrored yet: the error names the template and says to run content sync."""
    with pytest.raises(MessageRequestError) as info:
        submit(any_engine, template_id="tmpl-42")
    assert "tmpl-42" in str(info.value)
    assert "run content sync first" in str(info.value)
    assert rows(any_engine) == 0


def test_a_template_unknown_after_a_mirror_run_is_refused(engine: Engine) -> None:
    """The mirror ran (with no templates at all): the id is simply not a template."""
    finish_run(engine, start_run(engine, CONTENT_JOB), "ok", {}, None)
    with pytest.raises(MessageRequestError) as info:
        submit(engine, template_id="tmpl-42")
    assert "tmpl-42" in str(info.value)
    assert "not a practice template" in str(info.value)


async def test_unknown_or_removed_templates_are_refused_before_any_call(world: World) -> None:
    """Against a mirrored sandbox: a typo and a removed template fail at submit, and the
    sender then has nothing to send (the sandbox never sees a send)."""
    await ContentMirror(world.engine, world.client()).run(None)
    templates = world.sandbox.practices[world.practice].templates
    removed = world.template_ids()[-1]
    del templates[removed]
    await ContentMirror(world.engine, world.client()).run(None)
    with pytest.raises(MessageRequestError, match="is not a practice template"):
        submit(world.engine, "typo", template_id="no-such-template")
    with pytest.raises(MessageRequestError, match="was removed from Voxares"):
        submit(world.engine, "gone", template_id=removed)
    await world.sender().run(None)
    assert world.requests_seen("POST /messages/send 201") == 0
    assert rows(world.engine) == 0


def test_counts_by_state_lists_every_state(engine: Engine) -> None:
    """Zero counts included, for `syncd status`."""
    submit(engine, "a")
    submit(engine, "b")
    set_state(engine, "b", "unknown")
    assert counts_by_state(engine) == {
        "pending": 1,
        "sending": 0,
        "sent": 0,
        "failed": 0,
        "unknown": 1,
        "cancelled": 0,
    }


# --- resolve -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "action", "target"),
    [
        ("unknown", "resend", "pending"),
        ("failed", "resend", "pending"),
        ("unknown", "mark-sent", "sent"),
        ("unknown", "cancel", "cancelled"),
    ],
)
def test_allowed_resolutions(engine: Engine, state: str, action: str, target: str) -> None:
    """Each allowed move lands in its state, and is audited with who decided."""
    submit(engine)
    set_state(engine, "k-1", state)
    resolved = resolve(engine, "k-1", action)
    assert resolved.state == target
    with Session(engine) as session:
        entry = session.scalars(select(AuditEntry)).one()
    assert (entry.actor, entry.action, entry.object_id) == ("cli", f"message.{action}", "k-1")
    assert entry.detail == f"from={state} to={target}"


@pytest.mark.parametrize(
    ("state", "action"),
    [
        ("pending", "resend"),
        ("sent", "resend"),
        ("sending", "resend"),
        ("failed", "mark-sent"),
        ("failed", "cancel"),
        ("pending", "cancel"),
        ("sent", "cancel"),
    ],
)
def test_refused_resolutions(engine: Engine, state: str, action: str) -> None:
    """Anything else is refused with the key and its state named, and changes nothing."""
    submit(engine)
    set_state(engine, "k-1", state)
    with pytest.raises(MessageRequestError, match=f"'k-1' is {state}"):
        resolve(engine, "k-1", action)
    assert request(engine, "k-1").state == state


def test_resolve_argument_errors(engine: Engine) -> None:
    """An unknown key, an unknown action, a message id outside mark-sent."""
    submit(engine)
    set_state(engine, "k-1", "unknown")
    with pytest.raises(MessageRequestError, match="no SMS request with key 'nope'"):
        resolve(engine, "nope", "cancel")
    with pytest.raises(MessageRequestError, match="action must be one of"):
        resolve(engine, "k-1", "retry")
    with pytest.raises(MessageRequestError, match="only be given with mark-sent"):
        resolve(engine, "k-1", "cancel", message_id="m-1")
    marked = resolve(engine, "k-1", "mark-sent", message_id="m-1")
    assert (marked.state, marked.message_id) == ("sent", "m-1")


async def test_a_human_resend_of_an_unknown_request_sends_it_again(world: World) -> None:
    """The daemon never resends `unknown`; after `resend` the next run does (a human's call)."""
    add_patient(world.engine, "P-1")
    submit(world.engine, content="Hi")
    world.set_faults(
        FaultConfig(
            rules=[
                FaultRule(path_prefix="/messages/send", error_rates={503: 1.0}, error_phase="after")
            ]
        )
    )
    await world.sender().run(None)
    world.set_faults()
    await world.sender().run(None)
    assert request(world.engine, "k-1").state == "unknown"
    assert world.sends("P-1", "content:Hi") == 1
    resolved = resolve(world.engine, "k-1", "resend")
    assert (resolved.state, resolved.error, resolved.sending_at) == ("pending", None, None)
    await world.sender().run(None)
    assert request(world.engine, "k-1").state == "sent"
    assert world.sends("P-1", "content:Hi") == 2
