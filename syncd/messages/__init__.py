"""SMS: requests sent at most once, their delivery status followed, sources of requests.

- `requests.submit_request`: record a request (idempotent on its key); nothing is sent.
- `sender.MessageSender`: the `send_messages` job (the at-most-once sequence).
- `resolve.resolve`: a human's decision about an `unknown` (or `failed`) request.
- `status.MessageStatusPoller`: the `message_status` job (changes → outbox events).
- `sources.MessageSourcesJob` / `import_source`: requests from configured CSV/SQL sources.
- `states`: the states, the allowed resolutions, `counts_by_state` and the metric refresh.
"""

from __future__ import annotations

from syncd.messages.requests import submit_request
from syncd.messages.resolve import resolve
from syncd.messages.sender import MessageSender, SendCounts
from syncd.messages.sources import MessageSourcesJob, SourceImport, import_source
from syncd.messages.states import STATES, counts_by_state, refresh_metrics
from syncd.messages.status import MessageStatusPoller, StatusCounts

__all__ = [
    "STATES",
    "MessageSender",
    "MessageSourcesJob",
    "MessageStatusPoller",
    "SendCounts",
    "SourceImport",
    "StatusCounts",
    "counts_by_state",
    "import_source",
    "refresh_metrics",
    "resolve",
    "submit_request",
]
