"""Structured logging: one pipeline for our own events and for the libraries' stdlib logs.

Every line goes through `structlog` and ends as a JSON object (when stderr is not a
terminal, or `logging.format = "json"`) or a readable console line. uvicorn, alembic,
apscheduler and any other stdlib logger are routed through the same processors.

Before rendering, `redact_patient_data` removes what must never reach a log: values of
keys that name patient fields or secrets, and anything in any string that looks like a
Voxares API key, an E.164 phone number, an email address or a bearer token. It is a safety
net; the rule remains to log ids and counts only.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal, TextIO

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

LogFormat = Literal["auto", "json", "console"]
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
REDACTED = "[redacted]"

# Keys compared after lower-casing and dropping "_" and "-" (so firstName == first_name).
_DENIED_KEYS = frozenset(
    {
        "firstname",
        "lastname",
        "fullname",
        "patientname",
        "dateofbirth",
        "birthdate",
        "dob",
        "data",
        "answers",
        "content",
        "payload",
        "body",
        "apikey",
        "authorization",
        "password",
        "secret",
        "token",
        "cookie",
    }
)
_DENIED_PREFIXES = ("mobile", "phone", "email")

_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bvox-[A-Za-z0-9_\-]+"), "vox-" + REDACTED),
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=\-]+"), "Bearer " + REDACTED),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=]+"), "whsec_" + REDACTED),
    # An address starts at a token boundary, and `line:<n>@<file>` is not one: quarantine
    # keys such as `P1011@line:14@export.csv` (a repeated providerId's row) are locations,
    # and an operator needs them intact to find the row.
    (
        re.compile(
            r"(?<![\w.%+\-])(?!(?<=line:)\d+@)"
            r"[\w.%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"
        ),
        "[email]",
    ),
    # E.164 (+385991234567) and its spaced or dashed forms (+385 99 123 4567).
    (re.compile(r"\+[1-9](?:[ \-.]?\d){6,14}\b"), "[phone]"),
)

# Libraries whose own handlers would bypass our pipeline.
_ROUTED_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "alembic", "apscheduler")
# Libraries that log full URLs (query strings can carry search terms) or chatter at INFO.
_URL_LOGGERS = ("httpx", "httpcore")
_CHATTY_LOGGERS = ("apscheduler", "aio_pika", "aiormq", "alembic")


def _denied(key: str) -> bool:
    normalized = key.lower().replace("_", "").replace("-", "")
    return normalized in _DENIED_KEYS or normalized.startswith(_DENIED_PREFIXES)


def mask_text(text: str) -> str:
    """`text` with anything that looks like a key, token, phone number or email masked."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, Mapping):
        return {k: _redact_item(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return mask_text(str(value))


def _redact_item(key: str, value: Any) -> Any:
    if _denied(key) and value is not None and not isinstance(value, bool):
        return REDACTED
    return _redact_value(value)


def redact_patient_data(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask denied keys (at any depth) and secret-looking strings."""
    for key, value in list(event_dict.items()):
        if key == "_record":  # the stdlib LogRecord the formatter renders from; not output
            continue
        event_dict[key] = _redact_item(key, value)
    return event_dict


@contextmanager
def bind_job(job: str, run_id: int) -> Iterator[None]:
    """Every log line inside the block (and in tasks it starts) carries `job` and `run_id`."""
    with structlog.contextvars.bound_contextvars(job=job, run_id=run_id):
        yield


def drop_color_message(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: drop uvicorn's `color_message` extra (the message again, with
    ANSI colour codes), which would otherwise land in every JSON line uvicorn logs."""
    event_dict.pop("color_message", None)
    return event_dict


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _renderer(fmt: LogFormat, stream: TextIO) -> Processor:
    use_json = fmt == "json" or (fmt == "auto" and not _isatty(stream))
    if use_json:
        return structlog.processors.JSONRenderer()
    # Plain tracebacks: the rich formatter would print local variables, i.e. patient data.
    return structlog.dev.ConsoleRenderer(
        colors=_isatty(stream), exception_formatter=structlog.dev.plain_traceback
    )


def _isatty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class _SyncdHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler we installed, so reconfiguring replaces it and nothing else."""


class _StderrHandler(_SyncdHandler):
    """Writes to whatever `sys.stderr` is at the time of each line, not at set-up.

    A rich progress display swaps `sys.stderr` for a proxy that prints above the live
    spinner; a handler holding the original stream would draw log lines over it.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure_logging(
    level: str = "INFO", fmt: str = "auto", *, stream: TextIO | None = None
) -> None:
    """Send every log line (ours and the libraries') through one redacting pipeline.

    `fmt` is `auto` (JSON unless `stream` is a terminal), `json` or `console`; `stream`
    defaults to stderr. Calling it again replaces the previous setup.
    """
    level_name = level.upper()
    if level_name not in LEVELS:
        raise ValueError(f"unknown log level {level!r}")
    if fmt not in ("auto", "json", "console"):
        raise ValueError(f"unknown log format {fmt!r}")
    out = stream if stream is not None else sys.stderr

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            # Redact before the event leaves structlog, so no other handler sees it raw;
            # the formatter redacts again (exception text, stdlib records).
            redact_patient_data,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: tests (capture_logs) and a reconfiguration must reach every logger.
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            *_shared_processors(),
            structlog.stdlib.ExtraAdder(),
            drop_color_message,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_patient_data,
            _renderer(fmt, out),  # type: ignore[arg-type]
        ],
    )
    handler = _SyncdHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _SyncdHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_name)

    for name in _ROUTED_LOGGERS:
        routed = logging.getLogger(name)
        routed.handlers.clear()
        routed.propagate = True
        routed.setLevel(logging.NOTSET)
    for name in _URL_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    chatty = logging.DEBUG if level_name == "DEBUG" else logging.WARNING
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(chatty)
