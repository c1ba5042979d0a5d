"""A stand-in Kubernetes API server for the kubernetes runtime's tests.

This machine cannot run a cluster, so the tests serve this stand-in instead, shaped
after the Kubernetes API (the REST paths, verbs, status codes and object shapes of its
"API concepts" reference), for the kinds the driver uses and only as far as it uses them:

- paths ``/api/v1/namespaces/{ns}/{plural}[/{name}[/log]]`` and
  ``/apis/{group}/{version}/namespaces/{ns}/{plural}[/{name}]`` for pods, services,
  secrets, configmaps, persistentvolumeclaims, statefulsets, networkpolicies and
  agent-sandbox sandboxes;
- ``POST`` create (409 ``AlreadyExists``), ``GET`` get / list (``labelSelector`` with
  ``k=v``, ``k!=v``, ``k``, ``!k``) / watch (``?watch=true``, events after
  ``resourceVersion``, newline-delimited JSON), ``PUT`` replace and ``PATCH`` with
  ``application/merge-patch+json`` (RFC 7386) or ``application/strategic-merge-patch+json``
  (lists of containers, volumes, env, volumeMounts, ports merged by their key; other
  lists replaced), both 409 ``Conflict`` when the body names a stale
  ``metadata.resourceVersion``; ``DELETE`` (404 when absent; owned objects are
  garbage-collected through ``ownerReferences``);
- one cluster-wide ``resourceVersion`` counter, ``uid``, ``generation`` (bumped on spec
  changes), ``creationTimestamp``; Secret ``stringData`` folded into ``data``;
- every object written is validated against the Kubernetes OpenAPI schemas (and the
  pinned Sandbox CRD): an invalid one is refused with 422 ``Invalid``, as an API server does;
- two controllers: StatefulSet (``replicas`` 0 or 1 → pod ``<name>-0``; a changed pod
  template replaces the pod, like ``RollingUpdate``) and agent-sandbox Sandbox
  (``operatingMode: Running`` → pod ``<name>`` and a headless Service; ``Suspended``
  deletes the pod); neither creates nor deletes a PVC;
- a "node": each scheduled pod's container is started by a ``Runner`` (the driver tests
  use ``FakeRunner``; the e2e story runs the harness as a local process); a container
  that exits is restarted with backoff (``CrashLoopBackOff``, ``restartCount``,
  ``lastState.terminated``), its output is the pod log (``tailLines``, ``limitBytes``,
  ``previous``).

Not modelled: authentication, admission, field managers, server-side apply, finalizers,
scheduling constraints, PVC binding, real networking.
"""

from __future__ import annotations

import contextlib
import copy
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from tests.kubernetes.schemas import validate

Obj = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    """One resource kind the stand-in serves."""

    group_version: str
    kind: str
    plural: str

    @property
    def prefix(self) -> str:
        return "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"


KINDS = {
    k.plural: k
    for k in (
        Kind("v1", "Pod", "pods"),
        Kind("v1", "Service", "services"),
        Kind("v1", "Secret", "secrets"),
        Kind("v1", "ConfigMap", "configmaps"),
        Kind("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
        Kind("apps/v1", "StatefulSet", "statefulsets"),
        Kind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
        Kind("agents.x-k8s.io/v1beta1", "Sandbox", "sandboxes"),
    )
}
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
}
"""Strategic merge patch keys (the ``patchMergeKey`` of these fields in the API types)."""


class ApiFailure(Exception):
    """An API error answered as a ``Status`` with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def strategic_merge_patch(target: Any, patch: Any, key: str | None = None) -> Any:
    """A strategic merge patch as far as the driver uses it: a merge patch whose lists of
    ``MERGE_KEYS`` fields merge element-wise by their key (other lists are replaced)."""
    if isinstance(patch, list) and key in MERGE_KEYS and isinstance(target, list):
        mk = MERGE_KEYS[key]
        out = [copy.deepcopy(x) for x in target]
        for item in patch:
            for i, have in enumerate(out):
                if (
                    isinstance(have, dict)
                    and isinstance(item, dict)
                    and have.get(mk) == item.get(mk)
                ):
                    out[i] = strategic_merge_patch(have, item)
                    break
            else:
                out.append(copy.deepcopy(item))
        return out
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out_d = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out_d.pop(k, None)
        else:
            out_d[k] = strategic_merge_patch(out_d.get(k), v, k)
    return out_d


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """A ``labelSelector`` of equality terms: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k) != v:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


# ---------------------------------------------------------------- the node


class Container(Protocol):
    """One run of a pod's container."""

    def exit_code(self) -> int | None:
        """None while it runs, else its exit code."""
        ...

    def kill(self, grace: float) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        ...

    def log(self) -> str:
        """Everything it wrote so far (stdout + stderr)."""
        ...


class Runner(Protocol):
    """Starts a pod's container on the stand-in's "node"."""

    def launch(self, pod: Obj) -> Container: ...


@dataclass
class FakeContainer:
    """A container that runs until ``crash`` (or ``kill``); its log is ``lines``."""

    pod: str
    lines: list[str] = field(default_factory=list)
    code: int | None = None

    def exit_code(self) -> int | None:
        return self.code

    def kill(self, grace: float) -> None:
        if self.code is None:
            self.lines.append("terminated")
            self.code = 143

    def log(self) -> str:
        return "".join(line + "\n" for line in self.lines)


class FakeRunner:
    """Runs every pod as a ``FakeContainer`` (the driver tests' node): it logs one line with the
    pod's name and image. ``crash_on_start`` names pods whose container exits 1 at once."""

    def __init__(self) -> None:
        self.containers: dict[str, list[FakeContainer]] = {}
        self.crash_on_start: set[str] = set()

    def launch(self, pod: Obj) -> Container:
        name = pod["metadata"]["name"]
        image = pod["spec"]["containers"][0]["image"]
        c = FakeContainer(name, [f"{name}: started {image}"])
        if name in self.crash_on_start:
            c.lines.append("boom")
            c.code = 1
        self.containers.setdefault(name, []).append(c)
        return c

    def crash(self, pod: str, code: int = 1) -> None:
        """Make the current run of ``pod``'s container exit with ``code``."""
        c = self.containers[pod][-1]
        c.lines.append(f"crashed with {code}")
        c.code = code


@dataclass
class PodRun:
    """What the node keeps of one pod: its container now, the previous run's log, restarts."""

    container: Container | None = None
    restarts: int = 0
    previous_log: str = ""
    restart_at: float = 0.0
    last_exit: int | None = None
    started_at: str = ""


# ---------------------------------------------------------------- the store


class StandIn:
    """The stand-in API server (module docstring). ``start()`` serves it on 127.0.0.1;
    ``url`` is its base URL; every request must carry ``Authorization: Bearer <token>``
    (else 401, as an API server without anonymous access). ``runner`` starts pods'
    containers; ``backoff`` is the first crash-loop delay in seconds (doubling, capped
    at ``backoff_cap``): kubelet's are 10 s and 300 s, scaled down so tests run quickly."""

    def __init__(
        self,
        runner: Runner | None = None,
        *,
        backoff: float = 0.2,
        backoff_cap: float = 2.0,
        validate_objects: bool = True,
        token: str = "stand-in-token",
    ) -> None:
        self.runner: Runner = runner if runner is not None else FakeRunner()
        self.backoff = backoff
        self.backoff_cap = backoff_cap
        self.validate_objects = validate_objects
        self.token = token
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.events: list[tuple[int, str, str, Obj]] = []  # (rv, plural, type, object)
        self.rv = 100
        self.runs: dict[tuple[str, str], PodRun] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path): what the driver asked
        self.honour_limit_bytes = True
        """False: pod logs ignore ``limitBytes`` (to see that the driver stops reading anyway)."""
        self.faults: dict[tuple[str, str], int] = {}
        """``(method, plural)`` → an HTTP status the next such request is answered with
        (``Forbidden``, ``InternalError``, ...) instead of being served: taken once."""
        self._server: ThreadingHTTPServer | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------ lifecycle

    def start(self) -> str:
        """Serve on a free loopback port; returns the base URL."""
        standin = self

        class Handler(_Handler):
            server_standin = standin

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        for target in (self._server.serve_forever, self._node):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self._threads.append(t)
        return self.url

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        """Stop serving, end watches, and kill every running container."""
        self._stop.set()
        with self.changed:
            self.changed.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self.lock:
            runs = list(self.runs.values())
        for run in runs:
            if run.container is not None:
                run.container.kill(2.0)
        for t in self._threads:
            t.join(5)

    # ------------------------------------------------------------ store primitives

    def _bump(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _emit(self, plural: str, type_: str, obj: Obj) -> None:
        self.events.append(
            (int(obj["metadata"]["resourceVersion"]), plural, type_, copy.deepcopy(obj))
        )
        self.changed.notify_all()

    def get(self, plural: str, ns: str, name: str) -> Obj | None:
        """A copy of the stored object, or None (for tests' assertions)."""
        with self.lock:
            obj = self.objects.get((plural, ns, name))
            return copy.deepcopy(obj) if obj is not None else None

    def names(self, plural: str, ns: str) -> list[str]:
        """The names of every stored ``plural`` in ``ns``, sorted."""
        with self.lock:
            return sorted(n for (p, s, n) in self.objects if p == plural and s == ns)

    def _check(self, obj: Obj) -> None:
        if not self.validate_objects:
            return
        try:
            validate(obj)
        except Exception as exc:
            raise ApiFailure(422, "Invalid", f"{obj.get('kind')} is invalid: {exc}") from exc

    def create(self, plural: str, ns: str, body: Obj, *, check: bool = True) -> Obj:
        with self.lock:
            kind = KINDS[plural]
            meta = body.setdefault("metadata", {})
            name = meta.get("name")
            if not name:
                raise ApiFailure(422, "Invalid", "metadata.name: Required value")
            if body.get("kind") != kind.kind or body.get("apiVersion") != kind.group_version:
                raise ApiFailure(400, "BadRequest", f"expected {kind.group_version} {kind.kind}")
            if meta.get("namespace", ns) != ns:
                raise ApiFailure(400, "BadRequest", "the namespace of the object does not match")
            if (plural, ns, name) in self.objects:
                raise ApiFailure(409, "AlreadyExists", f'{plural} "{name}" already exists')
            obj = copy.deepcopy(body)
            if kind.kind == "Secret" and "stringData" in obj:
                import base64

                data = obj.setdefault("data", {})
                for k, v in obj.pop("stringData").items():
                    data[k] = base64.b64encode(v.encode()).decode()
            meta = obj["metadata"]
            meta.update(
                namespace=ns,
                uid=str(uuid.uuid4()),
                creationTimestamp=now_rfc3339(),
                resourceVersion=self._bump(),
            )
            if "spec" in obj:
                meta["generation"] = 1
            if check:
                self._check(obj)
            self.objects[(plural, ns, name)] = obj
            self._emit(plural, "ADDED", obj)
            self._reconcile(plural, ns, name)
            return copy.deepcopy(self.objects[(plural, ns, name)])

    def _update(self, plural: str, ns: str, name: str, new: Obj, *, check: bool = True) -> Obj:
        """Store ``new`` over the existing object (its server-set metadata kept)."""
        old = self.objects[(plural, ns, name)]
        meta = new.setdefault("metadata", {})
        for k in ("uid", "creationTimestamp", "namespace", "name"):
            meta[k] = old["metadata"][k]
        if "generation" in old["metadata"]:
            gen = old["metadata"]["generation"]
            meta["generation"] = gen + 1 if new.get("spec") != old.get("spec") else gen
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        if new == old:
            return copy.deepcopy(old)  # a no-op write keeps the resourceVersion, as upstream
        meta["resourceVersion"] = self._bump()
        if check:
            self._check(new)
        self.objects[(plural, ns, name)] = new
        self._emit(plural, "MODIFIED", new)
        self._reconcile(plural, ns, name)
        return copy.deepcopy(new)

    def _existing(self, plural: str, ns: str, name: str) -> Obj:
        obj = self.objects.get((plural, ns, name))
        if obj is None:
            raise ApiFailure(404, "NotFound", f'{plural} "{name}" not found')
        return obj

    @staticmethod
    def _precondition(obj: Obj, body: Obj) -> None:
        want = (body.get("metadata") or {}).get("resourceVersion")
        if want is not None and want != obj["metadata"]["resourceVersion"]:
            raise ApiFailure(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {obj["kind"]} "{obj["metadata"]["name"]}": '
                "the object has been modified; please apply your changes to the latest version "
                "and try again",
            )

    def replace(self, plural: str, ns: str, name: str, body: Obj) -> Obj:
        with self.lock:
            obj = self._existing(plural, ns, name)
            self._precondition(obj, body)
            new = copy.deepcopy(body)
            if "status" in obj:
                new["status"] = copy.deepcopy(obj["status"])  # status is a subresource
            return self._update(plural, ns, name, new)

    def patch(self, plural: str, ns: str, name: str, body: Obj, content_type: str) -> Obj:
        with self.lock:
            obj = self._existing(plural, ns, name)
            self._precondition(obj, body)
            if content_type == "application/merge-patch+json":
                new = merge_patch(obj, body)
            elif content_type == "application/strategic-merge-patch+json":
                if KINDS[plural].group_version.startswith("agents.x-k8s.io"):
                    raise ApiFailure(
                        415,
                        "UnsupportedMediaType",
                        "strategic merge patch is not supported for custom resources",
                    )
                new = strategic_merge_patch(obj, body)
            else:
                raise ApiFailure(
                    415, "UnsupportedMediaType", f"the stand-in does not take {content_type}"
                )
            if "status" in obj:
                new["status"] = copy.deepcopy(obj["status"])
            return self._update(plural, ns, name, new)

    def delete(self, plural: str, ns: str, name: str) -> Obj:
        with self.lock:
            obj = self._existing(plural, ns, name)
            del self.objects[(plural, ns, name)]
            obj["metadata"]["resourceVersion"] = self._bump()
            self._emit(plural, "DELETED", obj)
            if plural == "pods":
                self._kill(ns, name)
            uid = obj["metadata"]["uid"]
            for (p, s, n), child in list(self.objects.items()):
                owners = child["metadata"].get("ownerReferences") or []
                if s == ns and any(o.get("uid") == uid for o in owners):
                    self.delete(p, s, n)
            self._reconcile(plural, ns, name)
            return obj

    def list(self, plural: str, ns: str, selector: str = "") -> Obj:
        with self.lock:
            kind = KINDS[plural]
            # items of a built-in kind carry no kind / apiVersion in a list, as upstream
            # (the list's own kind says it); custom resources keep theirs
            builtin = not kind.group_version.startswith("agents.x-k8s.io")
            items = [
                {
                    k: v
                    for k, v in copy.deepcopy(o).items()
                    if not (builtin and k in ("kind", "apiVersion"))
                }
                for (p, s, _), o in sorted(self.objects.items())
                if p == plural
                and s == ns
                and selector_matches(selector, o["metadata"].get("labels") or {})
            ]
            return {
                "kind": f"{kind.kind}List",
                "apiVersion": kind.group_version,
                "metadata": {"resourceVersion": str(self.rv)},
                "items": items,
            }

    def watch(
        self, plural: str, ns: str, selector: str, since: int | None, timeout: float
    ) -> Iterator[Obj]:
        """Events for ``plural`` in ``ns`` after resourceVersion ``since`` (None: the current
        objects as ADDED first), until ``timeout`` seconds pass or the stand-in stops."""
        deadline = time.monotonic() + timeout
        with self.lock:
            if since is None:
                listed = self.list(plural, ns, selector)
                since = int(listed["metadata"]["resourceVersion"])
                pending = [{"type": "ADDED", "object": o} for o in listed["items"]]
            else:
                pending = []
        yield from pending
        while not self._stop.is_set():
            with self.changed:
                batch = [
                    {"type": t, "object": copy.deepcopy(o)}
                    for rv, p, t, o in self.events
                    if rv > since
                    and p == plural
                    and o["metadata"]["namespace"] == ns
                    and selector_matches(selector, o["metadata"].get("labels") or {})
                ]
                if self.events:
                    since = max(since, self.events[-1][0])
                if not batch:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    self.changed.wait(min(left, 0.5))
                    continue
            yield from batch

    # ------------------------------------------------------------ controllers

    def _reconcile(self, plural: str, ns: str, name: str) -> None:
        """Run the controllers an object change concerns (under the lock)."""
        if plural == "statefulsets":
            self._statefulset(ns, name)
        elif plural == "sandboxes":
            self._sandbox(ns, name)
        elif plural == "pods":
            # a pod deleted out from under its owner is recreated by it
            for p, s, n in list(self.objects):
                if s == ns and p == "statefulsets" and f"{n}-0" == name:
                    self._statefulset(ns, n)
                elif s == ns and p == "sandboxes" and n == name:
                    self._sandbox(ns, n)

    @staticmethod
    def _owner(obj: Obj) -> list[Obj]:
        return [
            {
                "apiVersion": obj["apiVersion"],
                "kind": obj["kind"],
                "name": obj["metadata"]["name"],
                "uid": obj["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]

    def _template_hash(self, template: Obj) -> str:
        import hashlib

        return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]

    def _ensure_pod(self, ns: str, pod_name: str, owner: Obj, template: Obj, revision: str) -> Obj:
        existing = self.objects.get(("pods", ns, pod_name))
        if existing is not None:
            return existing
        meta = copy.deepcopy(template.get("metadata") or {})
        meta["name"] = pod_name
        meta.setdefault("labels", {})["controller-revision-hash"] = revision
        meta["ownerReferences"] = self._owner(owner)
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": copy.deepcopy(template["spec"]),
            "status": {
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "True"}],
            },
        }
        return self.create("pods", ns, pod, check=False)

    def _statefulset(self, ns: str, name: str) -> None:
        sts = self.objects.get(("statefulsets", ns, name))
        pod_name = f"{name}-0"
        pod = self.objects.get(("pods", ns, pod_name))
        if sts is None:
            return
        revision = f"{name}-{self._template_hash(sts['spec']['template'])}"
        replicas = int(sts["spec"].get("replicas", 1))
        if replicas == 0:
            if pod is not None:
                self.delete("pods", ns, pod_name)
        else:
            if (
                pod is not None
                and pod["metadata"]["labels"].get("controller-revision-hash") != revision
            ):
                self.delete("pods", ns, pod_name)  # RollingUpdate of one replica: replace the pod
                pod = None
            if pod is None:
                self._ensure_pod(ns, pod_name, sts, sts["spec"]["template"], revision)
        self._statefulset_status(ns, name)

    def _statefulset_status(self, ns: str, name: str) -> None:
        sts = self.objects.get(("statefulsets", ns, name))
        if sts is None:
            return
        pod = self.objects.get(("pods", ns, f"{name}-0"))
        ready = int(pod is not None and _pod_ready(pod))
        revision = f"{name}-{self._template_hash(sts['spec']['template'])}"
        status = {
            "observedGeneration": sts["metadata"].get("generation", 1),
            "replicas": int(pod is not None),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "currentReplicas": int(pod is not None),
            "updatedReplicas": int(pod is not None),
            "currentRevision": revision,
            "updateRevision": revision,
        }
        if sts.get("status") != status:
            sts["status"] = status
            sts["metadata"]["resourceVersion"] = self._bump()
            self._emit("statefulsets", "MODIFIED", sts)

    def _sandbox(self, ns: str, name: str) -> None:
        sb = self.objects.get(("sandboxes", ns, name))
        if sb is None:
            return
        pod = self.objects.get(("pods", ns, name))
        running = sb["spec"].get("operatingMode", "Running") == "Running"
        if not running:
            if pod is not None:
                self.delete("pods", ns, name)
        elif pod is None:
            self._ensure_pod(ns, name, sb, sb["spec"]["podTemplate"], "sandbox")
        if ("services", ns, name) not in self.objects:
            svc = {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": name,
                    "labels": dict(sb["metadata"].get("labels") or {}),
                    "ownerReferences": self._owner(sb),
                },
                "spec": {
                    "clusterIP": "None",
                    "selector": {"agents.x-k8s.io/sandbox-name-hash": name},
                },
            }
            self.create("services", ns, svc, check=False)
        self._sandbox_status(ns, name)

    def _sandbox_status(self, ns: str, name: str) -> None:
        sb = self.objects.get(("sandboxes", ns, name))
        if sb is None:
            return
        pod = self.objects.get(("pods", ns, name))
        ready = pod is not None and _pod_ready(pod)
        status = {
            "serviceFQDN": f"{name}.{ns}.svc.cluster.local",
            "service": name,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "reason": "DependenciesReady" if ready else "DependenciesNotReady",
                    "message": "pod is ready" if ready else "pod is not ready",
                    "lastTransitionTime": now_rfc3339(),
                    "observedGeneration": sb["metadata"].get("generation", 1),
                }
            ],
        }
        old = sb.get("status") or {}
        if [c.get("status") for c in old.get("conditions", [])] != ["True" if ready else "False"]:
            sb["status"] = status
            sb["metadata"]["resourceVersion"] = self._bump()
            self._emit("sandboxes", "MODIFIED", sb)

    def _owner_status(self, ns: str, pod: Obj) -> None:
        for owner in pod["metadata"].get("ownerReferences") or []:
            if owner["kind"] == "StatefulSet":
                self._statefulset_status(ns, owner["name"])
            elif owner["kind"] == "Sandbox":
                self._sandbox_status(ns, owner["name"])

    # ------------------------------------------------------------ the node

    def _kill(self, ns: str, name: str) -> None:
        run = self.runs.pop((ns, name), None)
        if run is not None and run.container is not None:
            container = run.container
            threading.Thread(target=container.kill, args=(10.0,), daemon=True).start()

    def _node(self) -> None:
        """Schedule pending pods, notice exited containers, restart them with backoff."""
        while not self._stop.wait(0.05):
            with self.lock:
                for (p, ns, name), pod in list(self.objects.items()):
                    if p != "pods":
                        continue
                    run = self.runs.get((ns, name))
                    if run is None:
                        run = self.runs[(ns, name)] = PodRun()
                        self._launch(ns, pod, run)
                        continue
                    if run.container is None:
                        if time.monotonic() >= run.restart_at:
                            self._launch(ns, pod, run)
                        continue
                    code = run.container.exit_code()
                    if code is None:
                        continue
                    run.previous_log = run.container.log()
                    run.container = None
                    run.restarts += 1
                    run.last_exit = code
                    delay = min(self.backoff * 2 ** (run.restarts - 1), self.backoff_cap)
                    run.restart_at = time.monotonic() + delay
                    self._pod_status(ns, pod, run, waiting="CrashLoopBackOff")

    def _launch(self, ns: str, pod: Obj, run: PodRun) -> None:
        try:
            run.container = self.runner.launch(copy.deepcopy(pod))
        except Exception as exc:
            run.restarts += 1
            run.last_exit = 128
            run.previous_log = f"cannot start: {exc}\n"
            run.restart_at = time.monotonic() + self.backoff_cap
            self._pod_status(ns, pod, run, waiting="CreateContainerError")
            return
        run.started_at = now_rfc3339()
        self._pod_status(ns, pod, run)

    def _pod_status(self, ns: str, pod: Obj, run: PodRun, waiting: str | None = None) -> None:
        spec = pod["spec"]["containers"][0]
        state: Obj
        if waiting is None:
            state = {"running": {"startedAt": run.started_at}}
        else:
            state = {
                "waiting": {
                    "reason": waiting,
                    "message": f"back-off restarting failed container {spec['name']}",
                }
            }
        cs: Obj = {
            "name": spec["name"],
            "image": spec["image"],
            "imageID": "",
            "containerID": f"standin://{pod['metadata']['uid']}-{run.restarts}",
            "ready": waiting is None,
            "started": waiting is None,
            "restartCount": run.restarts,
            "state": state,
            "lastState": {},
        }
        if run.last_exit is not None:
            cs["lastState"] = {
                "terminated": {
                    "exitCode": run.last_exit,
                    "reason": "Error" if run.last_exit else "Completed",
                    "finishedAt": now_rfc3339(),
                }
            }
        ready = "True" if waiting is None else "False"
        pod["status"] = {
            "phase": "Running",
            "podIP": "10.244.0.7",
            "hostIP": "10.0.0.1",
            "startTime": pod["metadata"]["creationTimestamp"],
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "ContainersReady", "status": ready},
                {"type": "Ready", "status": ready},
            ],
            "containerStatuses": [cs],
        }
        pod["metadata"]["resourceVersion"] = self._bump()
        self._emit("pods", "MODIFIED", pod)
        self._owner_status(ns, pod)

    def logs(self, ns: str, name: str, tail: int | None, previous: bool) -> str:
        with self.lock:
            self._existing("pods", ns, name)
            run = self.runs.get((ns, name))
            if run is None:
                raise ApiFailure(
                    400, "BadRequest", f'container "harness" in pod "{name}" is waiting to start'
                )
            if previous:
                if not run.previous_log and run.restarts == 0:
                    raise ApiFailure(
                        400,
                        "BadRequest",
                        f'previous terminated container in pod "{name}" not found',
                    )
                text = run.previous_log
            elif run.container is not None:
                text = run.container.log()
            else:
                text = run.previous_log  # waiting to restart: the last run's output, as kubelet
        if tail is not None:
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-tail:]) if tail > 0 else ""
        return text

    def wait_for(self, pred: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``pred()`` (called under the lock) holds; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("the stand-in never reached the expected state")
                self.changed.wait(min(left, 0.1))


def _pod_ready(pod: Obj) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions", [])
    )


# ---------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    server_standin: StandIn
    protocol_version = "HTTP/1.1"
    _raw = b""
    # headers and body are separate writes: without TCP_NODELAY each keep-alive
    # request waits out the peer's delayed ACK (40 ms)
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _route(self) -> tuple[str, str, str | None, str | None, dict[str, list[str]]]:
        """``(plural, namespace, name, subresource, query)`` of the request path."""
        parts = urlsplit(self.path)
        segs = [s for s in parts.path.split("/") if s]
        if segs[:2] == ["api", "v1"]:
            rest = segs[2:]
            gv = "v1"
        elif segs[:1] == ["apis"] and len(segs) >= 3:
            rest = segs[3:]
            gv = f"{segs[1]}/{segs[2]}"
        else:
            raise ApiFailure(404, "NotFound", f"the server could not find {parts.path}")
        if len(rest) < 3 or rest[0] != "namespaces" or rest[2] not in KINDS:
            raise ApiFailure(404, "NotFound", f"the server could not find {parts.path}")
        plural = rest[2]
        if KINDS[plural].group_version != gv:
            raise ApiFailure(404, "NotFound", f"no {plural} in {gv}")
        name = rest[3] if len(rest) > 3 else None
        sub = rest[4] if len(rest) > 4 else None
        if sub not in (None, "log") or (sub == "log" and plural != "pods"):
            raise ApiFailure(404, "NotFound", f"no subresource {sub}")
        return plural, rest[1], name, sub, parse_qs(parts.query)

    def _body(self) -> Obj:
        try:
            doc = json.loads(self._raw or b"{}")
        except ValueError as exc:
            raise ApiFailure(400, "BadRequest", f"invalid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise ApiFailure(400, "BadRequest", "the body must be a JSON object")
        return doc

    def _send(self, code: int, doc: Obj | str) -> None:
        if isinstance(doc, str):
            self._send_bytes(code, doc.encode())
        else:
            self._send_bytes(code, json.dumps(doc).encode(), "application/json")

    def _send_bytes(self, code: int, data: bytes, ctype: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        # the client may stop reading (a bounded log read): as a real server, move on
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(data)

    def _handle(self, method: str) -> None:
        s = self.server_standin
        s.requests.append((method, self.path))
        # read the body before anything can refuse the request: what is left unread on a
        # keep-alive connection would be taken for the next request
        length = int(self.headers.get("Content-Length") or 0)
        self._raw = self.rfile.read(length) if length else b""
        try:
            if self.headers.get("Authorization") != f"Bearer {s.token}":
                raise ApiFailure(401, "Unauthorized", "Unauthorized")
            plural, ns, name, sub, q = self._route()
            fault = s.faults.pop((method, plural), None)
            if fault is not None:
                reason = {403: "Forbidden", 429: "TooManyRequests", 500: "InternalError"}
                raise ApiFailure(fault, reason.get(fault, "Unknown"), f"injected {fault}")
            if method == "GET" and name is None and q.get("watch", [""])[0] in ("true", "1"):
                return self._watch(plural, ns, q)
            if method == "GET" and name is None:
                return self._send(200, s.list(plural, ns, q.get("labelSelector", [""])[0]))
            if method == "POST" and name is None:
                return self._send(201, s.create(plural, ns, self._body()))
            if name is None:
                raise ApiFailure(405, "MethodNotAllowed", f"{method} needs a name")
            if method == "GET" and sub == "log":
                tail = q.get("tailLines", [None])[0]
                limit = q.get("limitBytes", [None])[0]
                previous = q.get("previous", ["false"])[0] in ("true", "1")
                text = s.logs(ns, name, int(tail) if tail else None, previous)
                if (
                    limit is not None and s.honour_limit_bytes
                ):  # the first limitBytes bytes of what tailLines chose
                    return self._send_bytes(200, text.encode()[: int(limit)])
                return self._send(200, text)
            if method == "GET":
                with s.lock:
                    return self._send(200, copy.deepcopy(s._existing(plural, ns, name)))
            if method == "PUT":
                return self._send(200, s.replace(plural, ns, name, self._body()))
            if method == "PATCH":
                ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
                return self._send(200, s.patch(plural, ns, name, self._body(), ctype))
            if method == "DELETE":
                s.delete(plural, ns, name)
                return self._send(
                    200,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Success",
                        "details": {"name": name, "kind": plural},
                    },
                )
            raise ApiFailure(405, "MethodNotAllowed", method)
        except ApiFailure as exc:
            self._send(exc.code, exc.status())

    def _watch(self, plural: str, ns: str, q: dict[str, list[str]]) -> None:
        s = self.server_standin
        rv = q.get("resourceVersion", [None])[0]
        timeout = float(q.get("timeoutSeconds", ["30"])[0])
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for event in s.watch(
                plural, ns, q.get("labelSelector", [""])[0], int(rv) if rv else None, timeout
            ):
                data = json.dumps(event).encode() + b"\n"
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")
