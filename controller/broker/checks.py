"""Argument checks of the broker's verbs: each raises ``Invalid`` naming the field."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence

from controller.broker.limits import MAX_IDEMPOTENCY_KEY, MAX_LEASE_SECONDS, MAX_WAIT_SECONDS
from controller.broker.model import OperatorQuestion
from controller.errors import Invalid


def check_text(value: str, field: str) -> str:
    """``value`` unless it holds a lone surrogate, which no store can keep as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise Invalid(f"{field} holds a lone surrogate at index {exc.start}", field) from exc
    return value


def check_name(value: object, field: str) -> str:
    """``value`` if it is a name of 1..128 characters."""
    if not isinstance(value, str) or not value or len(value) > 128:
        raise Invalid(f"{field} must be a non-empty string of at most 128 characters", field)
    return check_text(value, field)


def check_body(value: object, field: str = "body") -> str:
    """``value`` if it is a non-empty string."""
    if not isinstance(value, str) or not value:
        raise Invalid(f"{field} must be a non-empty string", field)
    return check_text(value, field)


_TRACEPARENT = re.compile(
    r"(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}"
)


def check_traceparent(value: object) -> str | None:
    """``value`` if it is None or a W3C Trace Context ``traceparent`` (55 characters:
    version (not ``ff``), trace id and parent id (not all zeros), flags; lowercase hex), so
    nothing else can ride on a message in it."""
    if value is None:
        return None
    if not isinstance(value, str) or _TRACEPARENT.fullmatch(value) is None:
        raise Invalid(
            "traceparent must be a W3C traceparent: 00-<32 hex trace id>-<16 hex parent id>-"
            "<2 hex flags>, ids not all zeros",
            "traceparent",
        )
    return value


def check_id(value: object, field: str) -> int:
    """``value`` if it is a positive 63-bit integer (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**63:
        raise Invalid(f"{field} must be a positive integer", field)
    return value


def check_key(value: object) -> str | None:
    """An idempotency key (1..128 characters) or None."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_IDEMPOTENCY_KEY:
        raise Invalid(
            f"idempotency_key must be a non-empty string of at most "
            f"{MAX_IDEMPOTENCY_KEY} characters",
            "idempotency_key",
        )
    return check_text(value, "idempotency_key")


def recv_args(recipient: str, wait_seconds: float, lease_seconds: int | None) -> float:
    """Check ``recv``'s arguments; the park time in seconds (clamped to 0..180)."""
    check_name(recipient, "recipient")
    if lease_seconds is not None and (
        isinstance(lease_seconds, bool)
        or not isinstance(lease_seconds, int)
        or not 1 <= lease_seconds <= MAX_LEASE_SECONDS
    ):
        raise Invalid(
            f"lease_seconds must be an integer from 1 to {MAX_LEASE_SECONDS}", "lease_seconds"
        )
    try:
        wait = min(max(float(wait_seconds), 0.0), MAX_WAIT_SECONDS)
    except (TypeError, ValueError) as exc:
        raise Invalid("wait_seconds must be a number", "wait_seconds") from exc
    if wait != wait:  # NaN
        raise Invalid("wait_seconds must be a number", "wait_seconds")
    return wait


def request_digest(*parts: object) -> str:
    """What an idempotency key stands for: a repeat must carry the same request."""
    text = json.dumps(parts, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def choices(answer: str | Sequence[str], q: OperatorQuestion) -> str:
    """The canonical answer to question ``q`` (which has options), or ``Invalid`` naming ``answer``.

    Single choice: exactly one option. ``multi``: a non-empty set of distinct
    options, as a list or joined by ``", "`` (what the dashboard sends); the
    result is them joined by ``", "`` in the order given.
    """
    options = list(q.options)
    shown = ", ".join(repr(o) for o in options)
    if isinstance(answer, str):
        text = answer.strip()
        if text in options:
            return text
        picked = split_options(text, options) if q.multi else None
    else:
        picked = [a.strip() for a in answer]
        if not picked or any(a not in options for a in picked):
            picked = None
    if picked and len(set(picked)) != len(picked):
        raise Invalid("answer names an option twice", "answer")
    if q.multi and picked:
        return ", ".join(picked)
    if not q.multi and picked is not None and len(picked) == 1:
        return picked[0]
    if q.multi:
        raise Invalid(f"answer must be one or more of the options: {shown}", "answer")
    raise Invalid(f"answer must be exactly one of the options: {shown}", "answer")


def split_options(text: str, options: Sequence[str]) -> list[str] | None:
    """``"a, b"`` → ``["a", "b"]`` when it is options joined by ``", "`` (options may hold
    commas themselves: tries every split), else None."""
    best: dict[int, list[str]] = {0: []}
    for start in range(len(text) + 1):
        if start not in best:
            continue
        for o in options:
            if text.startswith(o, start):
                end = start + len(o)
                if end == len(text):
                    return [*best[start], o]
                if text.startswith(", ", end) and end + 2 not in best:
                    best[end + 2] = [*best[start], o]
    return None
