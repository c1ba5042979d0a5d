"""Pure parts of ``controller.auth``: login tokens, session signing, bearer parsing."""

from __future__ import annotations

from controller.auth import LoginTokens, SessionSigner, bearer_token
from controller.auth.sessions import LOGIN_TTL_SECONDS, MAX_LOGIN_TOKENS, SESSION_TTL_SECONDS

KEY = "k" * 43


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_login_token_is_single_use() -> None:
    tokens = LoginTokens()
    t = tokens.issue()
    assert len(t.token) >= 40 and tokens.pending() == 1
    assert tokens.redeem(t.token) is True
    assert tokens.redeem(t.token) is False
    assert tokens.pending() == 0


def test_login_token_expires_after_ten_minutes() -> None:
    clock = Clock()
    tokens = LoginTokens(clock=clock)
    t = tokens.issue()
    assert t.expires_at == clock.now + LOGIN_TTL_SECONDS == clock.now + 600
    clock.now += 599
    other = tokens.issue()
    clock.now += 2
    assert tokens.redeem(t.token) is False  # expired, and used up anyway
    assert tokens.redeem(other.token) is True


def test_login_tokens_refuse_junk_and_stay_bounded() -> None:
    tokens = LoginTokens()
    for junk in (None, "", "x" * 1000, "caf\u00e9", "\ud800"):
        assert tokens.redeem(junk) is False
    issued = [tokens.issue() for _ in range(MAX_LOGIN_TOKENS + 5)]
    assert tokens.pending() == MAX_LOGIN_TOKENS
    assert tokens.redeem(issued[0].token) is False  # the oldest were dropped
    assert tokens.redeem(issued[-1].token) is True


def test_session_roundtrip_and_expiry() -> None:
    clock = Clock()
    signer = SessionSigner(KEY, clock=clock)
    value = signer.issue()
    assert signer.verify(value)
    assert signer.expires_at(value) == int(clock.now + SESSION_TTL_SECONDS)
    # a restarted controller (a new signer with the same key) still accepts it
    assert SessionSigner(KEY, clock=clock).verify(value)
    clock.now += SESSION_TTL_SECONDS + 1
    assert not signer.verify(value)


def test_session_is_bound_to_the_operator_key() -> None:
    value = SessionSigner(KEY).issue()
    assert not SessionSigner("j" * 43).verify(value)  # a rotated key logs everyone out


def test_session_tampering_is_refused() -> None:
    signer = SessionSigner(KEY)
    value = signer.issue()
    version, expires, nonce, mac = value.split(".")
    forged = [
        f"{version}.{int(expires) + 10**6}.{nonce}.{mac}",  # extend the expiry
        f"{version}.{expires}.{nonce}x.{mac}",
        f"v2.{expires}.{nonce}.{mac}",
        f"{version}.{expires}.{nonce}.{mac[:-1]}A" if mac[-1] != "A" else value[:-1] + "B",
        f"{version}.{expires}.{nonce}",
        "",
        "garbage",
        value + "\u00e9",
        "v1.1.2.3.4",
        value * 3,
    ]
    for v in forged:
        assert not signer.verify(v), v
    assert not signer.verify(None)


def test_bearer_token_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    for bad in (None, "", "Basic abc", "Bearer", "Bearer ", "Bearer " + "a" * 300, "Bearer ab\x01"):
        assert bearer_token(bad) is None, bad
    assert bearer_token("Bearer caf\u00e9") is None
