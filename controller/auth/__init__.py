"""Credentials: who may command the swarm, and which agent is calling.

- ``operator``: the per-install operator key (``<state>/operator.key``, 0600),
  the bearer token of ``host.sock`` and the root of the dashboard's sessions.
- ``agents``: one credential per agent (``<state>/agents/<a>/credential``,
  0600), made at deploy and rotated on recreate; the agent's bearer token on
  its broker socket (and, later, over TCP: the token alone names the agent).
- ``sessions``: the dashboard's one-time login tokens and signed session cookies.
- ``secretfile``: how the secrets are made, written (atomically, 0600) and read.
- ``bearer``: parsing ``Authorization: Bearer`` headers.
"""

from controller.auth.agents import AgentCredentials
from controller.auth.bearer import bearer_token
from controller.auth.operator import ensure_operator_key, load_operator_key
from controller.auth.secretfile import CredentialError
from controller.auth.sessions import LoginToken, LoginTokens, SessionSigner

__all__ = [
    "AgentCredentials",
    "CredentialError",
    "LoginToken",
    "LoginTokens",
    "SessionSigner",
    "bearer_token",
    "ensure_operator_key",
    "load_operator_key",
]
