"""Claims of a delivery worker killed with SIGKILL are freed at the next run, not after the
lease: only those of a process of this host that is provably gone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from syncd.outbox import claims, fanout
from syncd.outbox.events import emit
from syncd.outbox.routing import Route
from syncd.state.models import OutboxDelivery

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LEASE = timedelta(minutes=2)
HOST = "clinic-host"
DEAD_PID = 4_000_001
LIVE_PID = 4_000_002


@pytest.fixture
def engine(state_engine: Engine) -> Engine:
    """A migrated, empty state database on each backend."""
    return state_engine


def queue(engine: Engine, n: int) -> None:
    """`n` events, fanned out to sink "s"."""
    with Session(engine) as session, session.begin():
        for i in range(n):
            emit(session, event_type="a.x", payload={"n": i}, ordering_key=None)
    fanout.fan_out(engine, Route("s", start="beginning"), now=T0)


def claimed_by(engine: Engine) -> list[str | None]:
    """Each delivery's holder, by seq."""
    with Session(engine) as session:
        query = select(OutboxDelivery.claimed_by).order_by(OutboxDelivery.event_seq)
        return list(session.scalars(query))


def alive(pid: int) -> bool:
    """Only LIVE_PID runs."""
    return pid == LIVE_PID


def test_claims_of_a_dead_local_worker_are_claimable_at_once(engine: Engine) -> None:
    """A dead worker's live lease is freed and re-claimed in the same instant."""
    queue(engine, 3)
    dead = f"{HOST}:{DEAD_PID}:abcd1234"
    claims.claim(engine, "s", worker=dead, limit=10, lease=LEASE, now=T0)
    later = T0 + timedelta(seconds=1)
    assert claims.claim(engine, "s", worker="w2", limit=10, lease=LEASE, now=later) == []
    freed = claims.release_dead_claims(engine, host=HOST, is_alive=alive, now=later)
    assert freed == 3
    assert claimed_by(engine) == [None, None, None]
    again = claims.claim(engine, "s", worker="w2", limit=10, lease=LEASE, now=later)
    assert len(again) == 3


def test_claims_of_live_or_remote_or_unnamed_workers_are_kept(engine: Engine) -> None:
    """A live pid, another host, or an id not shaped host:pid:tag keeps its lease."""
    queue(engine, 3)
    holders = [f"{HOST}:{LIVE_PID}:x", f"other-host:{DEAD_PID}:x", "worker-1"]
    for holder in holders:
        claims.claim(engine, "s", worker=holder, limit=1, lease=LEASE, now=T0)
    freed = claims.release_dead_claims(engine, host=HOST, is_alive=alive, now=T0)
    assert freed == 0
    assert claimed_by(engine) == holders


def test_delivered_or_expired_claims_are_left_alone(engine: Engine) -> None:
    """Only live leases of pending deliveries count; an expired one is free anyway."""
    queue(engine, 1)
    dead = f"{HOST}:{DEAD_PID}:abcd1234"
    claims.claim(engine, "s", worker=dead, limit=10, lease=LEASE, now=T0)
    expired = T0 + LEASE
    assert claims.release_dead_claims(engine, host=HOST, is_alive=alive, now=expired) == 0
    assert claimed_by(engine) == [dead]
