"""The operator's queries of the `hl7_inbound` table (`syncd hl7 list|show`)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from syncd.hl7.inbound import (
    Finished,
    Received,
    Status,
    finish,
    list_messages,
    record,
    show_message,
)

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def _receive(engine: Engine, control_id: str, status: Status, raw: bytes = b"MSH|x") -> None:
    message = Received(
        source="mllp",
        sender="LAB^CLINIC",
        control_id=control_id,
        message_type="ADT^A08",
        sent_at=None,
        status=status,
        reason="bad MSH-10" if status == "rejected" else None,
        raw=raw,
    )
    with engine.begin() as conn:
        assert record(conn, message, now=T0 + timedelta(minutes=int(control_id[1:])))


def test_list_is_newest_first_filtered_by_status_and_limited(state_engine: Engine) -> None:
    """`list_messages` returns the newest first, only the status asked for, at most `limit`,
    with header fields and no content."""
    for n, status in enumerate(("pending", "rejected", "pending", "pending"), start=1):
        _receive(state_engine, f"C{n}", status)

    assert [m.control_id for m in list_messages(state_engine)] == ["C4", "C3", "C2", "C1"]
    pending = list_messages(state_engine, status="pending", limit=2)
    assert [(m.control_id, m.status) for m in pending] == [("C4", "pending"), ("C3", "pending")]
    (rejected,) = list_messages(state_engine, status="rejected")
    assert rejected.reason == "bad MSH-10"
    assert list(asdict(rejected)) == [
        "id",
        "status",
        "sender",
        "control_id",
        "message_type",
        "received_at",
        "reason",
    ]


def test_show_gives_the_bytes_while_kept_and_none_for_an_unknown_id(state_engine: Engine) -> None:
    """`show_message` returns a pending message's bytes, no bytes once it was applied, and
    None for an id that does not exist; its repr never shows the bytes."""
    _receive(state_engine, "C1", "pending", raw=b"MSH|^~\\&|PID|Horvat")
    (summary,) = list_messages(state_engine)

    shown = show_message(state_engine, summary.id)
    assert shown is not None
    assert (shown.status, shown.raw) == ("pending", b"MSH|^~\\&|PID|Horvat")
    assert "Horvat" not in repr(shown)

    with state_engine.begin() as conn:
        finish(conn, [Finished(summary.id, "applied")], now=T0 + timedelta(hours=1))
    applied = show_message(state_engine, summary.id)
    assert applied is not None
    assert (applied.status, applied.raw) == ("applied", None)
    assert show_message(state_engine, summary.id + 1) is None
