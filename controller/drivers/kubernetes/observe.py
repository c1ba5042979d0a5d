"""What the kubernetes runtime observes, from listed workloads and pods (pure: no I/O).

Phase of an agent from its workload (StatefulSet or Sandbox) and its pod:

- the workload is scaled to zero / ``Suspended`` → ``stopped`` (its pod may still be
  terminating: said in the detail);
- it wants to run and its pod is ``Failed`` / ``Succeeded``, or the harness container
  waits for a reason that means it cannot run (``CrashLoopBackOff``, an image pull
  error, a config error) → ``failed``, with the reason, the restart count and the last
  exit code (what the swarm's crash watch and backoff act on);
- otherwise → ``running`` (a pod being created, scheduled or restarted counts, as a
  local harness inside its start grace does), with the pod's state in the detail.

What was deployed (commit, digests, hyperhive version) comes from the workload's
annotations (``names.ANN_*``), the marker every runtime keeps; a workload whose image is
not the configured one reports a build digest no desired state has, so it is rebuilt.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from controller.drivers.kubernetes import names as n
from controller.model import ObservedAgent, Phase

Obj = Mapping[str, Any]

NOT_BUILT = "agent.nix is not built under the kubernetes runtime (the image is config)"
FATAL_WAITING = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
"""Waiting reasons of a container that will not run without someone acting."""


def parse_time(value: Any) -> float | None:
    """An RFC 3339 timestamp (``2026-12-07T21:30:00Z``) as unix seconds; None if absent/bad."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def wants_running(workload: Obj) -> bool:
    """Whether the workload is asked to run a pod (replicas ≥ 1 / operatingMode Running)."""
    spec = workload.get("spec") or {}
    if workload.get("kind") == "Sandbox":
        return bool(spec.get("operatingMode", "Running") == "Running")
    return int(spec.get("replicas", 1)) > 0


def pod_name(workload: Obj) -> str:
    """The pod a workload runs: ``<name>-0`` for a StatefulSet, ``<name>`` for a Sandbox."""
    name = str(workload["metadata"]["name"])
    return name if workload.get("kind") == "Sandbox" else f"{name}-0"


def harness_status(pod: Obj) -> Mapping[str, Any]:
    """The harness container's status in ``pod`` (``{}`` before the kubelet reported one)."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == n.HARNESS:
            return dict(cs)
    return {}


def pod_phase(pod: Obj) -> tuple[Phase, str, float | None]:
    """``(phase, detail, since)`` of a pod of a workload that wants to run."""
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    cs = harness_status(pod)
    restarts = int(cs.get("restartCount") or 0)
    last = ((cs.get("lastState") or {}).get("terminated")) or {}
    tail = f"restarts {restarts}" + (
        f", last exit code {last.get('exitCode')}" if last.get("exitCode") is not None else ""
    )
    state = cs.get("state") or {}
    if pod["metadata"].get("deletionTimestamp"):
        return Phase.RUNNING, f"pod {name} is terminating (being replaced)", None
    phase = status.get("phase") or "Pending"
    if phase in ("Failed", "Succeeded"):
        why = status.get("reason") or status.get("message") or phase.lower()
        return Phase.FAILED, f"pod {name} {phase.lower()}: {why}; {tail}", None
    if "waiting" in state:
        reason = state["waiting"].get("reason") or "Waiting"
        message = state["waiting"].get("message") or ""
        detail = f"pod {name}: {reason}" + (f" ({message})" if message else "") + f"; {tail}"
        if reason in FATAL_WAITING:
            return Phase.FAILED, detail, parse_time(last.get("finishedAt"))
        return Phase.RUNNING, detail, None
    if "terminated" in state:
        code = state["terminated"].get("exitCode")
        return (
            Phase.FAILED,
            f"pod {name}: harness exited with code {code}; {tail}",
            parse_time(state["terminated"].get("finishedAt")),
        )
    if "running" in state:
        since = parse_time(state["running"].get("startedAt"))
        ready = "ready" if cs.get("ready") else "not ready"
        return Phase.RUNNING, f"pod {name} running ({ready}); {tail}", since
    unsched = [
        c.get("message") or c.get("reason") or ""
        for c in status.get("conditions") or []
        if c.get("type") == "PodScheduled" and c.get("status") == "False"
    ]
    why = f": {unsched[0]}" if unsched and unsched[0] else ""
    return Phase.RUNNING, f"pod {name} pending{why}", None


def template_image(workload: Obj) -> str | None:
    """The harness image the workload's pod template names (None if it names none)."""
    spec = workload.get("spec") or {}
    template = spec.get("podTemplate" if workload.get("kind") == "Sandbox" else "template") or {}
    for c in (template.get("spec") or {}).get("containers") or []:
        if c.get("name") == n.HARNESS:
            image = c.get("image")
            return str(image) if image else None
    return None


def observe_agent(workload: Obj, pod: Obj | None, image: str | None = None) -> ObservedAgent | None:
    """What is observed of the agent ``workload`` runs (None: not one of ours).

    ``image`` is the configured one: a workload deployed with another gets a build digest
    that differs from every desired one (``<digest>+image``), so the plan rebuilds it —
    drift in the image, as in agent.nix on the nixos-container runtime."""
    meta = workload.get("metadata") or {}
    agent = n.agent_of(str(meta.get("name", "")))
    ann: Mapping[str, str] = meta.get("annotations") or {}
    if agent is None or ann.get(n.ANN_AGENT, agent) != agent:
        return None
    notes: list[str] = []
    since: float | None = None
    if not wants_running(workload):
        phase = Phase.STOPPED
        notes.append("suspended" if workload.get("kind") == "Sandbox" else "scaled to zero")
        if pod is not None:
            notes.append(f"pod {pod['metadata']['name']} is terminating")
    elif pod is None:
        phase = Phase.RUNNING
        notes.append(f"waiting for pod {pod_name(workload)}")
    else:
        phase, detail, since = pod_phase(pod)
        notes.append(detail)
        running_image = harness_status(pod).get("image")
        if running_image:
            notes.append(f"image {running_image}")
    if ann.get(n.ANN_HAS_NIX) == "true":
        notes.append(NOT_BUILT)
    build = ann.get(n.ANN_BUILD) or None
    deployed_image = template_image(workload)
    if image is not None and deployed_image is not None and deployed_image != image:
        notes.append(f"deployed with image {deployed_image}, the config says {image}")
        build = f"{build}+image" if build else None
    return ObservedAgent(
        name=agent,
        phase=phase,
        commit=ann.get(n.ANN_COMMIT) or None,
        config_digest=ann.get(n.ANN_CONFIG) or None,
        build_digest=build,
        hyperhive_version=ann.get(n.ANN_VERSION) or None,
        since=since if since is not None else parse_time(ann.get(n.ANN_DEPLOYED_AT)),
        detail="; ".join(notes),
    )


def observe_all(
    workloads: Iterable[Obj], pods: Iterable[Obj], image: str | None = None
) -> dict[str, ObservedAgent]:
    """Every agent of ``workloads`` (one kind, listed by ``names.SELECTOR``), keyed by name;
    each matched to its pod by name (``pod_name``) and owner uid; ``image`` the configured
    one (``observe_agent``)."""
    by_name = {str(p["metadata"]["name"]): p for p in pods}
    out: dict[str, ObservedAgent] = {}
    for w in workloads:
        pod = by_name.get(pod_name(w))
        if pod is not None:
            uid = w["metadata"].get("uid")
            owners = pod["metadata"].get("ownerReferences") or []
            if uid and owners and not any(o.get("uid") == uid for o in owners):
                pod = None  # a leftover pod of an earlier incarnation of the same name
        seen = observe_agent(w, pod, image)
        if seen is not None:
            out[seen.name] = seen
    return dict(sorted(out.items()))
