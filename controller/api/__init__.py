"""Falcon WSGI apps for hyperhive's unix sockets.

``make_agent_app`` serves one agent socket or the manager socket (identity =
socket), ``make_admin_app`` the operator's ``host.sock``; ``common`` holds
the JSON error handling, body validation and the SSE helper they share.
``controller.httpserve`` serves them with waitress.
"""

from controller.api.admin import make_admin_app
from controller.api.agent import make_agent_app

__all__ = ["make_admin_app", "make_agent_app"]
