"""Errors of the shared operations (gateway.ops): what went wrong, in words a user reads, and the HTTP
status the API answers with."""

from __future__ import annotations


class OpError(Exception):
    status = 400
    title = "Bad request"
    kind = "bad-request"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class NotFound(OpError):
    status = 404
    title = "Not found"
    kind = "not-found"


class Invalid(OpError):
    """The request is understood but a value breaks a rule (422)."""

    status = 422
    title = "Invalid value"
    kind = "invalid"


class Conflict(OpError):
    """The change conflicts with the current state (409): a name taken, a row still in use, a key reused."""

    status = 409
    title = "Conflict"
    kind = "conflict"
