"""Log lines about refused credentials on a TCP surface, at most one per period.

A TCP listener answers anyone who can reach it; a flood of wrong credentials must
not become a flood of log lines. ``RefusalLog(surface).note(peer, why)`` counts every
refusal and logs one warning per ``every`` seconds with the count since the last
line, the latest client address and why it was refused.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("controller.auth")

EVERY = 10.0
"""Seconds between log lines about refused credentials."""


class RefusalLog:
    """Counts refusals on ``surface``; logs at most one line per ``every`` seconds.

    Used on the event loop only (not thread-safe).
    """

    def __init__(self, surface: str, every: float = EVERY) -> None:
        self.surface = surface
        self.every = every
        self.count = 0
        self._last: float | None = None

    def note(self, peer: str, why: str) -> None:
        """Count one refusal of a request from ``peer`` (its address) for ``why``."""
        self.count += 1
        now = time.monotonic()
        if self._last is not None and now - self._last < self.every:
            return
        since = "since start" if self._last is None else f"in the last {now - self._last:.0f} s"
        log.warning(
            "%s: refused %d request(s) %s (latest from %s: %s)",
            self.surface,
            self.count,
            since,
            peer,
            why,
        )
        self.count = 0
        self._last = now
