"""Per-agent and swarm-wide spend budgets (issue 15, docs/budgets.md).

``core`` is the pure part (limits, UTC-day windows, standings, notices, extension
accounting); ``ledger`` the controller's own record of spend (``<state>/budget.sqlite``,
filled from the agents' turn-stats files); ``clock`` the injectable clock; ``service``
ties them to desired state, the broker's events and the agent sockets' ``recv`` hold.
"""
