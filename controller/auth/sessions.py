"""The dashboard's login: one-time login tokens and signed session cookies.

Jupyter-style: ``hyperhive dashboard`` (or ``hyperhive serve`` at start) asks
``host.sock`` for a login token and prints ``http://<dashboard>/login?token=…``;
opening it redeems the token (``LoginTokens.redeem``, once, within 10
minutes) and sets a session cookie (``SessionSigner.issue``): HttpOnly,
SameSite=Strict, valid 30 days.

Session values are stateless, so they survive a controller restart:
``v1.<expires unix seconds>.<nonce>.<mac>`` where ``mac`` is HMAC-SHA256 over
``v1.<expires>.<nonce>`` with a key derived from the operator key. Replacing
the operator key therefore logs every browser out. There is no server-side
revocation list short of that.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

LOGIN_TTL_SECONDS = 600.0
"""A login token is redeemable for 10 minutes."""

MAX_LOGIN_TOKENS = 64
"""Unredeemed login tokens kept at once; issuing more drops the oldest."""

SESSION_TTL_SECONDS = 30 * 86400
"""A session cookie is valid for 30 days."""

SESSION_COOKIE = "hyperhive_session"
"""The cookie name the dashboard uses."""

MAX_SESSION_VALUE = 200
"""Longer cookie values are refused unparsed."""

_VERSION = "v1"
_CONTEXT = b"hyperhive dashboard session v1"


@dataclass(frozen=True)
class LoginToken:
    """A one-time login token and when it stops working (unix seconds)."""

    token: str
    expires_at: float


class LoginTokens:
    """One-time dashboard login tokens, in memory: single use, ``ttl`` seconds (default 600).

    A controller restart forgets them (the operator asks for a new one).
    Thread-safe; ``clock`` returns unix seconds.
    """

    def __init__(
        self, ttl: float = LOGIN_TTL_SECONDS, clock: Callable[[], float] = time.time
    ) -> None:
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[bytes, float] = {}  # sha256(token) → expiry, oldest first

    def issue(self) -> LoginToken:
        """A fresh token valid for ``ttl`` seconds."""
        token = secrets.token_urlsafe(32)
        now = self._clock()
        with self._lock:
            self._prune(now)
            while len(self._tokens) >= MAX_LOGIN_TOKENS:
                del self._tokens[next(iter(self._tokens))]
            self._tokens[_sha(token)] = now + self.ttl
        return LoginToken(token, now + self.ttl)

    def redeem(self, token: str | None) -> bool:
        """True (once) for an issued, unexpired token; it is used up either way."""
        if not token or len(token) > 256 or not token.isascii():
            return False
        with self._lock:
            expires = self._tokens.pop(_sha(token), None)
        return expires is not None and self._clock() < expires

    def pending(self) -> int:
        """Unredeemed, unexpired tokens (for tests and status)."""
        with self._lock:
            self._prune(self._clock())
            return len(self._tokens)

    def _prune(self, now: float) -> None:
        for key in [k for k, exp in self._tokens.items() if exp <= now]:
            del self._tokens[key]


def _sha(token: str) -> bytes:
    # keyed by digest: dict lookups then leak nothing useful about the token through timing
    return hashlib.sha256(token.encode("ascii")).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class SessionSigner:
    """Signs and checks dashboard session cookie values with the operator key.

    ``ttl`` seconds (default 30 days); ``clock`` returns unix seconds.
    Raises ``ValueError`` for an empty operator key.
    """

    def __init__(
        self,
        operator_key: str,
        ttl: float = SESSION_TTL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not operator_key:
            raise ValueError("operator_key must not be empty")
        # a derived key: a leaked cookie MAC says nothing about the host.sock bearer
        self._key = hmac.new(operator_key.encode(), _CONTEXT, hashlib.sha256).digest()
        self.ttl = ttl
        self._clock = clock

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).digest())

    def issue(self) -> str:
        """A new session value, valid ``ttl`` seconds from now."""
        payload = f"{_VERSION}.{int(self._clock() + self.ttl)}.{secrets.token_urlsafe(16)}"
        return f"{payload}.{self._mac(payload)}"

    def expires_at(self, value: str | None) -> float | None:
        """When a valid session ``value`` expires (unix seconds), or None if it is not valid:
        malformed, signed with another key, or expired."""
        if not value or len(value) > MAX_SESSION_VALUE or not value.isascii():
            return None
        payload, _, mac = value.rpartition(".")
        parts = payload.split(".")
        if len(parts) != 3 or parts[0] != _VERSION:
            return None
        if not hmac.compare_digest(self._mac(payload).encode(), mac.encode()):
            return None
        if not parts[1].isdigit() or len(parts[1]) > 12:
            return None
        expires = float(parts[1])
        return expires if self._clock() < expires else None

    def verify(self, value: str | None) -> bool:
        """True for a session value this signer issued that has not expired."""
        return self.expires_at(value) is not None
