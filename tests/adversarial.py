"""A form-submissions server written from the contract alone, independent of `syncd.sandbox`.

The sandbox and the poller were written by the same team and may share an assumption; a
test of one by the other then proves nothing. This server is small and takes every freedom
`docs` of the contract allow (see the form-submission facts in the API contract):

- `updatedAt` stored in microseconds (or milliseconds) and compared as stored by the
  inclusive `updatedFrom`/`updatedTo` filters, rendered with milliseconds (floor or round);
- an undocumented order: every list answer shuffled;
- offset paging while the data moves: the server's clock advances with every request and
  writes become visible as it passes them;
- late visibility: a write is stamped when it starts and becomes visible later;
- a lagging detail replica: a detail read may return the previous visible version, or 404
  for a submission the replica does not hold yet.

It answers through `httpx.MockTransport`, so the real `VoxaresClient` runs on top.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any, Literal
from urllib.parse import parse_qs

import httpx

EPOCH = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
PREFIX = "/api/v1/integration"


def at_us(us: int) -> datetime:
    """The moment `us` microseconds after EPOCH."""
    return EPOCH + timedelta(microseconds=us)


def render(us: int, rounding: Literal["floor", "round"]) -> str:
    """An API timestamp with milliseconds, as a server rendering a finer value would."""
    ms = us // 1000 if rounding == "floor" else (us + 500) // 1000
    moment = at_us(ms * 1000)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def parse_filter(text: str) -> int:
    """A filter bound in microseconds after EPOCH (the API parses milliseconds)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (moment - EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True)
class Write:
    """One write of a submission: its status, stamped at `stamp_us`, visible at `visible_us`."""

    submission_id: str
    stamp_us: int
    visible_us: int
    status: str


@dataclass
class AdversarialServer:
    """The server; `writes` per submission are in stamp order with non-decreasing visibility."""

    writes: dict[str, list[Write]]
    rng: random.Random
    precision_us: int = 1  # 1: microseconds stored; 1000: milliseconds
    rounding: Literal["floor", "round"] = "floor"
    tick_us: int = 3000  # the clock moves up to this much per request
    shuffle: bool = True  # False: a stable order (by id), as many servers give
    detail_lag_rate: float = 0.0
    clock_us: int = 0
    requests: dict[str, int] = field(default_factory=lambda: {"list": 0, "detail": 0})

    def transport(self) -> httpx.MockTransport:
        """The transport to hand to `VoxaresClient`."""
        return httpx.MockTransport(self._answer)

    def stored(self, write: Write) -> int:
        """The stamp as the database keeps it."""
        return write.stamp_us - write.stamp_us % self.precision_us

    def visible(self, submission_id: str, *, lag: int = 0) -> Write | None:
        """The newest write visible now, or `lag` writes before it (a replica behind)."""
        seen = [w for w in self.writes[submission_id] if w.visible_us <= self.clock_us]
        if len(seen) <= lag:
            return None
        return seen[-1 - lag]

    def final(self) -> dict[str, str]:
        """Each submission's last write as a reader sees it once everything is visible."""
        return {sid: render(self.stored(ws[-1]), self.rounding) for sid, ws in self.writes.items()}

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.clock_us += self.rng.randrange(0, self.tick_us + 1)
        path = request.url.path.removeprefix(PREFIX)
        if path == "/form-submissions":
            self.requests["list"] += 1
            return self._list(parse_qs(request.url.query.decode()))
        if path.startswith("/form-submissions/"):
            self.requests["detail"] += 1
            return self._detail(path.removeprefix("/form-submissions/"))
        return self._json(404, {"statusCode": 404, "message": "Not Found", "error": "Not Found"})

    def _list(self, query: dict[str, list[str]]) -> httpx.Response:
        low = parse_filter(query["updatedFrom"][0]) if "updatedFrom" in query else None
        high = parse_filter(query["updatedTo"][0]) if "updatedTo" in query else None
        page = int(query.get("page", ["0"])[0])
        size = int(query.get("pageSize", ["20"])[0])
        rows = []
        for sid in self.writes:
            write = self.visible(sid)
            if write is None:
                continue
            stored = self.stored(write)
            if (low is None or stored >= low) and (high is None or stored <= high):
                rows.append(write)
        if self.shuffle:
            self.rng.shuffle(rows)
        else:
            rows.sort(key=lambda w: w.submission_id)
        chosen = rows[page * size : (page + 1) * size]
        return self._json(200, {"data": [self._item(w) for w in chosen], "count": len(rows)})

    def _detail(self, submission_id: str) -> httpx.Response:
        if submission_id not in self.writes:
            return self._json(404, {"statusCode": 404, "message": "Not Found"})
        lag = 1 if self.rng.random() < self.detail_lag_rate else 0
        write = self.visible(submission_id, lag=lag)
        if write is None:
            return self._json(404, {"statusCode": 404, "message": "Not Found"})
        return self._json(200, {**self._item(write), "data": {"status": write.status}})

    def _item(self, write: Write) -> dict[str, Any]:
        rendered = render(self.stored(write), self.rounding)
        return {
            "id": write.submission_id,
            "submissionStatus": write.status,
            "createdAt": rendered,
            "updatedAt": rendered,
            "patient": {"id": "pat-" + write.submission_id, "firstName": "", "lastName": ""},
            "form": {"id": "form-1", "displayName": "Intake"},
        }

    def _json(self, status: int, body: Any) -> httpx.Response:
        date = format_datetime(at_us(self.clock_us), usegmt=True)
        return httpx.Response(status, content=json.dumps(body), headers={"Date": date})
