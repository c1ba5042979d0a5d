"""The ``kubernetes:`` section of the controller config, as a frozen value.

Pure: no client library is imported here, so ``controller.config`` can carry a
``KubeSettings`` on every runtime. The schema of the section is in
``schemas/json/config.schema.json`` (``kubernetes``); ``kube_settings_from_dict``
reads a document that already passed it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit


class Workload(enum.StrEnum):
    """What runs one agent: a StatefulSet of one replica (any cluster) or an agent-sandbox
    ``Sandbox`` (needs the ``sandboxes.agents.x-k8s.io`` CRD and its controller)."""

    STATEFULSET = "statefulset"
    SANDBOX = "sandbox"


@dataclass(frozen=True)
class EgressRule:
    """One egress destination an agent pod may reach besides the controller and DNS:
    ``cidr`` (an IPv4/IPv6 block) on TCP ``port``."""

    cidr: str
    port: int = 443


ANTHROPIC_API_CIDRS: tuple[EgressRule, ...] = (
    EgressRule("160.79.104.0/23", 443),
    EgressRule("2607:6bc0::/48", 443),
)
"""The address blocks Anthropic publishes for its API (the Messages API): the default
egress of an agent pod besides the controller and DNS. A NetworkPolicy cannot name a host,
so a proxy or another API endpoint is added by block in the config (``messages_api``)."""


@dataclass(frozen=True)
class KubeSettings:
    """Where and how the ``kubernetes`` runtime runs agents.

    ``namespace`` holds every object of the swarm (agents and controller);
    ``image`` is the agent image reference (built by the flake's ``agentImage``);
    ``api_url`` is the controller's agent API as pods reach it (``HYPERHIVE_API_URL``);
    ``controller_labels`` select the controller's pods (the only ingress peer and the
    egress peer on ``api_url``'s port); ``messages_api`` the other egress blocks;
    ``storage_size`` / ``storage_class`` the per-agent PVC; ``runtime_class`` e.g.
    ``gvisor`` or ``kata`` (None: the cluster default); ``kubeconfig`` / ``context``
    for a controller outside the cluster (None: in-cluster service account when
    ``KUBERNETES_SERVICE_HOST`` is set, else ``~/.kube/config``). ``memory_limit``
    and ``memory_request`` / ``cpu_request`` size the harness container (a claude
    turn needs ~300 MB on top of the harness).
    """

    namespace: str = "hyperhive"
    image: str = "hyperhive:latest"
    image_pull_policy: str = "IfNotPresent"
    workload: Workload = Workload.STATEFULSET
    api_url: str = "http://hyperhive-controller.hyperhive.svc:7100"
    controller_labels: tuple[tuple[str, str], ...] = (
        ("app.kubernetes.io/name", "hyperhive-controller"),
    )
    messages_api: tuple[EgressRule, ...] = ANTHROPIC_API_CIDRS
    storage_size: str = "2Gi"
    storage_class: str | None = None
    runtime_class: str | None = None
    kubeconfig: str | None = None
    context: str | None = None
    memory_request: str = "512Mi"
    memory_limit: str = "2Gi"
    cpu_request: str = "100m"
    meta_url: str | None = "http://hyperhive-controller.hyperhive.svc:7200/meta.git"
    """meta.git over HTTP as the manager's pod reaches it (the controller's ``git:``
    listener; ``HYPERHIVE_META_URL``): the manager's clone fetches from it and pushes the
    commits it proposes to ``refs/hyperhive/manager/*`` (docs/kubernetes.md). None: the
    manager has no remote and ``request_apply_commit`` finds nothing to propose."""
    web_host: str | None = None
    """How the controller reaches an agent pod's web UI (the dashboard's proxy): None is the
    agent's headless Service, ``hh-<a>-agent.<namespace>.svc``; a fixed host is for a
    controller that reaches pods through something else (the tests' stand-in: loopback)."""

    def meta_port(self) -> int | None:
        """The TCP port of ``meta_url`` (its scheme's default when it names none), or None."""
        if not self.meta_url:
            return None
        parts = urlsplit(self.meta_url)
        if parts.port is not None:
            return parts.port
        return 443 if parts.scheme == "https" else 80

    def api_port(self) -> int:
        """The TCP port of ``api_url`` (its scheme's default when it names none)."""
        parts = urlsplit(self.api_url)
        if parts.port is not None:
            return parts.port
        return 443 if parts.scheme == "https" else 80


def kube_settings_from_dict(doc: Mapping[str, Any] | None, base: KubeSettings) -> KubeSettings:
    """``base`` with the keys of a schema-valid ``kubernetes:`` config section applied."""
    if not doc:
        return base
    out = base
    for key in (
        "namespace",
        "image",
        "image_pull_policy",
        "api_url",
        "storage_size",
        "storage_class",
        "runtime_class",
        "kubeconfig",
        "context",
        "memory_request",
        "memory_limit",
        "cpu_request",
        "web_host",
        "meta_url",
    ):
        if key in doc:
            out = replace(out, **{key: doc[key]})
    if "workload" in doc:
        out = replace(out, workload=Workload(doc["workload"]))
    if "controller_labels" in doc:
        labels = doc["controller_labels"]
        out = replace(
            out, controller_labels=tuple(sorted((str(k), str(v)) for k, v in labels.items()))
        )
    if "messages_api" in doc:
        rules = tuple(
            EgressRule(str(r["cidr"]), int(r.get("port", 443))) for r in doc["messages_api"]
        )
        out = replace(out, messages_api=rules)
    return out
