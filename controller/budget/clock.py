"""The clock budgets read the time from: ``time.time`` unless a test moves it.

``HYPERHIVE_BUDGET_CLOCK_FILE`` (a test and development knob, like
``HYPERHIVE_AGENT_ARGV``) names a file holding a number of seconds added to the real
time, read on every call: writing ``86400`` into it makes the controller's budgets
believe it is tomorrow, at once, without a sleep. A missing or unreadable file adds 0.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

Clock = Callable[[], float]
"""Unix seconds, now."""

CLOCK_FILE_ENV = "HYPERHIVE_BUDGET_CLOCK_FILE"


def offset_clock(path: Path, base: Clock = time.time) -> Clock:
    """``base()`` plus the seconds written in ``path`` (0 when absent or not a number)."""

    def now() -> float:
        try:
            offset = float(path.read_text().strip() or 0)
        except (OSError, ValueError):
            offset = 0.0
        return base() + offset

    return now


def clock_from_env(environ: Mapping[str, str] | None = None) -> Clock:
    """``time.time``, or :func:`offset_clock` over ``$HYPERHIVE_BUDGET_CLOCK_FILE`` when set."""
    env = os.environ if environ is None else environ
    path = env.get(CLOCK_FILE_ENV)
    return offset_clock(Path(path)) if path else time.time
