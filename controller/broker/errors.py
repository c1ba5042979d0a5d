"""The broker's own errors (the request errors are ``controller.errors``)."""

from __future__ import annotations

from controller.errors import HyperhiveError


class BrokerClosed(RuntimeError):
    """The broker was closed; the controller is shutting down."""


class BrokerStorageError(HyperhiveError):
    """The database cannot be read or written (read-only, I/O error, damaged, locked,
    unreachable): 503.

    The transaction was rolled back: nothing of the request was stored. The API layer
    answers ``status`` with ``{"error": {"code", "message"}}`` (a ``HyperhiveError``).
    """

    code = "storage_unavailable"
    status = 503


class BrokerDiskFull(BrokerStorageError):
    """The disk (or the database's size limit) is full: 507, nothing was stored."""

    code = "insufficient_storage"
    status = 507
