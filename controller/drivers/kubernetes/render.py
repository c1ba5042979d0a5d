"""The Kubernetes objects of one agent, rendered from its deployment (pure: no I/O).

``render_agent`` returns plain dicts in the shape the API server takes (what the
driver sends, what ``hyperhive kube-render`` prints, what the tests validate against
the Kubernetes OpenAPI schemas and the pinned agent-sandbox CRD). Per agent ``<a>``,
``B = hh-<a>-agent`` (``names.base``):

- ``PersistentVolumeClaim B-state``: notes (``state/``), claude login and sessions
  (``claude/``), ``home/`` (and the manager's meta clone, ``meta/``); what the local
  runtime keeps under ``<state>/agents/<a>/``. Mounted whole at ``/var/lib/hyperhive``;
  an init container (``prepare``) makes the directories as the agent's uid. No owner:
  it outlives the workload (a destroyed agent's PVC is its tombstone).
- ``Secret B``: ``credential``, the agent's broker credential (the bearer token of
  the agent API), mounted read-only at ``/etc/hyperhive/credential/``.
- ``ConfigMap B``: ``settings.json``, the rendered manifest, at ``/etc/hyperhive/settings/``.
- ``Service B`` (StatefulSet only; agent-sandbox makes its own): headless, the
  StatefulSet's ``serviceName``, so the pod has a stable DNS name for its web UI.
- ``NetworkPolicy B``: default deny; ingress only from the controller's pods on the
  web port; egress only to the controller (the agent API port; for the manager also
  meta.git's, ``KubeSettings.meta_url``), DNS, and the
  Messages API blocks (``KubeSettings.messages_api``).
- the workload: ``StatefulSet B`` of one replica (0 when stopped) or an agent-sandbox
  ``Sandbox B`` (``operatingMode: Running | Suspended``). Its annotations are the
  deployed marker (commit, digests, version, web port: ``names.ANN_*``), copied onto the
  pod template, so a pod says what it runs.

The pod runs ``hyperhive-agent serve`` as uid 1000 with a read-only root file
system, no service-account token, ``RuntimeDefault`` seccomp, every capability
dropped; the harness reaches the controller at ``HYPERHIVE_API_URL``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from controller.drivers.base import Deployment
from controller.drivers.kubernetes import names as n
from controller.drivers.kubernetes.settings import KubeSettings, Workload
from schemas.names import MANAGER

SANDBOX_API = "agents.x-k8s.io/v1beta1"
UID = 1000
ROOT = "/var/lib/hyperhive"
CREDENTIAL_DIR = "/etc/hyperhive/credential"
SETTINGS_DIR = "/etc/hyperhive/settings"
RUN_DIR = "/run/hyperhive"
ANTHROPIC_SECRET = "hyperhive-anthropic"
"""An optional Secret of the namespace whose keys (e.g. ``ANTHROPIC_API_KEY``) become the
harness's environment: one API key for every agent, instead of a login per agent."""
STATE_SUBDIRS = ("state", "claude", "home")
"""The agent's directories on its volume (the manager also has ``meta``)."""


@dataclass(frozen=True)
class AgentObjects:
    """Everything ``render_agent`` renders for one agent, as API-ready dicts."""

    pvc: dict[str, Any]
    secret: dict[str, Any]
    configmap: dict[str, Any]
    service: dict[str, Any] | None
    network_policy: dict[str, Any]
    workload: dict[str, Any]

    def all(self) -> list[dict[str, Any]]:
        """In the order they are applied: storage and config before the pod that mounts them."""
        out = [self.pvc, self.secret, self.configmap]
        if self.service is not None:
            out.append(self.service)
        out += [self.network_policy, self.workload]
        return out


def rfc3339(ts: float) -> str:
    """Unix seconds as ``2026-12-07T21:30:00Z`` (whole seconds, UTC)."""
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def restart_stamp(ts: float) -> str:
    """Unix seconds as ``2026-12-07T21:30:00.123456Z`` (microseconds, UTC): the pod
    template's restart stamp. Whole seconds would make two deploys in one second stamp alike,
    and a pod compared by its stamp would then not be replaced."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _meta(agent: str, name: str, cfg: KubeSettings, component: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": cfg.namespace,
        "labels": {**n.labels(agent), n.COMPONENT: component},
        "annotations": {n.ANN_AGENT: agent},
    }


def marker_annotations(d: Deployment, now: float) -> dict[str, str]:
    """The deployed marker as annotations (values are strings; ``""`` for an unknown version)."""
    version = d.settings.get("hyperhive_version")
    return {
        n.ANN_AGENT: d.agent.name,
        n.ANN_COMMIT: d.agent.commit,
        n.ANN_CONFIG: d.agent.config_digest,
        n.ANN_BUILD: d.agent.build_digest,
        n.ANN_VERSION: "" if version is None else str(version),
        n.ANN_DEPLOYED_AT: rfc3339(now),
        n.ANN_HAS_NIX: "true" if d.agent.has_nix else "false",
        n.ANN_WEB_PORT: str(d.web_port),
    }


def render_pvc(agent: str, cfg: KubeSettings) -> dict[str, Any]:
    """The agent's state volume (ReadWriteOnce, ``cfg.storage_size``)."""
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": cfg.storage_size}},
    }
    if cfg.storage_class:
        spec["storageClassName"] = cfg.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(agent, n.pvc(agent), cfg, "state"),
        "spec": spec,
    }


def render_secret(agent: str, credential: str, cfg: KubeSettings) -> dict[str, Any]:
    """The agent's broker credential, base64 in ``data.credential``."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(agent, n.base(agent), cfg, "credential"),
        "type": "Opaque",
        "data": {"credential": base64.b64encode(credential.encode()).decode()},
    }


def render_configmap(d: Deployment, cfg: KubeSettings) -> dict[str, Any]:
    """The rendered manifest as ``settings.json`` (sorted keys, as the local runtime writes it)."""
    agent = d.agent.name
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(agent, n.base(agent), cfg, "settings"),
        "data": {"settings.json": json.dumps(d.settings, indent=1, sort_keys=True) + "\n"},
    }


def render_service(agent: str, web_port: int, cfg: KubeSettings) -> dict[str, Any]:
    """The headless Service the StatefulSet names (stable DNS for the pod's web UI)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(agent, n.base(agent), cfg, "web"),
        "spec": {
            "clusterIP": "None",
            "selector": n.selector(agent),
            "ports": [{"name": "web", "port": web_port, "targetPort": "web", "protocol": "TCP"}],
            "publishNotReadyAddresses": True,
        },
    }


def render_network_policy(agent: str, web_port: int, cfg: KubeSettings) -> dict[str, Any]:
    """Default deny for the agent's pod; what is let through is listed (module docstring)."""
    controller = {"podSelector": {"matchLabels": dict(cfg.controller_labels)}}
    ports = [{"protocol": "TCP", "port": cfg.api_port()}]
    meta_port = cfg.meta_port()
    if agent == MANAGER and meta_port is not None and meta_port != cfg.api_port():
        ports.append({"protocol": "TCP", "port": meta_port})  # its clone's fetch and push
    egress: list[dict[str, Any]] = [
        {"to": [controller], "ports": ports},
        {
            "to": [
                {
                    "namespaceSelector": {},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                }
            ],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        },
    ]
    for rule in cfg.messages_api:
        egress.append(
            {
                "to": [{"ipBlock": {"cidr": rule.cidr}}],
                "ports": [{"protocol": "TCP", "port": rule.port}],
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(agent, n.base(agent), cfg, "network"),
        "spec": {
            "podSelector": {"matchLabels": n.selector(agent)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [controller], "ports": [{"protocol": "TCP", "port": web_port}]}],
            "egress": egress,
        },
    }


def harness_env(agent: str, web_port: int, cfg: KubeSettings) -> list[dict[str, Any]]:
    """The harness's environment in the pod (docs/architecture.md "Harness process contract",
    with ``HYPERHIVE_API_URL`` in place of the broker socket)."""
    env = {
        "HYPERHIVE_AGENT": agent,
        "HYPERHIVE_FLAVOR": "manager" if agent == MANAGER else "agent",
        "HYPERHIVE_API_URL": cfg.api_url,
        "HYPERHIVE_CREDENTIAL_FILE": f"{CREDENTIAL_DIR}/credential",
        "HYPERHIVE_SETTINGS": f"{SETTINGS_DIR}/settings.json",
        "HYPERHIVE_STATE_DIR": f"{ROOT}/state",
        "HYPERHIVE_WEB_SOCKET": f"{RUN_DIR}/web.sock",
        "HYPERHIVE_WEB_TCP": "1",
        "HYPERHIVE_WEB_HOST": "0.0.0.0",
        "HYPERHIVE_WEB_PORT": str(web_port),
        "HYPERHIVE_RUNTIME": "kubernetes",
        "CLAUDE_CONFIG_DIR": f"{ROOT}/claude",
        "HOME": f"{ROOT}/home",
        "TMPDIR": "/tmp",
        "PYTHONUNBUFFERED": "1",
        # the NetworkPolicy lets claude reach the Messages API only: no telemetry, error
        # reports or auto-update attempts to wait on (and the image is read-only anyway)
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "GIT_AUTHOR_NAME": agent,
        "GIT_AUTHOR_EMAIL": f"{agent}@hyperhive.local",
        "GIT_COMMITTER_NAME": agent,
        "GIT_COMMITTER_EMAIL": f"{agent}@hyperhive.local",
    }
    if agent == MANAGER:
        env["HYPERHIVE_META_DIR"] = f"{ROOT}/meta"
        if cfg.meta_url:  # its clone's origin (harness.metaclone)
            env["HYPERHIVE_META_URL"] = cfg.meta_url
    # the names the pod's web UI is reached by: its Service (headless) and, for a
    # StatefulSet, the pod's own DNS name under it
    svc = f"{n.base(agent)}.{cfg.namespace}.svc"
    env["HYPERHIVE_WEB_ALLOWED_HOSTS"] = ",".join(
        [n.base(agent), svc, f"{svc}.cluster.local", f"{n.statefulset_pod(agent)}.{svc}"]
    )
    return [{"name": k, "value": v} for k, v in env.items()]


def render_pod_spec(agent: str, web_port: int, cfg: KubeSettings) -> dict[str, Any]:
    """The pod of one agent: an init container that makes its directories on the volume
    (``mkdir`` from the image, as uid 1000), the harness container, volumes, security."""
    subdirs = STATE_SUBDIRS + (("meta",) if agent == MANAGER else ())
    # the whole volume, not subPath mounts: kubelet makes a missing subPath directory
    # root-owned 0755, which uid 1000 could not write; the init container makes them
    mounts: list[dict[str, Any]] = [{"name": "state", "mountPath": ROOT}]
    security = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    prepare: dict[str, Any] = {
        "name": "prepare",
        "image": cfg.image,
        "imagePullPolicy": cfg.image_pull_policy,
        "command": ["mkdir", "-p", "-m", "0700", *(f"{ROOT}/{sub}" for sub in subdirs)],
        "volumeMounts": [{"name": "state", "mountPath": ROOT}],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": dict(security),
    }
    mounts += [
        {"name": "credential", "mountPath": CREDENTIAL_DIR, "readOnly": True},
        {"name": "settings", "mountPath": SETTINGS_DIR, "readOnly": True},
        {"name": "run", "mountPath": RUN_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    container: dict[str, Any] = {
        "name": n.HARNESS,
        "image": cfg.image,
        "imagePullPolicy": cfg.image_pull_policy,
        "command": ["hyperhive-agent", "serve"],
        "workingDir": f"{ROOT}/state",
        "env": harness_env(agent, web_port, cfg),
        "envFrom": [{"secretRef": {"name": ANTHROPIC_SECRET, "optional": True}}],
        "ports": [{"name": "web", "containerPort": web_port, "protocol": "TCP"}],
        "volumeMounts": mounts,
        "resources": {
            "requests": {"cpu": cfg.cpu_request, "memory": cfg.memory_request},
            "limits": {"memory": cfg.memory_limit},
        },
        "securityContext": security,
    }
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": {
            "runAsUser": UID,
            "runAsGroup": UID,
            "fsGroup": UID,
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": [prepare],
        "containers": [container],
        "volumes": [
            {"name": "state", "persistentVolumeClaim": {"claimName": n.pvc(agent)}},
            {
                "name": "credential",
                "secret": {"secretName": n.base(agent), "defaultMode": 0o400},
            },
            {"name": "settings", "configMap": {"name": n.base(agent), "defaultMode": 0o444}},
            {"name": "run", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    if cfg.runtime_class:
        spec["runtimeClassName"] = cfg.runtime_class
    return spec


def render_workload(
    d: Deployment, cfg: KubeSettings, now: float, *, running: bool, restarted_at: float
) -> dict[str, Any]:
    """The StatefulSet or Sandbox of ``d`` (``cfg.workload``); ``running`` False renders it
    scaled to zero / Suspended; ``restarted_at`` (unix s) stamps the pod template, so a
    new value rolls the pod (a restart with unchanged settings)."""
    agent = d.agent.name
    marker = marker_annotations(d, now)
    template_meta = {
        "labels": n.labels(agent),
        "annotations": {**marker, n.ANN_RESTARTED_AT: restart_stamp(restarted_at)},
    }
    pod_spec = render_pod_spec(agent, d.web_port, cfg)
    meta = _meta(agent, n.base(agent), cfg, "agent")
    meta["annotations"] = dict(marker)
    if cfg.workload is Workload.SANDBOX:
        return {
            "apiVersion": SANDBOX_API,
            "kind": "Sandbox",
            "metadata": meta,
            "spec": {
                "operatingMode": "Running" if running else "Suspended",
                "podTemplate": {"metadata": template_meta, "spec": pod_spec},
            },
        }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta,
        "spec": {
            "replicas": 1 if running else 0,
            "serviceName": n.base(agent),
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": n.selector(agent)},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {"metadata": template_meta, "spec": pod_spec},
        },
    }


def render_agent(
    d: Deployment,
    credential: str,
    cfg: KubeSettings,
    now: float,
    *,
    running: bool = True,
    restarted_at: float | None = None,
) -> AgentObjects:
    """Every object of the agent ``d`` deploys (module docstring), for ``cfg`` at unix ``now``."""
    agent = d.agent.name
    return AgentObjects(
        pvc=render_pvc(agent, cfg),
        secret=render_secret(agent, credential, cfg),
        configmap=render_configmap(d, cfg),
        service=render_service(agent, d.web_port, cfg)
        if cfg.workload is Workload.STATEFULSET
        else None,
        network_policy=render_network_policy(agent, d.web_port, cfg),
        workload=render_workload(
            d, cfg, now, running=running, restarted_at=now if restarted_at is None else restarted_at
        ),
    )
