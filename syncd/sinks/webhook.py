"""A sink that POSTs each event to an HTTP endpoint, signed per Standard Webhooks.

Each event is one request whose body is `envelope.to_json()`; the headers `webhook-id`
(the event id, the same on every retry so the receiver can deduplicate),
`webhook-timestamp` and `webhook-signature` follow https://www.standardwebhooks.com/ and
are produced by the `standardwebhooks` library. How an answer maps to an outcome is the
pure function `classify_response`, so the policy is testable without a network.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Final

import httpx
import structlog
from standardwebhooks import Webhook

from syncd.exceptions import ConfigError
from syncd.http_transport import pooled_transport
from syncd.sinks.base import (
    Answered,
    DeadLetter,
    Delivered,
    DeliveryOutcome,
    DisableSink,
    EventEnvelope,
    Retry,
    attempts_for,
    encode_event,
    outcome_counts,
    tell,
)

log = structlog.get_logger(__name__)

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - a prefix, not a secret
# A receiver asking for more than a day is treated as asking for a day: the caller's own
# backoff cap applies past that, and a hostile header must not park an event forever.
MAX_RETRY_AFTER_SECONDS: Final = 86_400.0
# We only need the status; a bounded read of the body lets the connection be reused
# without letting a receiver stream an endless answer at us.
MAX_RESPONSE_BYTES: Final = 64 * 1024
RETRYABLE_STATUSES: Final = frozenset({408, 429})
USER_AGENT: Final = "voxares-syncd"

_DIGITS = re.compile(r"[0-9]+")


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a `Retry-After` header (delay-seconds or HTTP-date).

    A date in the past means 0; an unreadable value means None (no wish expressed).
    """
    if value is None:
        return None
    text = value.strip()
    if _DIGITS.fullmatch(text):
        seconds = float(int(text))
    else:
        try:
            moment = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:  # "-0000" parses naive; HTTP dates are GMT anyway
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - now).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def classify_response(
    status: int,
    headers: Mapping[str, str],
    *,
    attempt: int = 1,
    max_attempts_4xx: int = 1,
    now: datetime | None = None,
) -> DeliveryOutcome:
    """The outcome of one webhook answer.

    2xx is delivered; 410 disables the sink; 408, 429 and 5xx are retried (honouring
    `Retry-After`); any other status (other 4xx, and 1xx/3xx, since redirects are not
    followed) is retried until `attempt` reaches `max_attempts_4xx`, then dead-lettered:
    a receiver that rejects an event may be mid-deploy, but not forever.
    """
    if 200 <= status < 300:
        return Delivered()
    if status == 410:
        return DisableSink("HTTP 410 Gone")
    if status in RETRYABLE_STATUSES or 500 <= status < 600:
        lowered = {key.lower(): val for key, val in headers.items()}
        wait = parse_retry_after(lowered.get("retry-after"), now or datetime.now(UTC))
        return Retry(f"HTTP {status}", wait)
    if attempt >= max_attempts_4xx:
        return DeadLetter(f"HTTP {status} after {attempt} attempts")
    return Retry(f"HTTP {status} (attempt {attempt} of {max_attempts_4xx})")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(sink_name: str, url: str) -> httpx.URL:
    """The parsed endpoint; https is required except for a loopback host.

    Raises ConfigError naming the sink, never the URL (it may carry a token).
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise ConfigError([f"sink {sink_name}: url is not a valid URL"]) from None
    if not parsed.host:
        raise ConfigError([f"sink {sink_name}: url has no host"])
    if parsed.scheme == "https" or (parsed.scheme == "http" and _is_loopback(parsed.host)):
        return parsed
    raise ConfigError([f"sink {sink_name}: url must use https (http only for a loopback host)"])


def _signer(sink_name: str, secret: str) -> Webhook:
    if not secret.startswith(SECRET_PREFIX):
        raise ConfigError([f"sink {sink_name}: secret must start with {SECRET_PREFIX}"])
    try:
        return Webhook(secret)
    except Exception:  # binascii.Error, EmptyWebhookSecretError: never echo the secret
        raise ConfigError(
            [f"sink {sink_name}: secret is not non-empty base64 after {SECRET_PREFIX}"]
        ) from None


class WebhookSink:
    """Delivers events as signed HTTP POSTs, a batch's events concurrently."""

    def __init__(
        self,
        name: str,
        url: str,
        secret: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        max_concurrency: int = 16,
        transport: httpx.AsyncBaseTransport | None = None,
        max_attempts_4xx: int = 3,
    ) -> None:
        if max_concurrency < 1 or max_attempts_4xx < 1:
            raise ConfigError([f"sink {name}: max_concurrency and max_attempts_4xx must be >= 1"])
        self._name = name
        self._url = check_url(name, url)
        self._webhook = _signer(name, secret)
        self._max_attempts_4xx = max_attempts_4xx
        self._semaphore = asyncio.Semaphore(max_concurrency)
        pool = httpx.Limits(
            max_connections=max_concurrency, max_keepalive_connections=max_concurrency
        )
        # The daemon's own pooled transport (syncd.http_transport): one request per
        # connection at a time, a cheap check before an idle connection is reused.
        self._client = httpx.AsyncClient(
            transport=transport or pooled_transport(pool),
            timeout=httpx.Timeout(
                connect=connect_timeout,
                read=read_timeout,
                write=read_timeout,
                pool=connect_timeout,
            ),
            limits=pool,
            follow_redirects=False,
        )

    @property
    def name(self) -> str:
        """The configured sink name."""
        return self._name

    def __repr__(self) -> str:
        # Neither the URL (tokens) nor the secret.
        return f"WebhookSink(name={self._name!r})"

    async def deliver(
        self,
        events: Sequence[EventEnvelope],
        *,
        attempts: Sequence[int] | None = None,
        answered: Answered | None = None,
    ) -> list[DeliveryOutcome]:
        """POST every event, at most `max_concurrency` at a time; one outcome per event,
        each reported to `answered` as its response (or failure) arrives."""
        tries = attempts_for(events, attempts)
        outcomes = list(
            await asyncio.gather(
                *(
                    self._answer_one(position, event, attempt, answered)
                    for position, (event, attempt) in enumerate(zip(events, tries, strict=True))
                )
            )
        )
        log.info("sink.batch", sink=self._name, kind="webhook", **outcome_counts(outcomes))
        return outcomes

    async def _answer_one(
        self, position: int, event: EventEnvelope, attempt: int, answered: Answered | None
    ) -> DeliveryOutcome:
        return tell(answered, position, await self._deliver_one(event, attempt))

    async def _deliver_one(self, event: EventEnvelope, attempt: int) -> DeliveryOutcome:
        try:
            body = encode_event(event)
        except (TypeError, ValueError) as exc:
            return DeadLetter(f"payload is not JSON ({type(exc).__name__})")
        async with self._semaphore:
            headers = self._signed_headers(event.event_id, body)
            try:
                async with self._client.stream(
                    "POST", self._url, content=body.encode(), headers=headers
                ) as response:
                    await _drain(response)
                    status, response_headers = response.status_code, response.headers
            except httpx.RequestError as exc:
                # Timeouts, refused or dropped connections, protocol errors: the receiver
                # may or may not have it; the stable webhook-id lets it deduplicate.
                outcome: DeliveryOutcome = Retry(type(exc).__name__)
            else:
                outcome = classify_response(
                    status,
                    response_headers,
                    attempt=attempt,
                    max_attempts_4xx=self._max_attempts_4xx,
                )
        if not isinstance(outcome, Delivered):
            log.debug(
                "sink.event_not_delivered",
                sink=self._name,
                event_id=event.event_id,
                outcome=type(outcome).__name__,
                reason=outcome.reason,
            )
        return outcome

    def _signed_headers(self, event_id: str, body: str) -> dict[str, str]:
        # Sign with whole seconds so the signed timestamp is exactly the header's value.
        seconds = math.floor(datetime.now(UTC).timestamp())
        signature = self._webhook.sign(event_id, datetime.fromtimestamp(seconds, UTC), body)
        return {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": event_id,
            "webhook-timestamp": str(seconds),
            "webhook-signature": signature,
        }

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.aclose()


async def _drain(response: httpx.Response) -> None:
    """Read at most MAX_RESPONSE_BYTES of the raw body (so a small answer frees the
    connection for reuse) without decoding it: only the status matters."""
    received = 0
    async for chunk in response.aiter_raw():
        received += len(chunk)
        if received > MAX_RESPONSE_BYTES:
            return
