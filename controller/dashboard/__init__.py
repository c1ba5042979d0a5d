"""The operator dashboard: an ASGI app on TCP (default 127.0.0.1:7000), behind a login.

``make_dashboard_app(ops, broker, operator_key=, login_tokens=, web_sock=)``
builds it; ``controller.serve`` serves it with ``hivehttp.serve_tcp``. It also
serves each agent's web UI at ``/agents/<name>/``. See ``docs/dashboard.md``.
"""

from __future__ import annotations

from controller.dashboard.app import DashboardBroker, make_dashboard_app

__all__ = ["DashboardBroker", "make_dashboard_app"]
