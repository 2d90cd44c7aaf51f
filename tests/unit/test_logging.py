"""Logging: the redaction processor, job context, and the rendered pipeline."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from syncd.logging import bind_job, configure_logging, mask_text, redact_patient_data

KEY = "vox-k1-Sup3rSecretKeyMaterial"
PHONE = "+385991234567"
EMAIL = "ana.horvat@example.hr"
NAME = "Ana Horvat"


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """Each test starts and ends with structlog's defaults and the root logger as found."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers[:] = handlers
    root.setLevel(level)


def render(fmt: str = "json", level: str = "INFO") -> io.StringIO:
    stream = io.StringIO()
    configure_logging(level, fmt, stream=stream)
    return stream


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line]


# --- the redaction processor (through capture_logs) ------------------------------------------


def test_patient_fields_are_redacted_whatever_their_spelling() -> None:
    """Keys naming patient fields or secrets are masked, in snake_case and camelCase."""
    with capture_logs(processors=[redact_patient_data]) as logs:
        structlog.get_logger().info(
            "patients.pushed",
            first_name="Ana",
            lastName="Horvat",
            mobileNumber=PHONE,
            mobile_number_raw="099 123 4567",
            phone="099",
            email=EMAIL,
            date_of_birth="1990-01-15",
            dateOfBirth="1990-01-15",
            dob="1990",
            data={"a": 1},
            answers=["yes"],
            content="Hi Ana",
            payload="{}",
            api_key=KEY,
            authorization="Bearer x",
            provider_id="P-17",
            created=3,
        )
    (entry,) = logs
    masked = set(entry) - {"event", "log_level", "provider_id", "created"}
    assert {entry[key] for key in masked} == {"[redacted]"}
    assert entry["provider_id"] == "P-17"
    assert entry["created"] == 3


def test_nested_values_are_redacted() -> None:
    """Denied keys inside dicts and lists are masked too; other keys keep their values."""
    with capture_logs(processors=[redact_patient_data]) as logs:
        structlog.get_logger().info(
            "submission.fetched",
            submission={"id": "s-1", "patient": {"firstName": "Ana", "id": "p-1"}},
            rows=[{"email": EMAIL, "line": 4}],
        )
    (entry,) = logs
    assert entry["submission"] == {"id": "s-1", "patient": {"firstName": "[redacted]", "id": "p-1"}}
    assert entry["rows"] == [{"email": "[redacted]", "line": 4}]


def test_secret_looking_strings_are_masked_anywhere() -> None:
    """Keys, bearer tokens, phone numbers and emails are masked inside any string value."""
    message = f"POST failed for {EMAIL} at {PHONE} / +385 99 123 4567 with Bearer {KEY}"
    with capture_logs(processors=[redact_patient_data]) as logs:
        structlog.get_logger().warning(message, reason=f"key {KEY} rejected", note=[PHONE])
    (entry,) = logs
    text = json.dumps(entry)
    for secret in (EMAIL, PHONE, "+385 99 123 4567", KEY, "Sup3rSecret"):
        assert secret not in text
    assert entry["reason"] == "key vox-[redacted] rejected"
    assert entry["note"] == ["[phone]"]


def test_ids_counts_and_timestamps_are_kept() -> None:
    """Masking leaves ids, counts, UUIDs and ISO timestamps (with offsets) alone."""
    text = "run 42 at 2025-05-20T09:15:00.000+02:00 submission 3f1c9a2e-1b2c-4d5e-8f90-123456789abc"
    assert mask_text(text) == text
    assert mask_text("count=1234567") == "count=1234567"


def test_none_and_booleans_under_denied_keys_are_kept() -> None:
    """Whether a field was present is not patient data: None and booleans pass."""
    with capture_logs(processors=[redact_patient_data]) as logs:
        structlog.get_logger().info("row", email=None, mobile_valid=True)
    assert logs[0]["email"] is None
    assert logs[0]["mobile_valid"] is True


# --- job context -------------------------------------------------------------------------------


def test_bind_job_tags_every_line_and_unbinds_after() -> None:
    """Inside bind_job every line carries job and run_id; after it, none does."""
    log = structlog.get_logger()
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        with bind_job("patients", 7):
            log.info("job.started")
            log.info("patients.pushed", created=1)
        log.info("after")
    assert [(e.get("job"), e.get("run_id")) for e in logs] == [
        ("patients", 7),
        ("patients", 7),
        (None, None),
    ]


async def test_bind_job_reaches_tasks_started_inside() -> None:
    """Tasks spawned inside a job run inherit its job and run_id; concurrent runs do not mix."""
    log = structlog.get_logger()

    async def run(job: str, run_id: int) -> None:
        with bind_job(job, run_id):
            await asyncio.create_task(asyncio.sleep(0))
            await asyncio.create_task(_log_later(log))

    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        await asyncio.gather(run("patients", 1), run("submissions", 2))
    assert sorted((e["job"], e["run_id"]) for e in logs) == [("patients", 1), ("submissions", 2)]


async def _log_later(log: Any) -> None:
    await asyncio.sleep(0)
    log.info("inner")


# --- the real pipeline -----------------------------------------------------------------------


def test_json_lines_carry_level_time_logger_and_job() -> None:
    """fmt=json renders one JSON object per line with level, timestamp, logger and context."""
    stream = render("json")
    with bind_job("patients", 9):
        structlog.get_logger("syncd.patients").info("patients.pushed", created=2)
    (entry,) = lines(stream)
    assert entry["event"] == "patients.pushed"
    assert entry["level"] == "info"
    assert entry["logger"] == "syncd.patients"
    assert entry["job"] == "patients"
    assert entry["run_id"] == 9
    assert entry["created"] == 2
    assert entry["timestamp"].endswith("Z")


def test_rendered_lines_are_redacted() -> None:
    """The configured pipeline masks patient data before rendering."""
    stream = render("json")
    structlog.get_logger().info("patient", firstName=NAME, note=f"call {PHONE}")
    output = stream.getvalue()
    assert NAME not in output
    assert PHONE not in output
    assert lines(stream)[0]["firstName"] == "[redacted]"


def test_stdlib_loggers_go_through_the_same_pipeline() -> None:
    """uvicorn, alembic and apscheduler records come out as redacted JSON with the context."""
    stream = render("json")
    with bind_job("content", 3):
        logging.getLogger("uvicorn.error").error("client %s sent %s", "1.2.3.4", EMAIL)
        # alembic's info lines are muted outside DEBUG (one line per job run in the journal).
        logging.getLogger("alembic.runtime.migration").info("Context impl SQLiteImpl.")
        logging.getLogger("alembic.runtime.migration").warning("Running upgrade -> 0001")
    first, second = lines(stream)
    assert first["logger"] == "uvicorn.error"
    assert first["level"] == "error"
    assert first["event"] == "client 1.2.3.4 sent [email]"
    assert first["job"] == "content"
    assert second["logger"] == "alembic.runtime.migration"


def test_exceptions_are_rendered_and_masked() -> None:
    """An exception's traceback is in the line, with secrets in its message masked."""
    stream = render("json")
    try:
        raise RuntimeError(f"refused {KEY}")
    except RuntimeError:
        structlog.get_logger().exception("job.failed")
    (entry,) = lines(stream)
    assert "RuntimeError: refused vox-[redacted]" in entry["exception"]
    assert KEY not in stream.getvalue()


def test_level_filters_ours_and_theirs() -> None:
    """Below the configured level nothing is written, from structlog or stdlib."""
    stream = render("json", level="warning")
    structlog.get_logger().info("quiet")
    logging.getLogger("uvicorn.error").info("quiet too")
    structlog.get_logger().warning("loud")
    assert [e["event"] for e in lines(stream)] == ["loud"]


def test_url_logging_libraries_are_kept_quiet_even_at_debug() -> None:
    """httpx's INFO lines (full URLs, query strings) are not written."""
    stream = render("json", level="DEBUG")
    logging.getLogger("httpx").info("HTTP Request: GET https://x/patients?searchTerm=Ana")
    structlog.get_logger().debug("shown")
    assert [e["event"] for e in lines(stream)] == ["shown"]


def test_console_format_is_not_json() -> None:
    """fmt=console renders readable key=value lines, still redacted."""
    stream = render("console")
    structlog.get_logger().info("patients.pushed", created=2, email=EMAIL)
    output = stream.getvalue()
    assert "patients.pushed" in output
    assert "created=2" in output
    assert EMAIL not in output
    with pytest.raises(json.JSONDecodeError):
        json.loads(output.splitlines()[0])


def test_auto_format_is_json_when_not_a_terminal() -> None:
    """fmt=auto writes JSON to a stream that is not a TTY."""
    stream = render("auto")
    structlog.get_logger().info("hello")
    assert lines(stream)[0]["event"] == "hello"


def test_reconfiguring_replaces_the_handler() -> None:
    """A second configure_logging call does not duplicate lines."""
    render("json")
    stream = render("json")
    structlog.get_logger().info("once")
    assert len(lines(stream)) == 1
    ours = [h for h in logging.getLogger().handlers if type(h).__name__ == "_SyncdHandler"]
    assert len(ours) == 1


@pytest.mark.parametrize(("level", "fmt"), [("LOUD", "json"), ("INFO", "xml")])
def test_bad_level_or_format_is_refused(level: str, fmt: str) -> None:
    """An unknown level or format raises ValueError instead of logging nothing."""
    with pytest.raises(ValueError, match="unknown log"):
        configure_logging(level, fmt, stream=io.StringIO())


# --- issue 11: locations, uvicorn's colours, the progress display -------------------------------


@pytest.mark.parametrize("location", ["P1011@line:14@ehr-export.csv", "line:14@ehr-export.csv"])
def test_duplicate_row_locations_survive_the_redactor(location: str) -> None:
    """A quarantine key `P1011@line:14@file.csv` is a location, not an email: it is kept."""
    stream = render("json")
    structlog.get_logger().warning("patients.duplicate", row=location, note=f"{location} {EMAIL}")
    (entry,) = lines(stream)
    assert entry["row"] == location
    assert entry["note"] == f"{location} [email]"
    assert mask_text(f"line:{EMAIL}") == "line:[email]"


def test_uvicorn_colour_message_is_not_in_json_lines() -> None:
    """uvicorn's `color_message` extra (ANSI codes) is dropped; its plain message is kept."""
    stream = render("json")
    logging.getLogger("uvicorn.error").info(
        "Started server process [%d]",
        42,
        extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]"},
    )
    (entry,) = lines(stream)
    assert entry["event"] == "Started server process [42]"
    assert "color_message" not in entry
    assert "\\u001b" not in stream.getvalue()


def test_log_lines_go_above_a_progress_display(monkeypatch: pytest.MonkeyPatch) -> None:
    """Logging to stderr follows rich's stderr redirect, so lines print above the spinner."""
    from rich.console import Console
    from rich.progress import Progress

    monkeypatch.setattr("sys.stderr", io.StringIO())
    configure_logging("INFO", "json")
    screen = io.StringIO()
    with Progress(console=Console(file=screen, force_terminal=True, width=100)) as bar:
        bar.add_task("rows read: 0", total=None)
        structlog.get_logger().info("patients.batch_pushed", created=7)
    assert "patients.batch_pushed" in screen.getvalue()
