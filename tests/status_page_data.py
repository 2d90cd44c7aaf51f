"""Canary patient data and a seeded state database for the status page's tests.

The canary values are unique strings no page would show by accident: if one appears in the
page's HTML, patient data leaked."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from syncd.state.models import (
    JobRun,
    MessageRequest,
    OutboxDelivery,
    OutboxEvent,
    PatientMirror,
    PollerState,
    QuarantinedRow,
    StatusSample,
)

CANARY_ID = "EHR-CANARY-7"
CANARY = {
    "firstName": "Zorblatt",
    "lastName": "Quenchwick",
    "mobileNumber": "+385915550142",
    "email": "zorblatt.quenchwick@canary.example",
    "dateOfBirth": "1961-07-23",
}
CANARY_SMS_TEXT = "Canary reminder Xylophonic appointment"
CANARY_ANSWER = "Canary answer: Marmalade-Umbrella-93"
SMS_KEY = "canary-sms-1"
DEAD_EVENT_ID = "0f1e2d3c-canary-dead-letter"


def canary_values() -> list[str]:
    """Every canary value, and the spellings a page could show them in."""
    values = [*CANARY.values(), CANARY_SMS_TEXT, CANARY_ANSWER]
    values += [CANARY["mobileNumber"].lstrip("+"), "23.07.1961", "Zorblatt Quenchwick"]
    return values


def seed(engine: Engine, now: datetime) -> None:
    """A canary patient, a quarantined row, an SMS in `unknown` (its text a canary), a dead
    letter whose payload holds the canary's answer, job runs (one job failing)."""
    with Session(engine) as session, session.begin():
        session.add(
            PatientMirror(
                provider="voxares-syncd",
                provider_id=CANARY_ID,
                voxares_patient_id="pat-canary",
                payload_hash="0" * 64,
                source_row_hash="1" * 64,
                payload=json.dumps({"providerId": CANARY_ID, **CANARY}),
                state="active",
                first_pushed_at=now,
                last_pushed_at=now,
                last_seen_at=now,
            )
        )
        session.add(
            QuarantinedRow(
                source="ehr-export",
                row_key="EHR-BROKEN-3",
                line_number=4,
                field="email",
                reason="email: not a valid address",
                row_hash="2" * 64,
                first_seen_at=now,
                last_seen_at=now,
            )
        )
        session.add(
            MessageRequest(
                key=SMS_KEY,
                origin="cli",
                provider="voxares-syncd",
                provider_id=CANARY_ID,
                content=CANARY_SMS_TEXT,
                state="unknown",
                error="ReadTimeout after the send",
                created_at=now,
                updated_at=now,
            )
        )
        event = OutboxEvent(
            event_id=DEAD_EVENT_ID,
            event_type="form_submission.updated",
            ordering_key=CANARY_ID,
            payload=json.dumps({"answers": [CANARY_ANSWER], "patient": CANARY}),
            created_at=now,
        )
        session.add(event)
        session.flush()
        session.add(
            OutboxDelivery(
                event_seq=event.seq,
                sink="files",
                state="dead",
                attempts=12,
                next_attempt_at=now,
                last_error="HTTP 500",
                created_at=now,
            )
        )
        session.add(PollerState(stream="form_submissions", watermark=now, updated_at=now))
        for minutes, job, outcome in (
            (30, "push_patients", "ok"),
            (20, "push_patients", "ok"),
            (25, "poll_submissions", "ok"),
            (10, "poll_submissions", "failed"),
        ):
            start = now - timedelta(minutes=minutes)
            session.add(
                JobRun(
                    job=job,
                    started_at=start,
                    finished_at=start + timedelta(seconds=3),
                    outcome=outcome,
                    counts=json.dumps({"rows": 4}),
                    error="VoxaresUnavailable: HTTP 503" if outcome == "failed" else None,
                )
            )


def seed_samples(engine: Engine, times: list[datetime], *, metric: str, subject: str) -> None:
    """One sample of `metric` for `subject` at each of `times` (value: its index)."""
    with Session(engine) as session, session.begin():
        session.add_all(
            StatusSample(taken_at=t, metric=metric, subject=subject, value=float(i))
            for i, t in enumerate(times)
        )


def hours_ago(now: datetime, *hours: float) -> list[datetime]:
    return [now - timedelta(hours=h) for h in hours]


NOW = datetime(2026, 12, 4, 12, 7, tzinfo=UTC)
