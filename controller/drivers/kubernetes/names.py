"""Names, labels and annotations of the objects the kubernetes runtime owns (pure).

An agent ``<a>`` owns objects named after ``base(a) = "hh-<a>-agent"`` (a DNS label
of at most 18 characters for the 9-character names ``schemas.names`` allows, so the
StatefulSet's pod name and its ``controller-revision-hash`` label fit in 63);
``agent_of`` reads it back.

Every object carries ``app.kubernetes.io/managed-by: hyperhive`` (what the driver
lists by), ``app.kubernetes.io/instance: <base>`` (what a pod is selected by) and the
annotation ``hyperhive.dev/agent: <a>``.
"""

from __future__ import annotations

from schemas.names import is_agent_name

PREFIX = "hh-"
SUFFIX = "-agent"

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "hyperhive"
INSTANCE = "app.kubernetes.io/instance"
NAME = "app.kubernetes.io/name"
NAME_VALUE = "hyperhive-agent"
COMPONENT = "app.kubernetes.io/component"
TOMBSTONE = "hyperhive.dev/tombstone"
"""Label on a PVC whose agent was destroyed: its state is kept (value ``"true"``)."""

ANN = "hyperhive.dev/"
ANN_AGENT = ANN + "agent"
ANN_COMMIT = ANN + "commit"
ANN_CONFIG = ANN + "config-digest"
ANN_BUILD = ANN + "build-digest"
ANN_VERSION = ANN + "hyperhive-version"
ANN_DEPLOYED_AT = ANN + "deployed-at"
ANN_HAS_NIX = ANN + "has-nix"
ANN_WEB_PORT = ANN + "web-port"
ANN_RESTARTED_AT = ANN + "restarted-at"
ANN_DESTROYED_AT = ANN + "destroyed-at"
ANN_SUSPENDED_AT = ANN + "suspended-at"

SELECTOR = f"{MANAGED_BY}={MANAGED_BY_VALUE},{NAME}={NAME_VALUE}"
"""Label selector of every agent object (not the controller's own)."""

HARNESS = "harness"
"""The container that runs ``hyperhive-agent serve`` (the journal's one unit)."""


def base(agent: str) -> str:
    """``hh-<agent>-agent``: the name of the agent's workload, Service, NetworkPolicy,
    Secret and ConfigMap. ValueError for a name that is not an agent name."""
    if not is_agent_name(agent):
        raise ValueError(f"invalid agent name {agent!r}")
    return f"{PREFIX}{agent}{SUFFIX}"


def pvc(agent: str) -> str:
    """``hh-<agent>-agent-state``: the PersistentVolumeClaim with its notes, claude and home."""
    return f"{base(agent)}-state"


def statefulset_pod(agent: str) -> str:
    """The pod the StatefulSet of ``agent`` runs (ordinal 0)."""
    return f"{base(agent)}-0"


def agent_of(name: str) -> str | None:
    """The agent a workload / Service / Secret named ``name`` belongs to, or None."""
    if not (name.startswith(PREFIX) and name.endswith(SUFFIX)):
        return None
    agent = name[len(PREFIX) : -len(SUFFIX)]
    return agent if is_agent_name(agent) else None


def labels(agent: str) -> dict[str, str]:
    """The labels of every object of ``agent`` (and of its pod)."""
    return {
        MANAGED_BY: MANAGED_BY_VALUE,
        NAME: NAME_VALUE,
        INSTANCE: base(agent),
    }


def selector(agent: str) -> dict[str, str]:
    """The pod selector of ``agent``'s workload, Service and NetworkPolicy."""
    return {INSTANCE: base(agent)}
