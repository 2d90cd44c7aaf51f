"""The outbox's database work on real SQLite and PostgreSQL: fan-out (routes, cursors; the
visibility rule and seq gaps are in test_outbox_fanout_visibility), claims (leases,
per-patient order), outcome records, and the operator queries (list, show, retry, replay,
prune, backlog)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select, text, update
from sqlalchemy.orm import Session

from syncd.housekeeping import HousekeepingJob
from syncd.outbox import actions, claims, fanout, queries, recording, retention
from syncd.outbox.events import emit
from syncd.outbox.recording import Again, Dead, Done, Release
from syncd.outbox.routing import Route
from syncd.state.db import make_engine, upgrade
from syncd.state.models import (
    AuditEntry,
    OutboxDelivery,
    OutboxEvent,
    SinkCursor,
    SubmissionVersion,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)
PATIENT_NAME = "Ana Horvat"


@pytest.fixture(scope="module")
def migrated(module_state_engine: Engine) -> Engine:
    """One migrated database per backend for the module (migrating per test costs ~1s)."""
    return module_state_engine


@pytest.fixture
def engine(migrated: Engine) -> Engine:
    """The module's database, emptied of outbox state (seqs restart at 1)."""
    wipe(migrated)
    return migrated


def wipe(engine: Engine) -> None:
    tables = "submission_versions, outbox_deliveries, outbox_events, sink_cursors, audit_log"
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY"))
        else:
            for table in tables.split(", "):
                conn.execute(text(f"DELETE FROM {table}"))


def add_events(
    engine: Engine,
    types: list[str],
    *,
    keys: list[str | None] | None = None,
    created_at: datetime = T0,
) -> list[tuple[int, str]]:
    """Emit events (one transaction); returns their (seq, event_id)."""
    with Session(engine) as session, session.begin():
        events = [
            emit(
                session,
                event_type=event_type,
                payload={"n": n, "name": PATIENT_NAME},
                ordering_key=keys[n] if keys else None,
            )
            for n, event_type in enumerate(types)
        ]
        for event in events:
            event.created_at = created_at
        session.flush()
        return [(event.seq, event.event_id) for event in events]


def deliveries(engine: Engine, sink: str | None = None) -> dict[tuple[int, str], OutboxDelivery]:
    with Session(engine) as session:
        query = select(OutboxDelivery)
        if sink:
            query = query.where(OutboxDelivery.sink == sink)
        return {(d.event_seq, d.sink): d for d in session.scalars(query)}


def cursor(engine: Engine, sink: str) -> SinkCursor | None:
    with Session(engine) as session:
        return session.get(SinkCursor, sink)


def audits(engine: Engine, action: str) -> list[AuditEntry]:
    with Session(engine) as session:
        return list(session.scalars(select(AuditEntry).where(AuditEntry.action == action)))


def set_state(engine: Engine, seq: int, sink: str, state: str, **values: Any) -> None:
    with Session(engine) as session, session.begin():
        row = session.get(OutboxDelivery, (seq, sink))
        assert row is not None
        row.state = state
        for key, value in values.items():
            setattr(row, key, value)


# --- fan-out --------------------------------------------------------------------------------


def test_fan_out_queues_subscribed_events_and_moves_the_cursor(engine: Engine) -> None:
    """Each sink gets a pending delivery for exactly the event types its globs match."""
    crm = Route("crm", ("form_submission.*",), start="beginning")
    archive = Route("archive", ("*",), start="beginning")
    seqs = [seq for seq, _ in add_events(engine, ["form_submission.updated", "message.sent"] * 2)]
    assert fanout.fan_out(engine, crm, now=T0).queued == 2
    assert fanout.fan_out(engine, archive, now=T0).queued == 4
    assert sorted(deliveries(engine, "crm")) == [(seqs[0], "crm"), (seqs[2], "crm")]
    assert len(deliveries(engine, "archive")) == 4
    assert all(d.state == "pending" and d.attempts == 0 for d in deliveries(engine).values())
    crm_cursor = cursor(engine, "crm")
    assert crm_cursor is not None
    assert crm_cursor.last_seq == seqs[-1]
    assert fanout.fan_out(engine, crm, now=T0).queued == 0  # nothing new


def test_new_sink_starts_now_by_default_or_at_the_beginning(engine: Engine) -> None:
    """A new sink with start "now" skips existing events; "beginning" takes them all."""
    add_events(engine, ["a.x", "a.y"])
    assert fanout.fan_out(engine, Route("late"), now=T0).queued == 0
    assert fanout.fan_out(engine, Route("full", start="beginning"), now=T0).queued == 2
    add_events(engine, ["a.z"])
    assert fanout.fan_out(engine, Route("late"), now=T0).queued == 1


def test_fan_out_works_in_chunks(engine: Engine) -> None:
    """Events beyond one chunk are all queued by one call, cursor at the last."""
    seqs = [seq for seq, _ in add_events(engine, ["a.x"] * 7)]
    assert fanout.fan_out(engine, Route("s", start="beginning"), now=T0, chunk_size=3).queued == 7
    last = cursor(engine, "s")
    assert last is not None
    assert last.last_seq == seqs[-1]


# --- claims ---------------------------------------------------------------------------------


def _queued(engine: Engine, n: int, *, keys: list[str | None] | None = None) -> list[int]:
    seqs = [seq for seq, _ in add_events(engine, ["a.x"] * n, keys=keys)]
    fanout.fan_out(engine, Route("s", start="beginning"), now=T0)
    return seqs


def test_claim_leases_due_deliveries_once(engine: Engine) -> None:
    """A claim leases up to the limit; while the lease lives no other worker gets them."""
    seqs = _queued(engine, 5)
    first = claims.claim(engine, "s", worker="w1", limit=3, lease=LEASE, now=T0)
    second = claims.claim(engine, "s", worker="w2", limit=10, lease=LEASE, now=T0)
    assert [c.seq for c in first] == seqs[:3]
    assert [c.seq for c in second] == seqs[3:]
    assert claims.claim(engine, "s", worker="w3", limit=10, lease=LEASE, now=T0) == []
    assert deliveries(engine)[(seqs[0], "s")].claimed_by == "w1"
    assert deliveries(engine)[(seqs[0], "s")].claimed_until == T0 + LEASE


def test_an_expired_lease_is_free_again(engine: Engine) -> None:
    """After the lease expires (a crashed worker), another worker claims the delivery."""
    seqs = _queued(engine, 1)
    claims.claim(engine, "s", worker="w1", limit=10, lease=LEASE, now=T0)
    late = T0 + LEASE
    again = claims.claim(engine, "s", worker="w2", limit=10, lease=LEASE, now=late)
    assert [c.seq for c in again] == seqs
    assert deliveries(engine)[(seqs[0], "s")].claimed_by == "w2"


def test_claim_skips_deliveries_not_yet_due_and_carries_the_event(engine: Engine) -> None:
    """A delivery scheduled later is not claimed; a claimed one carries its event's data."""
    seqs = _queued(engine, 2)
    set_state(engine, seqs[0], "s", "pending", next_attempt_at=T0 + timedelta(minutes=5))
    claimed = claims.claim(engine, "s", worker="w", limit=10, lease=LEASE, now=T0)
    assert [c.seq for c in claimed] == [seqs[1]]
    assert json.loads(claimed[0].payload) == {"n": 1, "name": PATIENT_NAME}
    assert claimed[0].event_type == "a.x"
    assert claimed[0].attempts == 0
    assert PATIENT_NAME not in repr(claimed[0])


def test_keep_order_claims_one_event_per_patient_at_a_time(engine: Engine) -> None:
    """With per-patient order, a patient's next event waits until the earlier is done."""
    keys: list[str | None] = ["p1", "p1", "p2", None, "p1", None]
    seqs = _queued(engine, 6, keys=keys)
    opts: dict[str, Any] = {"limit": 10, "lease": LEASE, "keep_order_per_patient": True}
    first = claims.claim(engine, "s", worker="w", now=T0, **opts)
    assert [c.seq for c in first] == [seqs[0], seqs[2], seqs[3], seqs[5]]
    # p1's first event fails and is rescheduled: p1's later events still wait.
    recording.record(
        engine, "s", worker="w", actor="t", run_id=None, now=T0,
        decisions=[Again(seqs[0], 1, T0 + LEASE / 2, "HTTP 500"), Done(seqs[2], "x", 1)],
    )  # fmt: skip
    assert claims.claim(engine, "s", worker="w", now=T0, **opts) == []
    claims.claim(engine, "s", worker="w", now=T0 + LEASE, **opts)  # takes seqs[0] back
    recording.record(
        engine, "s", worker="w", actor="t", run_id=None, now=T0,
        decisions=[Dead(seqs[0], "x", 2, "HTTP 400")],
    )  # fmt: skip
    # A dead event no longer holds the patient's queue.
    nxt = claims.claim(engine, "s", worker="w", now=T0 + LEASE, **opts)
    assert [c.seq for c in nxt] == [seqs[1]]


def test_without_keep_order_every_due_delivery_is_claimable(engine: Engine) -> None:
    """Without per-patient order, one patient's events are claimed together."""
    seqs = _queued(engine, 3, keys=["p1", "p1", "p1"])
    claimed = claims.claim(engine, "s", worker="w", limit=10, lease=LEASE, now=T0)
    assert [c.seq for c in claimed] == seqs


@pytest.mark.postgres
def test_concurrent_claims_on_postgres_never_overlap(postgres_url: str) -> None:
    """Eight threads claiming at once on PostgreSQL get disjoint sets covering everything."""
    engine = make_engine(postgres_url)
    upgrade(engine)
    try:
        seqs = _queued(engine, 400)
        results: dict[str, list[int]] = {}
        barrier = threading.Barrier(8)

        def worker(name: str) -> None:
            barrier.wait()
            mine: list[int] = []
            while batch := claims.claim(engine, "s", worker=name, limit=7, lease=LEASE, now=T0):
                mine += [c.seq for c in batch]
            results[name] = mine

        threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        claimed = [seq for mine in results.values() for seq in mine]
        assert sorted(claimed) == seqs  # each exactly once
        assert sum(1 for mine in results.values() if mine) > 1  # really concurrent
    finally:
        engine.dispose()


# --- outcomes -------------------------------------------------------------------------------


def test_record_applies_outcomes_with_audit_entries(engine: Engine) -> None:
    """Delivered, rescheduled and dead outcomes are written with id-only audit entries."""
    added = add_events(engine, ["a.x"] * 3)
    fanout.fan_out(engine, Route("s", start="beginning"), now=T0)
    claims.claim(engine, "s", worker="w", limit=10, lease=LEASE, now=T0)
    (s1, id1), (s2, _), (s3, id3) = added
    later = T0 + timedelta(seconds=5)
    result = recording.record(
        engine, "s", worker="w", actor="deliver_outbox", run_id=7, now=later,
        decisions=[Done(s1, id1, 1), Again(s2, 1, later, "HTTP 503"), Dead(s3, id3, 1, "HTTP 400")],
    )  # fmt: skip
    assert result == recording.Recorded(applied=(s1, s2, s3), lease_lost=())
    rows = deliveries(engine)
    assert (rows[(s1, "s")].state, rows[(s1, "s")].delivered_at) == ("delivered", later)
    assert (rows[(s2, "s")].state, rows[(s2, "s")].attempts) == ("pending", 1)
    assert rows[(s2, "s")].next_attempt_at == later
    assert rows[(s2, "s")].last_error == "HTTP 503"
    assert (rows[(s3, "s")].state, rows[(s3, "s")].last_error) == ("dead", "HTTP 400")
    assert all(row.claimed_by is None for row in rows.values())
    delivered = audits(engine, "event.delivered")
    assert [(a.object_id, a.detail, a.run_id) for a in delivered] == [(id1, "sink=s attempts=1", 7)]
    assert [a.object_id for a in audits(engine, "event.dead_lettered")] == [id3]


def test_record_ignores_a_delivery_another_worker_took_over(engine: Engine) -> None:
    """A worker whose lease was taken over records nothing for that delivery."""
    [(seq, event_id)] = add_events(engine, ["a.x"])
    fanout.fan_out(engine, Route("s", start="beginning"), now=T0)
    claims.claim(engine, "s", worker="slow", limit=1, lease=LEASE, now=T0)
    claims.claim(engine, "s", worker="fast", limit=1, lease=LEASE, now=T0 + LEASE)
    lost = recording.record(
        engine, "s", worker="slow", actor="t", run_id=None, decisions=[Done(seq, event_id, 1)]
    )
    assert lost == recording.Recorded(applied=(), lease_lost=(seq,))
    assert deliveries(engine)[(seq, "s")].state == "pending"
    assert deliveries(engine)[(seq, "s")].claimed_by == "fast"


def test_record_applies_exactly_the_held_rows_of_a_mixed_batch(engine: Engine) -> None:
    """In one batch of every kind of decision, the rows another worker re-claimed (and one
    already delivered) are reported lost and left as they are; the held ones are applied,
    each with its own attempts and error, and audited once."""
    added = add_events(engine, ["a.x"] * 8)
    (s1, i1), (s2, _), (s3, i3), (s4, _), (s5, i5), (s6, _), (s7, i7), (s8, i8) = added
    fanout.fan_out(engine, Route("s", start="beginning"), now=T0)
    claims.claim(engine, "s", worker="slow", limit=10, lease=LEASE, now=T0)
    # The lease expires; another worker re-claims s5..s8 and s4 is delivered meanwhile.
    with engine.begin() as conn:
        conn.execute(
            update(OutboxDelivery)
            .where(OutboxDelivery.event_seq.in_([s5, s6, s7, s8]))
            .values(claimed_by="fast")
        )
    set_state(engine, s4, "s", "delivered", claimed_by=None)
    later = T0 + timedelta(seconds=5)
    retry_at = later + timedelta(minutes=1)
    decisions: list[recording.Decision] = [
        Done(s1, i1, 2),
        Again(s2, 3, retry_at, "HTTP 503"),
        Dead(s3, i3, 4, "HTTP 400"),
        Release(s4, "sink disabled: gone"),
        Done(s5, i5, 1),
        Again(s6, 1, retry_at, "HTTP 500"),
        Dead(s7, i7, 1, "HTTP 404"),
        Release(s8, "sink disabled: gone"),
    ]
    result = recording.record(
        engine, "s", worker="slow", actor="t", run_id=3, now=later, decisions=decisions
    )
    assert result == recording.Recorded(applied=(s1, s2, s3), lease_lost=(s4, s5, s6, s7, s8))
    rows = deliveries(engine, "s")
    shown = {seq: (r.state, r.attempts, r.last_error, r.claimed_by) for (seq, _), r in rows.items()}
    assert shown == {
        s1: ("delivered", 2, None, None),
        s2: ("pending", 3, "HTTP 503", None),
        s3: ("dead", 4, "HTTP 400", None),
        s4: ("delivered", 0, None, None),
        **{seq: ("pending", 0, None, "fast") for seq in (s5, s6, s7, s8)},
    }
    assert rows[(s2, "s")].next_attempt_at == retry_at
    assert rows[(s1, "s")].delivered_at == later
    assert rows[(s6, "s")].next_attempt_at == T0  # untouched
    assert [(a.object_id, a.detail) for a in audits(engine, "event.delivered")] == [
        (i1, "sink=s attempts=2")
    ]
    assert [(a.object_id, a.run_id) for a in audits(engine, "event.dead_lettered")] == [(i3, 3)]
    # The re-claiming worker's own record still applies to its rows.
    theirs = recording.record(
        engine, "s", worker="fast", actor="t", run_id=None, now=later,
        decisions=[Done(s5, i5, 1), Done(s6, "x", 1), Done(s7, i7, 1), Done(s8, i8, 1)],
    )  # fmt: skip
    assert theirs.applied == (s5, s6, s7, s8)


def test_record_disables_the_sink_and_releases_its_claims(engine: Engine) -> None:
    """DisableSink marks the cursor disabled; the delivery stays pending, unclaimed."""
    [(seq, _)] = add_events(engine, ["a.x"])
    fanout.fan_out(engine, Route("s", start="beginning"), now=T0)
    claims.claim(engine, "s", worker="w", limit=1, lease=LEASE, now=T0)
    recording.record(
        engine, "s", worker="w", actor="t", run_id=None,
        decisions=[Release(seq, "sink disabled: HTTP 410 Gone")],
        disable_reason="HTTP 410 Gone",
    )  # fmt: skip
    row = deliveries(engine)[(seq, "s")]
    assert (row.state, row.attempts, row.claimed_by) == ("pending", 0, None)
    assert queries.sink_states(engine)["s"].disabled_reason == "HTTP 410 Gone"
    assert [a.detail for a in audits(engine, "sink.disabled")] == ["HTTP 410 Gone"]


# --- operator queries -----------------------------------------------------------------------


def _two_sinks(engine: Engine) -> list[tuple[int, str]]:
    added = add_events(engine, ["form_submission.updated", "message.sent", "message.sent"])
    fanout.fan_out(engine, Route("crm", ("form_submission.*",), start="beginning"), now=T0)
    fanout.fan_out(engine, Route("archive", start="beginning"), now=T0)
    return added


def test_list_events_without_payloads_and_with_filters(engine: Engine) -> None:
    """list shows ids, types and per-sink states, newest first, filtered; never payloads."""
    (_s1, id1), (s2, id2), (_s3, id3) = _two_sinks(engine)
    set_state(engine, s2, "archive", "dead", last_error="HTTP 400")
    listed = queries.list_events(engine)
    assert [e.event_id for e in listed] == [id3, id2, id1]
    assert [(d.sink, d.state) for d in listed[2].deliveries] == [
        ("archive", "pending"),
        ("crm", "pending"),
    ]
    assert PATIENT_NAME not in repr(listed)
    dead = queries.list_events(engine, state="dead")
    assert [(e.event_id, e.deliveries[0].last_error) for e in dead] == [(id2, "HTTP 400")]
    crm = queries.list_events(engine, sink="crm")
    assert [(e.event_id, [d.sink for d in e.deliveries]) for e in crm] == [(id1, ["crm"])]
    assert queries.list_events(engine, state="dead", sink="crm") == []
    assert queries.list_events(engine, since=T0 + timedelta(seconds=1)) == []
    assert [e.event_id for e in queries.list_events(engine, limit=1)] == [id3]
    with pytest.raises(ValueError, match="state must be one of"):
        queries.list_events(engine, state="lost")


def test_show_event_includes_the_payload_but_not_in_its_repr(engine: Engine) -> None:
    """show gives the payload (operator's explicit ask) and keeps it out of the repr."""
    (_, id1), _, _ = _two_sinks(engine)
    shown = queries.show_event(engine, id1)
    assert shown is not None
    assert shown.payload == {"n": 0, "name": PATIENT_NAME}
    assert [d.sink for d in shown.deliveries] == ["archive", "crm"]
    assert PATIENT_NAME not in repr(shown)
    assert queries.show_event(engine, "no-such-event") is None


def test_retry_requeues_dead_deliveries_and_reenables_the_sink(engine: Engine) -> None:
    """retry --sink puts its dead deliveries back (fresh budget) and re-enables it."""
    (s1, _), (s2, _), (_s3, _) = _two_sinks(engine)
    for seq in (s1, s2):
        set_state(engine, seq, "archive", "dead", attempts=12, last_error="HTTP 500")
    set_state(engine, s1, "crm", "dead", attempts=3)
    recording.record(engine, "archive", worker="w", actor="t", run_id=None, decisions=[],
                 disable_reason="HTTP 410 Gone")  # fmt: skip
    later = T0 + timedelta(hours=1)
    result = actions.retry(engine, sink="archive", now=later)
    assert result == actions.RetryResult(requeued={"archive": 2}, enabled=("archive",))
    rows = deliveries(engine)
    for seq in (s1, s2):
        row = rows[(seq, "archive")]
        assert (row.state, row.attempts, row.next_attempt_at) == ("pending", 0, later)
        assert row.created_at == later  # the age limit counts afresh
    assert rows[(s1, "crm")].state == "dead"  # another sink: untouched
    assert queries.sink_states(engine)["archive"].disabled_reason is None
    assert [a.object_id for a in audits(engine, "sink.enabled")] == ["archive"]


def test_retry_one_event(engine: Engine) -> None:
    """retry EVENT_ID requeues only that event's dead deliveries, and enables no sink."""
    (s1, id1), (s2, _), _ = _two_sinks(engine)
    set_state(engine, s1, "crm", "dead")
    set_state(engine, s2, "archive", "dead")
    recording.record(engine, "crm", worker="w", actor="t", run_id=None, decisions=[],
                 disable_reason="HTTP 410 Gone")  # fmt: skip
    result = actions.retry(engine, event_id=id1, now=T0)
    assert result == actions.RetryResult(requeued={"crm": 1}, enabled=())
    assert deliveries(engine)[(s2, "archive")].state == "dead"
    assert [(a.object_type, a.object_id) for a in audits(engine, "outbox.retried")] == [
        ("outbox_event", id1)
    ]


def test_replay_requeues_delivered_events_since_a_time(engine: Engine) -> None:
    """replay puts delivered deliveries since a time back to pending, same event ids."""
    old = add_events(engine, ["a.x"], created_at=T0 - timedelta(days=2))
    new = add_events(engine, ["a.x", "a.x"], created_at=T0)
    fanout.fan_out(engine, Route("s", start="beginning"), now=T0)
    for seq, _ in old + new:
        set_state(engine, seq, "s", "delivered", delivered_at=T0, attempts=1)
    set_state(engine, new[1][0], "s", "dead")
    later = T0 + timedelta(hours=1)
    assert actions.replay(engine, since=T0 - timedelta(hours=1), now=later) == {"s": 1}
    rows = deliveries(engine)
    assert rows[(new[0][0], "s")].state == "pending"
    assert rows[(new[0][0], "s")].delivered_at is None
    assert rows[(old[0][0], "s")].state == "delivered"
    assert rows[(new[1][0], "s")].state == "dead"  # dead ones are retry's business
    assert actions.replay(engine, since=T0, sink="other") == {}


def test_replay_with_routes_gives_a_new_sink_its_history(engine: Engine) -> None:
    """A sink added later (start now) gets earlier events it subscribes to on replay."""
    history = add_events(engine, ["form_submission.updated", "message.sent"])
    late = Route("late", ("form_submission.*",))
    fanout.fan_out(engine, late, now=T0)  # starts now: nothing queued
    assert deliveries(engine, "late") == {}
    queued = actions.replay(engine, since=T0 - timedelta(days=1), routes={"late": late}, now=T0)
    assert queued == {"late": 1}
    assert list(deliveries(engine, "late")) == [(history[0][0], "late")]
    # Events after the cursor are left to fan-out (no duplicate row, no PK clash).
    add_events(engine, ["form_submission.updated"])
    assert fanout.fan_out(engine, late, now=T0).queued == 1
    assert actions.replay(engine, since=T0 - timedelta(days=1), routes={"late": late}) == {}


def test_prune_deletes_old_fully_delivered_events_only(engine: Engine) -> None:
    """prune removes old events all of whose deliveries are delivered; keeps the rest."""
    old = add_events(engine, ["a.x"] * 4, created_at=T0 - timedelta(days=20))
    recent = add_events(engine, ["a.x"], created_at=T0 - timedelta(days=1))
    newest = add_events(engine, ["a.x"], created_at=T0 - timedelta(days=30))
    fanout.fan_out(engine, Route("s", start="beginning"), now=T0)
    fanout.fan_out(engine, Route("t", ("none.*",), start="beginning"), now=T0)
    for seq, _ in old + recent + newest:
        set_state(engine, seq, "s", "delivered", delivered_at=T0)
    set_state(engine, old[1][0], "s", "dead")
    set_state(engine, old[2][0], "s", "pending")
    with Session(engine) as session, session.begin():
        session.add(
            SubmissionVersion(
                submission_id="sub-1",
                updated_at="2026-01-01T00:00:00.000Z",
                content_hash="h" * 64,
                event_seq=old[0][0],
                recorded_at=T0,
            )
        )
    assert retention.prune(engine, 14, now=T0) == 2
    with Session(engine) as session:
        left = set(session.scalars(select(OutboxEvent.seq)))
        version = session.scalars(select(SubmissionVersion)).one()
    # Kept: dead, pending, recent, and the newest (old as it is).
    assert left == {old[1][0], old[2][0], recent[0][0], newest[0][0]}
    assert version.event_seq is None  # the dedupe record stays
    assert (old[0][0], "s") not in deliveries(engine)
    [pruned] = audits(engine, "outbox.pruned")
    assert (pruned.detail or "").startswith("events=2 ")


def test_prune_keeps_events_a_sink_has_not_fanned_out(engine: Engine) -> None:
    """An old event past some sink's cursor is kept until that sink's fan-out saw it."""
    add_events(engine, ["a.x"] * 3, created_at=T0 - timedelta(days=20))
    with engine.begin() as conn:
        conn.execute(
            insert(SinkCursor).values(sink="behind", last_xid=0, last_seq=0, updated_at=T0)
        )
    assert retention.prune(engine, 14, now=T0) == 0
    with engine.begin() as conn:
        (last_xid, last_seq) = conn.execute(
            select(OutboxEvent.xid, OutboxEvent.seq).order_by(OutboxEvent.seq.desc()).limit(1)
        ).one()
        conn.execute(update(SinkCursor).values(last_xid=last_xid, last_seq=last_seq))
    assert retention.prune(engine, 14, now=T0, chunk_size=1) == 2  # never the newest
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(OutboxEvent)) == 1


def test_backlog_per_sink(engine: Engine) -> None:
    """backlog counts pending and dead per sink and the oldest pending wait."""
    (s1, _), (s2, _), _ = _two_sinks(engine)
    set_state(engine, s1, "archive", "delivered")
    set_state(engine, s2, "archive", "dead")
    set_state(engine, s1, "crm", "pending", created_at=T0 - timedelta(minutes=10))
    fanout.fan_out(engine, Route("idle", start="now"), now=T0)
    assert queries.backlog(engine, now=T0 + timedelta(seconds=30)) == {
        "archive": queries.SinkBacklog(pending=1, oldest_age_seconds=30.0, dead=1),
        "crm": queries.SinkBacklog(pending=1, oldest_age_seconds=630.0, dead=0),
        "idle": queries.SinkBacklog(pending=0, oldest_age_seconds=0.0, dead=0),
    }


async def test_with_no_sink_the_retention_job_prunes_what_the_event_writers_leave(
    engine: Engine,
) -> None:
    """A daemon with no sink still writes events (poller, SMS, content): `housekeeping`
    deletes those past retention, keeps recent ones, the newest, and any a removed sink
    has yet to deliver."""
    old = add_events(engine, ["form_submission.updated"] * 4)
    fanout.fan_out(engine, Route("gone", start="beginning"), now=T0)  # a sink since removed
    for seq, _ in old[:3]:
        set_state(engine, seq, "gone", "delivered", delivered_at=T0)
    recent = add_events(engine, ["form_submission.updated"], created_at=datetime.now(UTC))
    job = HousekeepingJob(engine, run_history_days=30, outbox_retention_days=14)
    counts = await job.run(None)
    assert counts.events_pruned == 3
    with Session(engine) as session:
        left = set(session.scalars(select(OutboxEvent.seq)))
    assert left == {old[3][0], recent[0][0]}  # the removed sink's pending one, the recent one
