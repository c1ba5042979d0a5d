"""gzip for the big JSON documents a controller serves again and again.

``/api/state`` and host.sock ``/status`` carry one row per agent, and the rows
repeat the same keys, condition types, reasons and messages: 340 KiB at 200
agents compress to 7-9 KiB (×40-50) in under a millisecond. The documents are
already kept while the swarm does not change, so the compressed form is kept
beside them (``GzipCache``): an unchanged swarm costs no compression either.

Only answers to clients that say ``Accept-Encoding: gzip`` are compressed
(browsers always do; ``controller.unixhttp`` does), and only bodies of at least
``MIN_BYTES``. The documents hold no secret beside attacker-chosen text (the
dashboard's defence against cross-site requests is same-origin + JSON-only, not
a token in a body), so compressing them gives a BREACH-style attack nothing.
"""

from __future__ import annotations

import gzip
import threading

MIN_BYTES = 1024
"""Bodies shorter than this go out as they are (gzip's header is 18 bytes, a small
body gains nothing and costs a compression per request)."""

LEVEL = 6
"""zlib level: 6 is within 0.5 ms of level 1 on a 340 KiB status and 30 % smaller."""


def accepts_gzip(header: str | None) -> bool:
    """True when an ``Accept-Encoding`` value allows gzip (``q=0`` refuses it).

    ``"gzip, deflate, br"`` → True; ``"gzip;q=0"`` → False; ``None`` / ``"identity"`` → False.
    """
    if not header:
        return False
    for part in header.split(","):
        name, _, params = part.strip().partition(";")
        if name.strip().lower() not in ("gzip", "x-gzip", "*"):
            continue
        q = params.strip().lower()
        if q.startswith("q="):
            try:
                return float(q[2:]) > 0
            except ValueError:
                return False
        return True
    return False


class GzipCache:
    """The gzip form of the last body served under a key (thread-safe).

    ``encode(key, body)`` compresses only when ``key`` differs from the last call's
    (compared with ``==``; pass the body itself when the caller keeps the same bytes
    object while nothing changed, as ``Swarm.status_json`` does: an identity hit is
    O(1)). One entry: the document is one per listener.
    """

    def __init__(self, level: int = LEVEL) -> None:
        self.level = level
        self._lock = threading.Lock()
        self._last: tuple[object, bytes] | None = None

    def encode(self, key: object, body: bytes) -> bytes:
        """gzip of ``body``, reused while ``key`` stays the same (``mtime`` 0: the same
        body always compresses to the same bytes)."""
        with self._lock:
            last = self._last
        if last is not None and (last[0] is key or last[0] == key):
            return last[1]
        packed = gzip.compress(body, self.level, mtime=0)
        with self._lock:
            self._last = (key, packed)
        return packed
