"""The operator dashboard: a Falcon app on TCP (default 127.0.0.1:7000).

``make_dashboard_app(ops, broker)`` builds it; ``controller.serve`` serves it
with waitress. See ``docs/dashboard.md``.
"""

from __future__ import annotations

from controller.dashboard.app import DashboardBroker, make_dashboard_app

__all__ = ["DashboardBroker", "make_dashboard_app"]
