"""Error answers of the emulated API, shaped like the NestJS bodies Voxares sends.

Every error body is `{"statusCode": 400, "message": ..., "error": "Bad Request"}` where
`message` is a string, or a list of strings for validation errors. Messages name fields and
ids, never the values a client sent (those may be patient data).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any


def reason_phrase(status: int) -> str:
    """The standard reason phrase of a status (`Bad Request` for 400)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_body(status: int, message: str | list[str]) -> dict[str, Any]:
    """The contract's error body for `status`."""
    return {"statusCode": status, "message": message, "error": reason_phrase(status)}


class ApiError(Exception):
    """An error the emulated API answers with; raised by the state logic, rendered by the app."""

    def __init__(
        self, status: int, message: str | list[str], headers: dict[str, str] | None = None
    ) -> None:
        self.status = status
        self.message = message
        self.headers = headers or {}
        super().__init__(f"{status} {reason_phrase(status)}")

    def body(self) -> dict[str, Any]:
        """The JSON body of this error."""
        return error_body(self.status, self.message)


def not_found(what: str) -> ApiError:
    """404 for a resource of kind `what` (e.g. `Patient`) that does not exist in the practice."""
    return ApiError(404, f"{what} not found")


def invalid(messages: list[str], status: int = 400) -> ApiError:
    """A validation error with a NestJS-style list of messages."""
    return ApiError(status, messages)
