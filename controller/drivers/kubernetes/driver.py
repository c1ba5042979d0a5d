"""The ``kubernetes`` runtime: every agent is a pod on a cluster (docs/kubernetes.md).

Implements ``controller.drivers.base.Driver`` with the objects ``render`` makes, in one
namespace, through ``KubeApi``:

- create / rebuild / apply_manifest: write ``settings.json`` where the swarm reads it
  (``Layout.agent_settings``), make sure the agent's PVC exists (a tombstoned one is
  taken back: its state returns), then create-or-replace Secret, ConfigMap, Service,
  NetworkPolicy and the workload, running. The pod template carries a restart stamp, so
  every deploy restarts the harness as on the other runtimes (a StatefulSet rolls its
  pod; a Sandbox's pod is deleted and made again by the agent-sandbox controller).
  ``agent.nix`` is not built here: the image is config (``KubeSettings.image``).
- start / stop: scale to one / zero (``operatingMode: Running | Suspended``); the PVC
  stays. ``start`` of a failed (crash-looping) agent deletes its pod for a fresh one.
- restart: a new restart stamp on the pod template.
- destroy: delete the workload, Service, NetworkPolicy, ConfigMap and Secret; the PVC is
  labelled ``hyperhive.dev/tombstone=true`` and kept; ``purge`` deletes it.
- observe: two lists (workloads, pods) → ``observe.observe_all``.
- journal: the harness container's log through the API.
- generation: moves with every pod / workload event of a watch (a thread started on
  first use); while the watch is down it moves on every call, so the swarm observes.

Every API failure is a ``TransientError`` or ``PermanentError`` (``api`` module).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.auth import AgentCredentials
from controller.config import Config, ConfigError
from controller.dashboard.upstream import TcpUpstream
from controller.drivers.base import Deployment, LineSink
from controller.drivers.kubernetes import names as n
from controller.drivers.kubernetes.api import Conflict, KubeApi, NotFound, load_config
from controller.drivers.kubernetes.observe import NOT_BUILT, observe_all, pod_name, wants_running
from controller.drivers.kubernetes.render import (
    ANTHROPIC_SECRET,
    AgentObjects,
    render_agent,
    restart_stamp,
    rfc3339,
)
from controller.drivers.kubernetes.settings import KubeSettings, Workload
from controller.drivers.marker import atomic_write, read_json
from controller.errors import Invalid, PermanentError, TransientError
from controller.model import ObservedAgent, Phase
from controller.paths import Layout
from controller.status import Isolation
from schemas.names import is_agent_name

log = logging.getLogger(__name__)

HARNESS_UNIT = "hyperhive-agent.service"
LOGIN_TTL = 30.0
CREDENTIAL_KEYS = frozenset(
    {"ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN"}
)
"""Keys of the ``hyperhive-anthropic`` Secret that let claude reach the Messages API."""
MAX_JOURNAL_LINES = 5000
APPLY_TRIES = 3


class KubernetesDriver:
    """Runs agents as pods (module docstring). ``api`` defaults to a client of the cluster
    ``config.kubernetes`` names (``api.load_config``; ``ConfigError`` when there is none,
    or no ``api:`` listener); ``clock`` gives unix seconds."""

    name = "kubernetes"
    builds_nix = False
    runtime_note = (
        "kubernetes runtime: agents are pods; agent.nix is not built (the image is config)"
    )

    def __init__(
        self,
        layout: Layout,
        config: Config,
        api: KubeApi | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.layout = layout
        self.config = config
        self.cfg: KubeSettings = config.kubernetes
        if api is None:
            api = self._connect(config)
        self.api = api
        self.env: dict[str, str] = {}
        """No environment reaches an agent from the controller (its pod has its own)."""
        self._clock = clock
        self._credentials = AgentCredentials(layout)
        self._gen = 0
        self._gen_lock = threading.Lock()
        self._watched: set[str] = set()  # kinds whose watch is established
        self._watch_thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._login: tuple[float, bool] | None = None  # (monotonic read time, key present)

    @staticmethod
    def _connect(config: Config) -> KubeApi:
        """The client of the cluster ``config`` names; ``ConfigError`` (a ValueError: the
        controller refuses to start, saying why) without a cluster config or an ``api:``
        listener for the pods to reach."""
        if config.api is None:
            raise ConfigError(
                "runtime kubernetes: agents reach the controller over TCP; set "
                "`api: {listen: 0.0.0.0:7100, hosts: [...]}` and `kubernetes.api_url` "
                "(docs/kubernetes.md)"
            )
        try:
            return KubeApi(load_config(config.kubernetes), config.kubernetes.namespace)
        except PermanentError as exc:
            raise ConfigError(str(exc)) from exc

    @property
    def workload_kind(self) -> str:
        """``StatefulSet`` or ``Sandbox`` (``KubeSettings.workload``)."""
        return "Sandbox" if self.cfg.workload is Workload.SANDBOX else "StatefulSet"

    # ------------------------------------------------------------ observe

    def observe(self) -> dict[str, ObservedAgent]:
        """Every agent with a workload in the namespace, keyed by name (two list calls)."""
        workloads = self.api.list(self.workload_kind, n.SELECTOR)
        pods = self.api.list("Pod", n.SELECTOR)
        return observe_all(workloads, pods, self.cfg.image)

    def _bump(self) -> None:
        with self._gen_lock:
            self._gen += 1

    def generation(self) -> int:
        """A counter that moves whenever what ``observe`` returns may have changed: with each
        watch event on pods and workloads, each change made here, and on every call while
        the watch is not established (so the swarm then observes each time)."""
        if self._watch_thread is None and not self._closed.is_set():
            self._watch_thread = threading.Thread(
                target=self._watch_loop, name="kube-watch", daemon=True
            )
            self._watch_thread.start()
        if not self.watching:
            self._bump()
        return self._gen

    @property
    def watching(self) -> bool:
        """Whether the watches of pods and workloads are both established."""
        return len(self._watched) == 2

    def _watch_loop(self) -> None:
        kinds = ("Pod", self.workload_kind)
        threads = [
            threading.Thread(
                target=self._watch_kind, args=(k,), daemon=True, name=f"kube-watch-{k}"
            )
            for k in kinds
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _watch_kind(self, kind: str) -> None:
        """List then watch from the list's resourceVersion (an informer's pattern: no event
        between the two is lost); every event moves ``generation``. Reconnects after 1 s."""
        while not self._closed.is_set():
            try:
                _, since = self.api.list_at(kind, n.SELECTOR)
                self._watched.add(kind)
                self._bump()
                for _event, _obj in self.api.watch(kind, n.SELECTOR, since):
                    self._bump()
                    if self._closed.is_set():
                        return
            except (TransientError, PermanentError) as exc:
                log.debug("kubernetes watch of %s ended: %s", kind, exc)
            except Exception:  # the watch must never take the controller down
                if self._closed.is_set():
                    return  # the client was closed under it
                log.exception("kubernetes watch of %s failed", kind)
            self._watched.discard(kind)
            self._bump()
            self._closed.wait(1.0)

    def close(self) -> None:
        """Stop the watch and close the client."""
        self._closed.set()
        self.api.close()

    # ------------------------------------------------------------ deploy

    def render(self, d: Deployment, *, running: bool = True) -> AgentObjects:
        """The objects ``d`` deploys, with the agent's current credential."""
        credential = self._credentials.ensure(d.agent.name)
        return render_agent(d, credential, self.cfg, self._clock(), running=running)

    def _apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create ``obj``, or replace the existing one (re-read and retried on a 409)."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        try:
            return self.api.create(obj)
        except Conflict:
            pass
        for _ in range(APPLY_TRIES):
            have = self.api.get(kind, name)
            if have is None:
                try:
                    return self.api.create(obj)
                except Conflict:
                    continue
            body = json.loads(json.dumps(obj))
            body["metadata"]["resourceVersion"] = have["metadata"]["resourceVersion"]
            if kind == "Service":
                # clusterIP is immutable and set by the server: keep what it chose
                body["spec"]["clusterIP"] = have.get("spec", {}).get("clusterIP", "None")
            try:
                return self.api.replace(body)
            except Conflict:
                continue
        raise TransientError(f"kubernetes: {kind}/{name} kept changing under us; retrying later")

    def _ensure_pvc(self, pvc: dict[str, Any], log_line: LineSink) -> None:
        name = pvc["metadata"]["name"]
        have = self.api.get("PersistentVolumeClaim", name)
        if have is None:
            # a Conflict means it was made meanwhile: it is there, which is all we need
            with contextlib.suppress(Conflict):
                self.api.create(pvc)
            return
        labels = have["metadata"].get("labels") or {}
        if labels.get(n.TOMBSTONE):
            self.api.patch(
                "PersistentVolumeClaim",
                name,
                {
                    "metadata": {
                        "labels": {n.TOMBSTONE: None},
                        "annotations": {n.ANN_DESTROYED_AT: None},
                    }
                },
            )
            log_line(f"state restored from its kept volume {name}")

    def _write_settings(self, d: Deployment) -> None:
        atomic_write(
            self.layout.agent_settings(d.agent.name),
            json.dumps(d.settings, indent=1, sort_keys=True) + "\n",
            0o444,
        )

    def _deploy(self, d: Deployment, log_line: LineSink) -> None:
        self._write_settings(d)
        objs = self.render(d)
        self._ensure_pvc(objs.pvc, log_line)
        for obj in objs.all()[1:]:
            self._apply(obj)
        if self.cfg.workload is Workload.SANDBOX:
            self._roll_sandbox_pod(objs.workload)
        self._bump()

    def _roll_sandbox_pod(self, workload: dict[str, Any]) -> None:
        """A Sandbox's pod whose restart stamp is older than the Sandbox's is deleted: the
        agent-sandbox controller makes a new one from the new template."""
        pod = self.api.get("Pod", pod_name(workload))
        if pod is None:
            return
        want = workload["spec"]["podTemplate"]["metadata"]["annotations"][n.ANN_RESTARTED_AT]
        have = (pod["metadata"].get("annotations") or {}).get(n.ANN_RESTARTED_AT)
        if have != want:
            self.api.delete("Pod", pod["metadata"]["name"])

    def create(self, d: Deployment, log: LineSink) -> None:
        """Create (or recreate) every object of the agent and run it."""
        if d.agent.has_nix:
            log(f"{d.agent.name}: {NOT_BUILT}")
        self._deploy(d, log)

    def rebuild(self, d: Deployment, log: LineSink) -> None:
        """No build under this runtime: new objects (marker, settings), then a restart."""
        log(f"{d.agent.name}: {NOT_BUILT}; restarting the harness with the new settings")
        self._deploy(d, log)

    def apply_manifest(self, d: Deployment) -> None:
        """New settings (ConfigMap) and marker, and a restart of the harness."""
        self._deploy(d, lambda line: log.info("[%s] %s", d.agent.name, line))

    # ------------------------------------------------------------ lifecycle

    def _workload(self, name: str) -> dict[str, Any] | None:
        if not is_agent_name(name):
            raise PermanentError(f"invalid agent name {name!r}")
        return self.api.get(self.workload_kind, n.base(name))

    def _scale(self, name: str, running: bool) -> None:
        if self.cfg.workload is Workload.SANDBOX:
            patch: dict[str, Any] = {
                "spec": {"operatingMode": "Running" if running else "Suspended"}
            }
        else:
            patch = {"spec": {"replicas": 1 if running else 0}}
        stamp = {n.ANN_SUSPENDED_AT: None if running else rfc3339(self._clock())}
        patch["metadata"] = {"annotations": stamp}
        self.api.patch(self.workload_kind, n.base(name), patch)
        self._bump()

    def start(self, name: str) -> None:
        """Run a stopped agent; a failed one gets a fresh pod. PermanentError if never deployed."""
        w = self._workload(name)
        if w is None:
            raise PermanentError(
                f"{name}: never deployed on kubernetes (no {self.workload_kind}); run a reconcile"
            )
        if not wants_running(w):
            self._scale(name, True)
            return
        seen = observe_all([w], [p for p in [self.api.get("Pod", pod_name(w))] if p is not None])
        if name in seen and seen[name].phase is Phase.FAILED:
            self.api.delete("Pod", pod_name(w))
            self._bump()

    def stop(self, name: str) -> None:
        """Scale to zero / suspend (the pod gets its grace period; the PVC stays).

        No-op when absent or already stopped."""
        w = self._workload(name)
        if w is None or not wants_running(w):
            return
        self._scale(name, False)

    def restart(self, name: str) -> None:
        """A new restart stamp on the pod template (and running): the pod is replaced."""
        w = self._workload(name)
        if w is None:
            raise PermanentError(f"{name}: never deployed on kubernetes; run a reconcile")
        stamp = {"metadata": {"annotations": {n.ANN_RESTARTED_AT: restart_stamp(self._clock())}}}
        if self.cfg.workload is Workload.SANDBOX:
            self.api.patch(
                "Sandbox",
                n.base(name),
                {"spec": {"operatingMode": "Running", "podTemplate": stamp}},
            )
            self.api.delete("Pod", pod_name(w))
        else:
            self.api.patch(
                "StatefulSet",
                n.base(name),
                {"spec": {"replicas": 1, "template": stamp}},
                strategic=True,
            )
            if wants_running(w):
                # a clock that has not moved since the last stamp changes nothing: replace
                # the pod outright
                pod = self.api.get("Pod", pod_name(w))
                if (
                    pod is not None
                    and (pod["metadata"].get("annotations") or {}).get(n.ANN_RESTARTED_AT)
                    == stamp["metadata"]["annotations"][n.ANN_RESTARTED_AT]
                ):
                    self.api.delete("Pod", pod_name(w))
        self._bump()

    def destroy(self, name: str) -> None:
        """Delete every object but the PVC, which is labelled a tombstone and kept."""
        if not is_agent_name(name):
            raise PermanentError(f"invalid agent name {name!r}")
        b = n.base(name)
        self.api.delete(self.workload_kind, b)
        for kind in ("Service", "NetworkPolicy", "ConfigMap", "Secret"):
            self.api.delete(kind, b)
        with contextlib.suppress(NotFound):
            self.api.patch(
                "PersistentVolumeClaim",
                n.pvc(name),
                {
                    "metadata": {
                        "labels": {n.TOMBSTONE: "true"},
                        "annotations": {n.ANN_DESTROYED_AT: rfc3339(self._clock())},
                    }
                },
            )
        self._bump()

    def purge(self, name: str) -> bool:
        """Delete the agent's PVC (its notes, login, sessions); False if there was none."""
        if not is_agent_name(name):
            raise PermanentError(f"invalid agent name {name!r}")
        return self.api.delete("PersistentVolumeClaim", n.pvc(name))

    def tombstones(self) -> list[dict[str, Any]]:
        """Kept volumes of destroyed agents: ``{"agent", "pvc", "destroyed_at"}``, by agent."""
        out = []
        for pvc in self.api.list("PersistentVolumeClaim", f"{n.SELECTOR},{n.TOMBSTONE}=true"):
            meta = pvc["metadata"]
            agent = (meta.get("annotations") or {}).get(n.ANN_AGENT)
            if agent:
                out.append(
                    {
                        "agent": agent,
                        "pvc": meta["name"],
                        "destroyed_at": (meta.get("annotations") or {}).get(n.ANN_DESTROYED_AT),
                    }
                )
        return sorted(out, key=lambda t: str(t["agent"]))

    # ------------------------------------------------------------ status, logs

    def login_state(self, agent: str) -> tuple[bool | None, str]:
        """The ``LoggedIn`` condition's input: True when the namespace's
        ``hyperhive-anthropic`` Secret holds a key or token every pod gets; else None
        (unknown): a login from the agent's web UI is on its volume, out of sight here.
        The Secret is read at most every ``LOGIN_TTL`` seconds."""
        now = time.monotonic()
        if self._login is None or now - self._login[0] > LOGIN_TTL:
            try:
                secret = self.api.get("Secret", ANTHROPIC_SECRET)
            except (TransientError, PermanentError) as exc:
                log.debug("kubernetes: cannot read %s: %s", ANTHROPIC_SECRET, exc)
                secret = None
            keys = set((secret or {}).get("data") or {}) | set(
                (secret or {}).get("stringData") or {}
            )
            self._login = (now, bool(keys & CREDENTIAL_KEYS))
        if self._login[1]:
            return True, f"API key or token from the Secret {ANTHROPIC_SECRET} (every pod)"
        return (
            None,
            "a claude login is kept on the agent's volume, out of the controller's sight: "
            f"log in from its web UI, or put ANTHROPIC_API_KEY in the Secret {ANTHROPIC_SECRET}",
        )

    def web_upstream(self, agent: str) -> TcpUpstream | Path:
        """Where the dashboard's proxy reaches ``agent``'s web UI: its pod's TCP port (the
        port in its deployed settings) on its Service's name (``KubeSettings.web_host``
        overrides), with its credential as the bearer the harness's TCP listener requires.
        Before a deploy (no settings, no credential): the local socket path, which answers
        nothing, so the dashboard says the UI is not running."""
        settings = read_json(self.layout.agent_settings(agent)) or {}
        port = settings.get("web_port")
        try:
            token = self.layout.agent_credential(agent).read_text().strip()
        except (OSError, ValueError):
            token = ""
        if not isinstance(port, int) or isinstance(port, bool) or not token:
            return self.layout.agent_web_sock(agent)
        host = self.cfg.web_host or f"{n.base(agent)}.{self.cfg.namespace}.svc"
        return TcpUpstream(host, port, token)

    def isolation(self, agent: str) -> Isolation:
        """Always isolated: its own pod, volume, credential and default-deny NetworkPolicy."""
        runtime = f", runtime class {self.cfg.runtime_class}" if self.cfg.runtime_class else ""
        return Isolation(
            True,
            "Pod",
            f"runs in its own pod{runtime}: only its own volume and credential, "
            "network limited by its NetworkPolicy",
        )

    def journal(self, agent: str, unit: str | None = None, lines: int = 200) -> str:
        """The last ``lines`` lines of the harness container's log ("" without a pod).

        ``unit`` may only be the harness (``hyperhive-agent.service`` or ``harness``) or
        None; ``lines`` is 1..5000 — else ``Invalid``.
        """
        if not is_agent_name(agent):
            raise Invalid(f"invalid agent name {agent!r}", "name")
        if unit not in (None, "", HARNESS_UNIT, n.HARNESS):
            raise Invalid(
                f"unit must be {HARNESS_UNIT} (the harness: the only container of an agent pod)",
                "unit",
            )
        if isinstance(lines, bool) or not 1 <= lines <= MAX_JOURNAL_LINES:
            raise Invalid(f"lines must be between 1 and {MAX_JOURNAL_LINES}", "lines")
        w = self._workload(agent)
        if w is None:
            return ""
        try:
            return self.api.logs(pod_name(w), n.HARNESS, lines)
        except NotFound:
            return ""
        except PermanentError as exc:
            # 400: the container has not started yet; there is nothing to read
            if " 400 " in str(exc):
                return ""
            raise
