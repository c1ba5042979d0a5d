"""Falcon ASGI apps for hyperhive's unix sockets.

``make_agent_app`` serves one agent socket or the manager socket (identity =
socket and the agent's credential), ``make_admin_app`` the operator's
``host.sock`` (the operator key); ``common`` holds the JSON error handling,
bearer auth, body validation and the SSE helper they share. ``hivehttp``
serves them (one event loop for every socket).
"""

from controller.api.admin import make_admin_app
from controller.api.agent import make_agent_app

__all__ = ["make_admin_app", "make_agent_app"]
