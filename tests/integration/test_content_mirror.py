"""The content mirror against the in-process sandbox and a real state database: items and
their add/change/remove events recorded together; removals only from complete listings."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from syncd.content import ContentMirror, list_content
from syncd.exceptions import Invalid, ServerError
from syncd.sandbox.faults import FaultConfig, FaultRule
from syncd.sandbox.records import Document, Template
from syncd.state.models import ContentItem
from tests.integration.test_messages_support import World, events, make_world, migrated_sqlite


@pytest.fixture
async def world(tmp_path: Any) -> AsyncIterator[World]:
    w = make_world(migrated_sqlite(tmp_path))
    try:
        yield w
    finally:
        await w.close()


def mirror(world: World, **options: Any) -> ContentMirror:
    return ContentMirror(world.engine, world.client(attempts=2), **options)


def content_events(world: World) -> list[tuple[str, dict[str, Any]]]:
    return events(world.engine, "content.")


def items(world: World) -> dict[tuple[str, str], ContentItem]:
    with Session(world.engine) as session:
        return {(i.kind, i.item_id): i for i in session.scalars(select(ContentItem))}


async def test_first_run_adds_every_item_with_an_event(world: World) -> None:
    """4 templates, 3 forms, 3 documents: 10 items stored, 10 content.added events."""
    counts = await mirror(world).run(None)
    assert (counts.templates, counts.forms, counts.documents) == (4, 3, 3)
    assert (counts.added, counts.changed, counts.removed) == (10, 0, 0)
    practice = world.sandbox.practices[world.practice]
    expected = (
        {("template", t.id, t.name) for t in practice.templates.values()}
        | {("form", f.id, f.display_name) for f in practice.forms.values()}
        | {("document", d.id, d.name) for d in practice.documents.values()}
    )
    emitted = content_events(world)
    assert {kind for kind, _ in emitted} == {"content.added"}
    assert {(p["kind"], p["id"], p["name"]) for _, p in emitted} == expected
    assert all(set(p) == {"kind", "id", "name"} for _, p in emitted)
    template = next(iter(practice.templates.values()))
    stored = items(world)[("template", template.id)]
    assert json.loads(stored.payload)["content"] == template.content
    assert len(stored.content_hash) == 64


async def test_add_change_remove_and_come_back(world: World) -> None:
    """A changed template, a removed document, a new form, then the document returns."""
    await mirror(world).run(None)
    practice = world.sandbox.practices[world.practice]
    template = next(iter(practice.templates.values()))
    template.content = "New text {{firstName}}"
    document_id, document = next(iter(practice.documents.items()))
    del practice.documents[document_id]
    now = datetime.now(UTC)
    practice.templates["t-new"] = Template("t-new", "New template", "Hi", now, now)

    second = await mirror(world).run(None)
    assert (second.added, second.changed, second.removed, second.unchanged) == (1, 1, 1, 8)
    assert content_events(world)[10:] == [
        ("content.added", {"kind": "template", "id": "t-new", "name": "New template"}),
        ("content.changed", {"kind": "template", "id": template.id, "name": template.name}),
        ("content.removed", {"kind": "document", "id": document_id, "name": document.name}),
    ]
    assert items(world)[("document", document_id)].removed_at is not None
    live = {(e.kind, e.id) for e in list_content(world.engine, include_removed=False)}
    assert ("document", document_id) not in live

    practice.documents[document_id] = Document(document_id, document.name)
    third = await mirror(world).run(None)
    assert (third.added, third.removed) == (1, 0)
    assert content_events(world)[-1] == (
        "content.added",
        {"kind": "document", "id": document_id, "name": document.name},
    )
    assert items(world)[("document", document_id)].removed_at is None
    assert (await mirror(world).run(None)).unchanged == 11
    assert len(content_events(world)) == 14


@pytest.mark.parametrize(
    ("status", "error"), [(400, Invalid), (503, ServerError)], ids=["400", "503"]
)
async def test_a_failed_page_aborts_without_writing_anything(
    world: World, status: int, error: type[Exception]
) -> None:
    """A listing that fails on one page: the run raises and records nothing, no removal."""
    await mirror(world).run(None)
    before = {
        ref: (i.content_hash, i.removed_at, i.last_seen_at) for ref, i in items(world).items()
    }
    practice = world.sandbox.practices[world.practice]
    removed = next(iter(practice.templates))
    del practice.templates[removed]
    world.set_faults(
        FaultConfig(
            rules=[FaultRule(method="GET", path_prefix="/documents", error_rates={status: 1.0})]
        )
    )
    with pytest.raises(error):
        await mirror(world).run(None)
    assert len(content_events(world)) == 10
    after = {ref: (i.content_hash, i.removed_at, i.last_seen_at) for ref, i in items(world).items()}
    assert after == before


async def test_shuffled_paging_never_removes_an_item_that_exists(world: World) -> None:
    """Pages of one item in a new random order each request: listings come out incomplete,
    and no live item is ever marked removed."""
    await mirror(world).run(None)
    incomplete = 0
    for seed in range(4):
        world.set_faults(FaultConfig(shuffle_lists=True, seed=seed))
        counts = await mirror(world, page_size=1).run(None)
        incomplete += counts.incomplete_listings
        assert counts.removed == 0
    assert incomplete > 0
    assert [kind for kind, _ in content_events(world)].count("content.removed") == 0
    assert all(i.removed_at is None for i in items(world).values())


async def test_list_content_by_kind(world: World) -> None:
    """Ordered by kind and name; one kind on request; an unknown kind is refused."""
    await mirror(world).run(None)
    forms = list_content(world.engine, "form")
    assert [f.kind for f in forms] == ["form"] * 3
    assert [f.name for f in forms] == sorted(f.name or "" for f in forms)
    assert len(list_content(world.engine)) == 10
    with pytest.raises(ValueError, match="kind must be one of"):
        list_content(world.engine, "video")


async def test_an_item_missing_from_one_listing_is_looked_for_again(world: World) -> None:
    """A complete-looking listing that lacks an item (a lagging read) does not remove it: the
    second walk finds it. Gone from both walks, it is removed."""
    await mirror(world).run(None)
    hidden = next(iter(world.sandbox.practices[world.practice].documents))
    app = world.app
    lagging = {"left": 1}

    async def lagging_documents(scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path.endswith("/documents") and lagging["left"] > 0):
            await app(scope, receive, send)
            return
        lagging["left"] -= 1

        async def without_hidden(message: Any) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                page = json.loads(message["body"])
                page["data"] = [d for d in page["data"] if d["id"] != hidden]
                page["count"] = len(page["data"])
                body = json.dumps(page).encode()
                message = {**message, "body": body}
            elif message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message["headers"] if k != b"content-length"]
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, without_hidden)

    world.app = lagging_documents  # type: ignore[assignment]
    counts = await mirror(world).run(None)
    assert counts.removed == 0
    assert lagging["left"] == 0  # the lagging answer was served
    assert items(world)[("document", hidden)].removed_at is None

    lagging["left"] = 2  # both walks lack it now
    assert (await mirror(world).run(None)).removed == 1
    assert items(world)[("document", hidden)].removed_at is not None
