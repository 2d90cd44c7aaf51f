"""What the contract lets a real server do with form submissions, as settings (all off).

`shared/voxares-api.md` ("Facts that make polling hard") leaves these to the server, and a
client that is lossless only against a tidy sandbox is not lossless. `ServerFreedoms` lets the
sandbox use each of them; `FaultConfig` (`syncd.sandbox.faults`) inherits these fields, so they
are set with the other faults (`PUT /_sandbox/faults`) and reproducible by its `seed`.

- `updated_at_precision`: "ms" stores `updatedAt` as rendered; "us" stores microseconds (a
  Node + PostgreSQL `timestamp` column): each write gets a random sub-millisecond part, the
  `updatedFrom`/`updatedTo` filters (parsed at ms, as a JavaScript `Date` does) compare with
  the stored value, and JSON still renders milliseconds (floor). A submission stored at
  `…15.123456` is rendered `…15.123Z` and matches neither `updatedTo=…15.123Z` nor
  `updatedFrom=…15.124Z`.
- `late_visibility`: `updatedAt` is stamped when a write starts, and the write becomes visible
  (to the list and the detail) only when it commits: after a delay drawn from a distribution
  (minutes are allowed). Until then readers see the previous visible version, or nothing for a
  new submission. A later write of the same submission never becomes visible before an earlier
  one (it waits for the row, as in a database).
- `detail_lag_rate` / `detail_lag_versions`: a detail read, served by a lagging replica,
  returns a version up to `detail_lag_versions` older than the visible one the list shows.
- `detail_gone_rate`: the submission is deleted just before its detail is read: 404, and gone
  from every later list (ASSUMED: `syncd.voxares.contract.SUBMISSION_DELETION`).
- `tie_rate`: a write takes the millisecond of the practice's previous write (when that is at
  most `TIE_WINDOW` old), so many submissions share one rendered `updatedAt` (with "us" they
  then differ only below the millisecond).
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

Rate = Annotated[float, Field(ge=0.0, le=1.0)]
Precision = Literal["ms", "us"]
DelayDistribution = Literal["fixed", "uniform", "exponential"]

ONE_MS = timedelta(milliseconds=1)
# How far back a tied write may reach for the previous write's millisecond: a tie stands for
# writes that started together, not for a write stamped long before it ran.
TIE_WINDOW = timedelta(seconds=1)
MAX_DELAY_SECONDS = 86_400.0


class LateVisibility(BaseModel):
    """How late a write becomes visible after it was stamped; every delay in [min, max] s."""

    model_config = ConfigDict(extra="forbid")

    rate: Rate = Field(default=0.0, description="probability that a write is late at all")
    distribution: DelayDistribution = Field(
        default="exponential",
        description="fixed: mean_seconds; uniform: U(min_seconds, max_seconds); "
        "exponential: min_seconds + Exp(mean mean_seconds)",
    )
    min_seconds: float = Field(default=0.0, ge=0.0, le=MAX_DELAY_SECONDS)
    mean_seconds: float = Field(default=30.0, ge=0.0, le=MAX_DELAY_SECONDS)
    max_seconds: float = Field(default=600.0, ge=0.0, le=MAX_DELAY_SECONDS)

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.min_seconds > self.max_seconds:
            raise ValueError("min_seconds must not be above max_seconds")
        return self

    def draw(self, rng: random.Random) -> timedelta:
        """The delay of one write (zero when it is not late), rounded up to whole ms."""
        if self.rate == 0 or rng.random() >= self.rate:
            return timedelta(0)
        if self.distribution == "fixed":
            seconds = self.mean_seconds
        elif self.distribution == "uniform":
            seconds = rng.uniform(self.min_seconds, self.max_seconds)
        else:
            extra = rng.expovariate(1 / self.mean_seconds) if self.mean_seconds > 0 else 0.0
            seconds = self.min_seconds + extra
        seconds = min(self.max_seconds, max(self.min_seconds, seconds))
        # Whole milliseconds, so "visible at" rendered by the API's format is exact.
        return timedelta(milliseconds=math.ceil(seconds * 1000))


class ServerFreedoms(BaseModel):
    """The form-submission freedoms the contract leaves to the server (module docstring)."""

    model_config = ConfigDict(extra="forbid")

    updated_at_precision: Precision = Field(
        default="ms", description="how finely updatedAt is stored and compared (JSON: ms)"
    )
    late_visibility: LateVisibility = Field(
        default_factory=LateVisibility, description="writes that become visible late"
    )
    detail_lag_rate: Rate = Field(
        default=0.0, description="probability that a detail read returns an older version"
    )
    detail_lag_versions: int = Field(
        default=1, ge=1, le=100, description="how many versions back a lagging detail is"
    )
    detail_gone_rate: Rate = Field(
        default=0.0, description="probability that a submission is deleted before its detail"
    )
    tie_rate: Rate = Field(
        default=0.0, description="probability that a write shares the previous write's ms"
    )


def to_ms(moment: datetime) -> datetime:
    """`moment` in UTC, truncated to whole milliseconds (the API's rendered precision)."""
    utc = moment.astimezone(UTC)
    return utc.replace(microsecond=utc.microsecond // 1000 * 1000)


def write_millisecond(
    now: datetime,
    previous: datetime | None,
    last_write: datetime | None,
    *,
    tie: bool,
) -> datetime:
    """The millisecond a write is stamped in.

    `now` (whole ms); or, for a `tie`, the millisecond of the practice's `last_write` when it
    is at most `TIE_WINDOW` old. Always after the millisecond of the submission's `previous`
    stamp, so each version of a submission renders a new `updatedAt`.
    """
    moment = now
    if tie and last_write is not None and now - TIE_WINDOW <= _floor(last_write) <= now:
        moment = _floor(last_write)
    if previous is not None and previous >= moment:
        moment = _floor(previous) + ONE_MS
    return moment


def _floor(stamp: datetime) -> datetime:
    # Stamps are UTC already: this runs once per write, so skip `to_ms`'s conversion.
    return stamp.replace(microsecond=stamp.microsecond - stamp.microsecond % 1000)


def stored_stamp(millisecond: datetime, precision: Precision, rng: random.Random) -> datetime:
    """The stored `updatedAt` of a write in `millisecond`: as is, or with random microseconds."""
    if precision == "ms":
        return millisecond
    return millisecond + timedelta(microseconds=rng.randrange(1000))
