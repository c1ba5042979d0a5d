"""``Authorization: Bearer <token>`` parsing, shared by every authenticated surface."""

from __future__ import annotations

MAX_TOKEN = 256
"""Longer bearer tokens are refused unread (ours are 43 characters)."""


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else None.

    The scheme is case-insensitive (RFC 7235); a missing header, another
    scheme, an empty, non-ASCII or over-long token gives None.
    """
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN:
        return None
    if not token.isascii() or not token.isprintable():
        return None
    return token
