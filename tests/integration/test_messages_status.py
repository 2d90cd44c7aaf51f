"""The `message_status` job against the in-process sandbox on a manual clock: each delivery
status change of a sent SMS is recorded with exactly one `message.status_changed` event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import update

from syncd.messages import MessageStatusPoller, resolve, submit_request
from syncd.sandbox.state import MessageTiming
from syncd.state.db import make_engine, upgrade
from syncd.state.models import MessageRequest
from syncd.voxares.contract import format_timestamp
from tests.integration.test_messages_support import (
    PROVIDER,
    World,
    add_patient,
    events,
    make_world,
    migrated_sqlite,
    request,
)

EVENT = "message.status_changed"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A migrated state database: SQLite, and PostgreSQL when it runs."""
    if request.param == "sqlite":
        return migrated_sqlite(tmp_path)
    url: str = request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


async def sent_world(url: str, *, fails: bool = False) -> World:
    """A world where request `r-1` was just sent (Voxares status Pending)."""
    timing = MessageTiming(sent_after_seconds=1, final_after_seconds=3, failure_rate=float(fails))
    world = make_world(url, timing=timing)
    add_patient(world.engine, "P-1")
    submit_request(
        world.engine, key="r-1", provider=PROVIDER, provider_id="P-1", content="Hi", origin="api"
    )
    counts = await world.sender().run(None)
    assert counts.sent == 1
    return world


@pytest.fixture
async def world(db_url: str) -> AsyncIterator[World]:
    w = await sent_world(db_url)
    try:
        yield w
    finally:
        await w.close()


def make_unknown(world: World, key: str) -> None:
    """Put a request in `unknown`, as a crash between its mark and its result would."""
    with world.engine.begin() as conn:
        conn.execute(
            update(MessageRequest).where(MessageRequest.key == key).values(state="unknown")
        )


def poller(world: World) -> MessageStatusPoller:
    return MessageStatusPoller(world.engine, world.client(), batch_size=10)


def statuses(world: World) -> list[str]:
    return [payload["status"] for _, payload in events(world.engine, EVENT)]


async def test_pending_sent_delivered_emits_exactly_the_changes(world: World) -> None:
    """Pending (no event) → Sent → Delivered: one event per change, then it stops polling."""
    stored = request(world.engine, "r-1")
    assert stored.delivery_status == "Pending"
    first = await poller(world).run(None)
    assert (first.checked, first.changed) == (1, 0)
    assert events(world.engine, EVENT) == []

    world.clock.advance(1.5)
    assert (await poller(world).run(None)).changed == 1
    world.clock.advance(2)
    assert (await poller(world).run(None)).changed == 1
    done = await poller(world).run(None)
    assert done.checked == 0  # final: no longer followed

    assert statuses(world) == ["Sent", "Delivered"]
    message_id = request(world.engine, "r-1").message_id
    message = world.sandbox.practices[world.practice].messages[message_id]
    sent_on = format_timestamp(message.created_at + message.sent_after)
    for _, payload in events(world.engine, EVENT):
        assert payload == {
            "messageId": message_id,
            "requestKey": "r-1",
            "providerId": "P-1",
            "status": payload["status"],
            "sentOn": sent_on,
        }
    stored = request(world.engine, "r-1")
    assert stored.delivery_status == "Delivered"
    assert stored.status_checked_at is not None


async def test_a_failed_delivery_is_reported_too(tmp_path: Any) -> None:
    """Pending → Sent → Failed: the events say Sent, then Failed."""
    world = await sent_world(migrated_sqlite(tmp_path), fails=True)
    try:
        world.clock.advance(1.5)
        await poller(world).run(None)
        world.clock.advance(2)
        await poller(world).run(None)
        await poller(world).run(None)
        assert statuses(world) == ["Sent", "Failed"]
        assert request(world.engine, "r-1").delivery_status == "Failed"
    finally:
        await world.close()


async def test_a_skipped_status_is_one_change(world: World) -> None:
    """Polled only after delivery: one event, Delivered."""
    world.clock.advance(10)
    await poller(world).run(None)
    assert statuses(world) == ["Delivered"]


async def test_two_pollers_at_once_record_each_change_once(world: World) -> None:
    """Concurrent pollers: the guarded update lets one of them record (and emit) a change."""
    world.clock.advance(1.5)
    runs = await asyncio.gather(poller(world).run(None), poller(world).run(None))
    assert sum(r.changed for r in runs) == 1
    assert statuses(world) == ["Sent"]


async def test_a_message_marked_sent_by_hand_is_followed(world: World) -> None:
    """An unknown request marked sent with its message id gets its status followed."""
    message_id = request(world.engine, "r-1").message_id
    submit_request(
        world.engine, key="r-2", provider=PROVIDER, provider_id="P-1", content="Hi", origin="api"
    )
    make_unknown(world, "r-2")
    resolve(world.engine, "r-2", "mark-sent", message_id=message_id)
    world.clock.advance(10)
    await poller(world).run(None)
    keys = sorted(payload["requestKey"] for _, payload in events(world.engine, EVENT))
    assert keys == ["r-1", "r-2"]


async def test_a_message_voxares_does_not_know_is_counted_not_emitted(world: World) -> None:
    """404 on a followed message: counted, no event, still followed."""
    submit_request(
        world.engine, key="r-2", provider=PROVIDER, provider_id="P-1", content="Yo", origin="api"
    )
    make_unknown(world, "r-2")
    resolve(world.engine, "r-2", "mark-sent", message_id="00000000-0000-4000-8000-000000000000")
    counts = await poller(world).run(None)
    assert counts.not_found == 1
    assert events(world.engine, EVENT) == []
