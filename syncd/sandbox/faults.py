"""Fault injection: what can go wrong between a client and Voxares, on demand and seeded.

`FaultConfig` (all off by default) says which faults happen and how often; `FaultInjector`
turns it into a `FaultPlan` per request, drawing from one seeded RNG so a run can be repeated.
The ASGI side (`syncd.sandbox.middleware`) carries the plan out.

The phase of a fault matters for at-most-once SMS: `"before"` means the request was rejected
and never processed (nothing sent); `"after"` means the sandbox processed it (an SMS was
accepted) and then the answer went wrong: an error status, a hang, or a dropped connection.

Faults can be aimed: `rules` are tried in order and the first whose method and path prefix
match a request replaces the top-level per-request faults for it, e.g.
`FaultConfig(rules=[FaultRule(method="POST", path_prefix="/messages/send", drop_rate=1.0,
drop_phase="after")])` loses the answer of every send and of nothing else.

Beyond failures, `FaultConfig` carries what the contract lets a server do with form
submissions (`syncd.sandbox.freedoms.ServerFreedoms`): `updated_at_precision`,
`late_visibility`, `detail_lag_rate`/`detail_lag_versions`, `detail_gone_rate`, `tie_rate`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from syncd.sandbox.freedoms import Rate, ServerFreedoms
from syncd.sandbox.listing import ListOptions, ListOrder

Phase = Literal["before", "after"]
LatencyDistribution = Literal["uniform", "exponential", "normal"]
FaultAction = Literal["error", "hang", "drop", "malformed", "truncated"]


class FaultSpec(BaseModel):
    """Per-request faults. The rates are probabilities of mutually exclusive outcomes."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: float = Field(default=0.0, ge=0.0, description="fixed delay per request")
    latency_jitter_ms: float = Field(default=0.0, ge=0.0, description="spread of extra delay")
    latency_distribution: LatencyDistribution = Field(
        default="uniform",
        description="uniform: +U(0, jitter); exponential: +Exp(mean jitter); "
        "normal: N(latency, jitter) clipped at 0",
    )
    error_rates: dict[int, Rate] = Field(
        default_factory=dict, description="status -> probability, e.g. {500: 0.1, 503: 0.05}"
    )
    error_phase: Phase = "before"
    hang_rate: Rate = 0.0
    hang_seconds: float = Field(default=30.0, ge=0.0)
    hang_phase: Phase = Field(
        default="before",
        description="before: wait, then 504 without processing; after: process, wait, answer",
    )
    drop_rate: Rate = 0.0
    drop_phase: Phase = Field(
        default="before",
        description="before: connection closed, nothing processed; after: processed, then closed",
    )
    malformed_json_rate: Rate = Field(default=0.0, description="processed; 2xx body not JSON")
    truncated_body_rate: Rate = Field(default=0.0, description="processed; body cut in half")

    @field_validator("error_rates")
    @classmethod
    def _error_statuses(cls, rates: dict[int, float]) -> dict[int, float]:
        bad = [status for status in rates if not 400 <= status <= 599]
        if bad:
            raise ValueError(f"error statuses must be 400-599, got {sorted(bad)}")
        return rates

    @model_validator(mode="after")
    def _rates_fit(self) -> Self:
        if self.outcome_total() > 1.0 + 1e-9:
            raise ValueError("the error, hang, drop, malformed and truncated rates sum above 1")
        return self

    def outcome_total(self) -> float:
        """The probability that a request gets any outcome fault."""
        return (
            sum(self.error_rates.values())
            + self.hang_rate
            + self.drop_rate
            + self.malformed_json_rate
            + self.truncated_body_rate
        )

    def is_inert(self) -> bool:
        """Whether this spec never changes a request."""
        return self.latency_ms == 0 and self.latency_jitter_ms == 0 and self.outcome_total() == 0


class FaultRule(FaultSpec):
    """Per-request faults for the requests matching `method` and `path_prefix` only."""

    method: str | None = Field(default=None, description="e.g. POST; None matches any")
    path_prefix: str | None = Field(
        default=None, description="relative to the API base, e.g. /messages/send"
    )

    def matches(self, method: str, path: str) -> bool:
        """Whether a request (path relative to the API base) is aimed at by this rule."""
        if self.method is not None and self.method.upper() != method:
            return False
        return self.path_prefix is None or path.startswith(self.path_prefix)


class RateLimit(BaseModel):
    """A token bucket per API key: `rps` refill, `burst` capacity; 429 with Retry-After."""

    model_config = ConfigDict(extra="forbid")

    rps: float = Field(gt=0.0)
    burst: int = Field(default=1, ge=1)


class FaultConfig(FaultSpec, ServerFreedoms):
    """Every fault the sandbox can inject, all off by default, reproducible by `seed`.

    Per-request faults (`FaultSpec`, `rules`, `rate_limit`) are carried out by the middleware;
    list faults by the handlers; the form-submission freedoms (`ServerFreedoms`: storage
    precision, late visibility, lagging or gone details, ties) by the sandbox's state, which
    the admin API hands this config to (`Sandbox.configure_freedoms`).
    """

    seed: int = 0
    rules: list[FaultRule] = Field(default_factory=list)
    rate_limit: RateLimit | None = None
    retry_after_seconds: int = Field(
        default=1, ge=0, description="Retry-After of injected 429 and 503 answers"
    )
    shuffle_lists: bool = Field(default=False, description="shuffle every list, every request")
    list_order: ListOrder = Field(default="created", description="order of list results")
    clock_offset_seconds: float = Field(default=0.0, description="server clock minus real time")
    mutate_during_paging: Rate = Field(
        default=0.0,
        description="probability that before a form-submissions page after the first, "
        "some submissions are updated or inserted",
    )
    mutate_count: int = Field(default=2, ge=1, le=100)

    def spec_for(self, method: str, path: str) -> FaultSpec:
        """The per-request faults for a request: the first matching rule, else the top level."""
        for rule in self.rules:
            if rule.matches(method, path):
                return rule
        return self

    def plans_nothing(self) -> bool:
        """Whether no request can get a per-request fault (the fast path)."""
        return (
            self.rate_limit is None
            and self.is_inert()
            and all(rule.is_inert() for rule in self.rules)
        )


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """What to do to one request."""

    delay: float = 0.0
    action: FaultAction | None = None
    status: int | None = None
    phase: Phase = "before"
    hang_seconds: float = 0.0
    retry_after: int | None = None

    @property
    def processes(self) -> bool:
        """Whether the request reaches the API logic at all."""
        return self.action is None or self.phase == "after" or self.action in _ALWAYS_AFTER


_ALWAYS_AFTER = frozenset({"malformed", "truncated"})


@dataclass(slots=True)
class TokenBucket:
    """A token bucket: `rate` tokens per second up to `burst`; `take` says how long to wait."""

    rate: float
    burst: int
    tokens: float
    stamp: float

    def take(self, now: float) -> float:
        """Take one token: 0.0 when granted, else the seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class FaultInjector:
    """Draws a `FaultPlan` per request from the current `FaultConfig` and a seeded RNG."""

    def __init__(
        self, config: FaultConfig | None = None, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._monotonic = monotonic
        self.configure(config or FaultConfig())

    def configure(self, config: FaultConfig) -> None:
        """Replace the configuration; the RNG restarts from its seed, buckets start full."""
        self.config = config
        self.rng = random.Random(config.seed)
        self._buckets: dict[str, TokenBucket] = {}
        self.idle = config.plans_nothing()

    def plan(self, method: str, path: str, client: str) -> FaultPlan | None:
        """The faults for one request to `path` (relative to the API base) by `client` (a key)."""
        if self.idle:
            return None
        config = self.config
        if config.rate_limit is not None:
            wait = self._bucket(client, config.rate_limit).take(self._monotonic())
            if wait > 0:
                return FaultPlan(action="error", status=429, retry_after=max(1, math.ceil(wait)))
        spec = config.spec_for(method, path)
        delay = self._delay(spec)
        action, status, phase = self._outcome(spec)
        if action is None and delay == 0:
            return None
        retry_after = config.retry_after_seconds if status in (429, 503) else None
        return FaultPlan(delay, action, status, phase, spec.hang_seconds, retry_after)

    def list_options(self) -> ListOptions:
        """How the next list answer is ordered (and whether it is shuffled)."""
        config = self.config
        return ListOptions(config.list_order, self.rng if config.shuffle_lists else None)

    def should_mutate(self) -> bool:
        """Whether to disturb the submissions before this (non-first) page request."""
        rate = self.config.mutate_during_paging
        return rate > 0 and self.rng.random() < rate

    def _bucket(self, client: str, limit: RateLimit) -> TokenBucket:
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = TokenBucket(limit.rps, limit.burst, float(limit.burst), self._monotonic())
            self._buckets[client] = bucket
        return bucket

    def _delay(self, spec: FaultSpec) -> float:
        base, jitter = spec.latency_ms, spec.latency_jitter_ms
        if jitter == 0:
            return base / 1000
        if spec.latency_distribution == "exponential":
            return (base + self.rng.expovariate(1 / jitter)) / 1000
        if spec.latency_distribution == "normal":
            return max(0.0, self.rng.gauss(base, jitter)) / 1000
        return (base + self.rng.uniform(0, jitter)) / 1000

    def _outcome(self, spec: FaultSpec) -> tuple[FaultAction | None, int | None, Phase]:
        if spec.outcome_total() == 0:
            return None, None, "before"
        roll = self.rng.random()
        for status in sorted(spec.error_rates):
            roll -= spec.error_rates[status]
            if roll < 0:
                return "error", status, spec.error_phase
        choices: tuple[tuple[FaultAction, float, Phase], ...] = (
            ("hang", spec.hang_rate, spec.hang_phase),
            ("drop", spec.drop_rate, spec.drop_phase),
            ("malformed", spec.malformed_json_rate, "after"),
            ("truncated", spec.truncated_body_rate, "after"),
        )
        for action, rate, phase in choices:
            roll -= rate
            if roll < 0:
                return action, None, phase
        return None, None, "before"
