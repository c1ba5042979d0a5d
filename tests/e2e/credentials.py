"""Clients on a real controller's sockets, each with the credential that socket wants.

``host.sock`` takes the operator key (``<state>/operator.key``), an agent's socket
that agent's own credential (``<state>/agents/<agent>/credential``), read from the
state dir the way the operator's CLI does. Both files are made by ``hyperhive
serve`` (the key on first start, a credential at deploy), so a client made before
they exist raises ``FileNotFoundError`` / ``CredentialError``: call these inside a
wait loop while the controller comes up.
"""

from __future__ import annotations

from pathlib import Path

from controller.auth.operator import load_operator_key
from controller.paths import Layout
from schemas.client import UnixClient


def layout_of(state: Path, run: Path | None = None) -> Layout:
    """The layout of ``state`` with run dir ``run`` (default ``<state>/run``, whatever
    ``$HYPERHIVE_RUN_DIR`` this test process has)."""
    return Layout(state.absolute(), (state / "run" if run is None else run).absolute())


def operator_client(state: Path, run: Path | None = None, timeout: float = 30.0) -> UnixClient:
    """``host.sock`` of the controller on ``state`` (run dir ``run``, default
    ``<state>/run``), sending the operator key."""
    layout = layout_of(state, run)
    return UnixClient(str(layout.host_sock), timeout=timeout, token=load_operator_key(layout))


def agent_token(state: Path, agent: str, run: Path | None = None) -> str:
    """``agent``'s current broker credential (rotated when the agent is recreated)."""
    return layout_of(state, run).agent_credential(agent).read_text().strip()


def agent_client(
    state: Path, agent: str, run: Path | None = None, timeout: float = 30.0
) -> UnixClient:
    """``agent``'s own socket (``mcp.sock``), sending ``agent``'s credential."""
    layout = layout_of(state, run)
    return UnixClient(
        str(layout.agent_sock(agent)), timeout=timeout, token=agent_token(state, agent, run)
    )
