"""Agent naming rules shared by controller and harness.

Container names are capped at 11 characters by ``nixos-container`` (it derives
veth/interface names from them), so an agent is ``h-<name>`` with ``<name>`` at
most 9 characters; the manager's container is ``hm1nd``.
"""

from __future__ import annotations

import re

AGENT_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,8}$")
MANAGER = "manager"
OPERATOR = "operator"
MANAGER_CONTAINER = "hm1nd"
RESERVED = frozenset({MANAGER, OPERATOR, "hyperhive", "controller", "all", "forge"})


class InvalidName(ValueError):
    """An agent name that breaks the naming rules; ``str()`` says which rule."""


def check_agent_name(name: str) -> str:
    """Return ``name`` if it is a valid new agent name, else raise ``InvalidName``.

    Rules: matches ``^[a-z][a-z0-9-]{0,8}$`` (lowercase letter first, then up to
    eight lowercase letters, digits or dashes) and is not reserved.
    """
    if not isinstance(name, str) or not AGENT_NAME_RE.fullmatch(name):
        raise InvalidName(
            f"invalid agent name {name!r}: use 1-9 characters, a lowercase letter first, "
            "then lowercase letters, digits or '-' (e.g. 'alice', 'web-2')"
        )
    if name in RESERVED:
        raise InvalidName(f"agent name {name!r} is reserved; pick another")
    return name


def is_agent_name(name: str) -> bool:
    """True if ``name`` is the manager or a valid agent name."""
    return name == MANAGER or (bool(AGENT_NAME_RE.fullmatch(name)) and name not in RESERVED)


def container_name(agent: str) -> str:
    """The nixos-container name for an agent: ``hm1nd`` for the manager, else ``h-<agent>``."""
    return MANAGER_CONTAINER if agent == MANAGER else f"h-{agent}"


def fnv1a_32(data: bytes) -> int:
    """32-bit FNV-1a hash (http://www.isthe.com/chongo/tech/comp/fnv/)."""
    h = 0x811C9DC5
    for b in data:
        h ^= b
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def default_web_port(
    agent: str, manager_port: int = 8000, base: int = 8100, span: int = 900
) -> int:
    """An agent's first web UI port: the manager's is fixed, else ``base + FNV-1a(name) % span``."""
    if agent == MANAGER:
        return manager_port
    return base + fnv1a_32(agent.encode()) % span
