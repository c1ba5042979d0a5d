"""The in-container agent: ``hyperhive-agent serve | mcp | wake``.

``serve`` runs the turn loop around the ``claude`` CLI plus the agent web UI,
``mcp`` is the stdio MCP server claude launches, ``wake`` drops a message into
the agent's own inbox. Never imports ``controller``; talks to it only through
the agent socket (``schemas.client.UnixClient``).
"""

__version__ = "0.1.0"
