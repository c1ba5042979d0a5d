"""Pass requests: anything may ask the serve loop for a reconcile pass, never blocking."""

from __future__ import annotations

import threading


class PassRequests:
    """Reasons for a pass, collected until the serve loop takes them."""

    def __init__(self) -> None:
        self._req_lock = threading.Lock()
        self._requested = threading.Event()
        self._reasons: list[str] = []

    def request(self, reason: str) -> None:
        """Ask the serve loop for a pass soon (hook poke, approval, dashboard). Never blocks."""
        with self._req_lock:
            self._reasons.append(reason)
            self._requested.set()

    def wait(self, timeout: float | None = None) -> str | None:
        """Block until ``request_pass`` (→ the reasons, joined) or ``timeout`` (→ None)."""
        if not self._requested.wait(timeout):
            return None
        with self._req_lock:
            reasons, self._reasons = self._reasons, []
            self._requested.clear()
        return ", ".join(dict.fromkeys(reasons)) or "requested"
