"""Which event loop hivehttp serves on: uvloop's, else the standard library's.

uvloop (libuv, in C) runs the loop's own work — polling, callbacks, timers, socket
reads and writes — for less CPU than asyncio's pure-Python selector loop: on the broker
bench the server spends ~9 % less CPU per delivered message (``docs/architecture.md``).
Everything above the loop (uvicorn's protocol, the guards, the apps, ``asyncio.Future``
and ``Task``) is the same code on either loop.

``new_loop()`` makes uvloop's loop when uvloop can be imported. When it cannot (a
platform without a uvloop wheel: Windows, an interpreter uvloop does not build for),
it falls back to ``asyncio``'s loop and says so in the log: slower, not wrong.
``HIVEHTTP_LOOP=asyncio`` in the environment asks for the standard loop on purpose, to
tell whether a misbehaviour is uvloop's.
"""

from __future__ import annotations

import asyncio
import logging
import os

log = logging.getLogger(__name__)

LOOP_ENV = "HIVEHTTP_LOOP"
"""Environment variable choosing the loop: ``uvloop`` (the default) or ``asyncio``."""

LOOP_CHOICES = ("uvloop", "asyncio")
"""The values ``LOOP_ENV`` may take."""


def new_loop() -> asyncio.AbstractEventLoop:
    """A new, not yet running event loop for a hivehttp core (``HttpCore.start``).

    uvloop's unless ``LOOP_ENV`` says ``asyncio`` or uvloop cannot be imported (then
    asyncio's, logged). Raises ``ValueError`` when ``LOOP_ENV`` holds another value: a
    misspelt choice must not pass for the default.
    """
    choice = os.environ.get(LOOP_ENV, "").strip().lower() or "uvloop"
    if choice not in LOOP_CHOICES:
        raise ValueError(f"{LOOP_ENV}={choice!r}: expected one of {', '.join(LOOP_CHOICES)}")
    if choice == "uvloop":
        try:
            # imported here, not at module load: a process that never serves pays nothing
            import uvloop
        except ImportError as exc:
            log.info("uvloop cannot be imported (%s): serving on asyncio's own loop", exc)
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()
