"""The observed-state cache: one ``driver.observe()`` per change, not per request.

Requests are served from the last observation while the driver reports no change
(its ``generation`` counter); passes, crash-watch ticks and verbs refresh it. What
the driver cannot report (an agent it did not start dying) shows up at the next
crash-watch tick or pass.
"""

from __future__ import annotations

import threading
import time

from controller.drivers.base import Driver
from controller.model import ObservedAgent


class ObservedView:
    """The observed state requests are served from: ``(driver generation, observed)``.

    ``rev`` is bumped whenever a fresh observation differs from the last one (cache
    keys use it); ``at`` is the ``time.monotonic()`` of the last fresh observation.
    """

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self._view: tuple[int | None, dict[str, ObservedAgent]] | None = None
        self._view_lock = threading.Lock()
        self.rev = 0
        self.at = float("-inf")

    def generation(self) -> int | None:
        """The driver's change counter (``LocalDriver.generation``), None if it keeps none."""
        fn = getattr(self.driver, "generation", None)
        return int(fn()) if callable(fn) else None

    def observe(self) -> dict[str, ObservedAgent]:
        """A fresh ``driver.observe()``; it becomes the view requests are served from."""
        gen = self.generation()  # read first: a change during observe is seen next time
        observed = self.driver.observe()
        with self._view_lock:
            if self._view is None or self._view[1] != observed:
                self.rev += 1
            self._view = (gen, observed)
            self.at = time.monotonic()
        return observed

    def observed(self) -> dict[str, ObservedAgent]:
        """The observed state for a request: the last observation while the driver reports
        no change since (its ``generation``), else a fresh one. Never mutate the result.

        What the driver cannot report (an agent it did not start dying) shows up at the
        next crash-watch tick (``config.crash_watch_seconds``) or pass. A driver without
        ``generation`` is observed on every call.
        """
        gen = self.generation()
        if gen is not None:
            with self._view_lock:
                view = self._view
            if view is not None and view[0] == gen:
                return view[1]
        return self.observe()
