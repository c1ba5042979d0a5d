"""Errors the controller's operations raise; the HTTP layer maps them to statuses.

``Invalid`` → 400, ``Forbidden`` → 403, ``NotFound`` → 404, ``Conflict`` → 409.
Each carries a message written for the reader (an operator or a model).
"""

from __future__ import annotations


class HyperhiveError(Exception):
    """Base class; ``code`` is the machine-readable error code in the JSON body."""

    code = "error"
    status = 500

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class Invalid(HyperhiveError):
    """Bad input; ``field`` names the offending field when there is one."""

    code = "invalid"
    status = 400


class Forbidden(HyperhiveError):
    """Not allowed for this caller (e.g. a recipient outside ``allowedRecipients``)."""

    code = "forbidden"
    status = 403


class NotFound(HyperhiveError):
    """No such agent, proposal, thread or question."""

    code = "not_found"
    status = 404


class Conflict(HyperhiveError):
    """The thing exists but its state forbids the request (e.g. a proposal already decided)."""

    code = "conflict"
    status = 409


class TransientError(HyperhiveError):
    """A runtime failure worth retrying with backoff (process failed to start, build timed out)."""

    code = "transient"


class PermanentError(HyperhiveError):
    """A runtime failure that will not fix itself: Stalled until desired state changes."""

    code = "permanent"
