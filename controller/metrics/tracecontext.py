"""The trace context a message carries from its sender's span to its recipient's turn.

An agent's ``send`` / ``ask`` / ``answer`` may carry a W3C ``traceparent`` (the sender's
``execute_tool`` span, ``harness.telemetry``); the agent socket remembers it here by
message id, and ``recv`` hands it back with the message, so the recipient's
``invoke_agent`` span continues the sender's trace.

Kept in memory, not in the broker's store: the last :data:`KEEP` messages that carried one
(about 100 bytes each, so at most a few MiB). A message received after a controller
restart, or after :data:`KEEP` newer traced sends, starts a new trace: tracing is best
effort and never changes delivery. Thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from schemas.wire import Message

KEEP = 20_000


class TraceContexts:
    """``{message id: traceparent}`` for the newest :data:`KEEP` traced messages."""

    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._by_id: OrderedDict[int, str] = OrderedDict()

    def remember(self, message_id: int, traceparent: Any) -> None:
        """Keep ``traceparent`` (already schema-checked; ignored unless a string) for the
        message ``message_id``."""
        if not isinstance(traceparent, str) or not traceparent:
            return
        with self._lock:
            self._by_id[message_id] = traceparent
            self._by_id.move_to_end(message_id)
            while len(self._by_id) > self.keep:
                self._by_id.popitem(last=False)

    def get(self, message_id: int) -> str | None:
        """The traceparent the message was sent with, if it is still known."""
        with self._lock:
            return self._by_id.get(message_id)

    def message_json(self, m: Message) -> dict[str, Any]:
        """``m.to_json()`` with its ``traceparent`` when one is known."""
        doc = m.to_json()
        tp = m.traceparent or self.get(m.id)
        if tp is not None:
            doc["traceparent"] = tp
        return doc


TRACE_CONTEXTS = TraceContexts()
"""The controller's (the agent sockets remember and hand back through it)."""
