"""Every error voxares-syncd raises on purpose.

Messages never carry patient data, request bodies or the API key: they name ids, keys of
config, paths and counts only. Library errors (httpx, SQLAlchemy, pika) are translated into
these at the adapter boundary.

    SyncdError
    ├── ConfigError                  bad configuration (exit 78)
    ├── StateError                   the state database
    │   ├── DatabaseNotMigrated      schema missing or behind the code
    │   └── JobLocked                another daemon holds the job's lock
    ├── SourceError                  a patient source cannot be read at all
    ├── VoxaresError                 anything the Voxares API answered or failed to answer
    │   ├── VoxaresTransportError    connect error, timeout, dropped connection
    │   ├── VoxaresMalformedResponse 2xx whose body does not match the contract
    │   ├── SendOutcomeUnknown       an SMS send that may or may not have happened
    │   └── VoxaresHTTPError         an HTTP error status
    │       ├── Unauthorized         401
    │       ├── Forbidden            403
    │       ├── NotFound             404
    │       ├── Conflict             409
    │       ├── Invalid              400 / 422
    │       ├── RateLimited          429
    │       └── ServerError          5xx
    ├── SinkError                    a downstream sink refused or failed a delivery
    ├── MessageRequestError          an SMS request that cannot be sent as asked
    └── PollWindowFailed             a poller window not completed (watermark kept, retried)
        └── WindowUnstable           a window never listed completely
"""

from __future__ import annotations


class SyncdError(Exception):
    """voxares-syncd failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(SyncdError):
    """The configuration is invalid."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems) or "invalid configuration")


class StateError(SyncdError):
    """The state database failed."""


class DatabaseNotMigrated(StateError):
    """The state database is not at the current schema revision: run `syncd db upgrade`."""


class JobLocked(StateError):
    """Another process holds this job's lock."""


class SourceError(SyncdError):
    """The patient source cannot be read."""


class VoxaresError(SyncdError):
    """The Voxares API call failed.

    Carries the HTTP method and the path (never the query string's patient search terms,
    never the body, never the key).
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        method: str = "",
        path: str = "",
        status: int | None = None,
        api_message: str | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.api_message = api_message
        detail = message or (type(self).__doc__ or "").strip()
        where = f"{method} {path}".strip()
        parts = [detail]
        if status is not None:
            parts.append(f"status={status}")
        if where:
            parts.append(f"call={where}")
        if api_message:
            parts.append(f"api_message={api_message!r}")
        super().__init__(" ".join(parts))


class VoxaresTransportError(VoxaresError):
    """The request did not complete (connect error, timeout, dropped connection)."""

    def __init__(self, message: str | None = None, *, reached_server: bool, **kw: object) -> None:
        # reached_server: False only when the request provably never left (connect refused,
        # pool timeout); True when the server may have received it (read timeout, reset).
        self.reached_server = reached_server
        super().__init__(message, **kw)  # type: ignore[arg-type]


class VoxaresMalformedResponse(VoxaresError):
    """The API answered 2xx with a body that does not match the contract."""


class SendOutcomeUnknown(VoxaresError):
    """An SMS send may or may not have been accepted; it must not be retried automatically."""


class VoxaresHTTPError(VoxaresError):
    """The API answered with an error status."""


class Unauthorized(VoxaresHTTPError):
    """401: the API key is missing, wrong or revoked."""


class Forbidden(VoxaresHTTPError):
    """403: the API key lacks the scope this endpoint needs."""


class NotFound(VoxaresHTTPError):
    """404: no such resource."""


class Conflict(VoxaresHTTPError):
    """409: the resource conflicts with an existing one."""


class Invalid(VoxaresHTTPError):
    """400/422: the API rejected the request as invalid."""


class RateLimited(VoxaresHTTPError):
    """429: too many requests."""

    def __init__(
        self, message: str | None = None, *, retry_after: float | None = None, **kw: object
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)  # type: ignore[arg-type]


class ServerError(VoxaresHTTPError):
    """5xx: the API failed."""

    def __init__(
        self, message: str | None = None, *, retry_after: float | None = None, **kw: object
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)  # type: ignore[arg-type]


class SinkError(SyncdError):
    """A downstream sink failed to take an event."""


class MessageRequestError(SyncdError):
    """The SMS request cannot be sent as asked."""


class PollWindowFailed(SyncdError):
    """A poller window could not be completed; its watermark stays and the next run retries."""


class WindowUnstable(PollWindowFailed):
    """A poller window never produced a complete listing."""
