"""Webhook policy without a network: status classification, Retry-After, URL and secret checks."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from syncd.exceptions import ConfigError
from syncd.sinks.base import DeadLetter, Delivered, DisableSink, Retry
from syncd.sinks.webhook import (
    MAX_RETRY_AFTER_SECONDS,
    WebhookSink,
    check_url,
    classify_response,
    parse_retry_after,
)

NOW = datetime(2025, 5, 20, 9, 15, 0, tzinfo=UTC)
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, Delivered()),
        (201, Delivered()),
        (202, Delivered()),
        (204, Delivered()),
        (299, Delivered()),
        (410, DisableSink("HTTP 410 Gone")),
        (408, Retry("HTTP 408")),
        (429, Retry("HTTP 429")),
        (500, Retry("HTTP 500")),
        (502, Retry("HTTP 502")),
        (503, Retry("HTTP 503")),
        (504, Retry("HTTP 504")),
        (599, Retry("HTTP 599")),
    ],
)
def test_status_table(status: int, expected: object) -> None:
    """2xx delivers, 410 disables the sink, 408/429/5xx are retried whatever the attempt."""
    assert classify_response(status, {}, attempt=9, max_attempts_4xx=3, now=NOW) == expected


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422, 301, 302, 100])
def test_other_statuses_retry_until_the_4xx_limit_then_dead_letter(status: int) -> None:
    """Other 4xx (and unfollowed 1xx/3xx) are retried below max_attempts_4xx, then dead."""
    assert classify_response(status, {}, attempt=1, max_attempts_4xx=3, now=NOW) == Retry(
        f"HTTP {status} (attempt 1 of 3)"
    )
    assert classify_response(status, {}, attempt=2, max_attempts_4xx=3, now=NOW) == Retry(
        f"HTTP {status} (attempt 2 of 3)"
    )
    assert classify_response(status, {}, attempt=3, max_attempts_4xx=3, now=NOW) == DeadLetter(
        f"HTTP {status} after 3 attempts"
    )


def test_single_attempt_limit_dead_letters_at_once() -> None:
    """With max_attempts_4xx=1 a 400 is dead on the first try."""
    assert classify_response(400, {}, attempt=1, max_attempts_4xx=1, now=NOW) == DeadLetter(
        "HTTP 400 after 1 attempts"
    )


@pytest.mark.parametrize("status", [408, 429, 503])
def test_retry_after_seconds_is_honoured(status: int) -> None:
    """Retry-After in seconds becomes the retry delay, whatever the header's case."""
    outcome = classify_response(status, {"Retry-After": "120"}, now=NOW)
    assert outcome == Retry(f"HTTP {status}", 120.0)


def test_retry_after_http_date_is_honoured() -> None:
    """Retry-After as an HTTP-date becomes the seconds from now to that date."""
    outcome = classify_response(429, {"retry-after": "Tue, 20 May 2025 09:16:30 GMT"}, now=NOW)
    assert outcome == Retry("HTTP 429", 90.0)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("0", 0.0),
        (" 7 ", 7.0),
        ("Tue, 20 May 2025 09:00:00 GMT", 0.0),  # in the past: now
        ("Tue, 20 May 2025 09:15:10 -0000", 10.0),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
        ("", None),
        ("99999999999", MAX_RETRY_AFTER_SECONDS),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    """Retry-After parses seconds or dates, clamps to [0, a day], and ignores junk."""
    assert parse_retry_after(value, NOW) == seconds


def test_retry_after_is_ignored_on_a_dead_letter() -> None:
    """A 400 with Retry-After still counts toward dead-lettering (no wish honoured)."""
    outcome = classify_response(400, {"Retry-After": "5"}, attempt=1, max_attempts_4xx=2, now=NOW)
    assert outcome == Retry("HTTP 400 (attempt 1 of 2)", None)


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/voxares",
        "http://127.0.0.1:8080/hook",
        "http://127.9.9.9/hook",
        "http://localhost:9000/hook",
        "http://[::1]:9000/hook",
    ],
)
def test_accepted_urls(url: str) -> None:
    """https anywhere, and plain http on loopback hosts only, are accepted."""
    assert str(check_url("crm", url)) == url


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/voxares?token=s3cr3t",
        "http://10.0.0.5/hook?token=s3cr3t",
        "ftp://hooks.example.com/?token=s3cr3t",
        "https:///nohost?token=s3cr3t",
    ],
)
def test_rejected_urls_name_the_sink_not_the_url(url: str) -> None:
    """Non-https remote URLs are a ConfigError naming the sink, not echoing the URL."""
    with pytest.raises(ConfigError) as caught:
        check_url("crm", url)
    assert "crm" in str(caught.value)
    assert "s3cr3t" not in str(caught.value)


@pytest.mark.parametrize("secret", ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_", "whsec_@@@@"])
def test_bad_secrets_are_config_errors_without_the_secret(secret: str) -> None:
    """A secret without the whsec_ prefix, empty or not base64 is refused, never echoed."""
    with pytest.raises(ConfigError) as caught:
        WebhookSink("crm", "https://hooks.example.com/", secret)
    assert "crm" in str(caught.value)
    if len(secret) > len("whsec_"):
        assert secret.removeprefix("whsec_") not in str(caught.value)


async def test_repr_hides_url_and_secret() -> None:
    """The sink's repr shows its name only (URLs can carry tokens)."""
    sink = WebhookSink("crm", "https://hooks.example.com/?token=s3cr3t", SECRET)
    try:
        assert repr(sink) == "WebhookSink(name='crm')"
    finally:
        await sink.aclose()
