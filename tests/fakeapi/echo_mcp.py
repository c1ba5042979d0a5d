"""A tiny stdio MCP server (mcp 2.x) with one tool, ``echo``, for CLI end-to-end tests.

Run as ``python echo_mcp.py``. When ``ECHO_MCP_LOG`` names a file, every call
appends the echoed text to it, so a test can prove the tool really ran.
"""

from __future__ import annotations

import os

from mcp.server import MCPServer

server: MCPServer = MCPServer(name="hyperhive")


@server.tool(structured_output=False)
def echo(text: str) -> str:
    """Return ``text`` prefixed with ``echo:`` (and log it to ``$ECHO_MCP_LOG``)."""
    log_path = os.environ.get("ECHO_MCP_LOG")
    if log_path:
        with open(log_path, "a", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return f"echo: {text}"


def main() -> None:
    """Serve over stdio until the client closes the pipe."""
    server.run("stdio")


if __name__ == "__main__":
    main()
