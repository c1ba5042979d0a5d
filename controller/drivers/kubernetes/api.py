"""The narrow, typed door to the Kubernetes API the kubernetes runtime goes through.

Objects in and out are plain dicts (what ``render`` makes and ``observe`` reads); the
client is lightkube's (docs/kubernetes.md says why), used through its generic resources
so no field is lost in a model round trip. Only the verbs the driver needs: get, create,
replace (PUT with the read ``resourceVersion``), merge / strategic-merge patch, delete,
list by label, watch, and pod logs, all in one namespace.

Errors: ``NotFound`` (404) and ``Conflict`` (409: exists, or a stale resourceVersion) are
for the driver to handle; anything else becomes ``TransientError`` (5xx, 429, network:
retry with backoff) or ``PermanentError`` (403 missing RBAC, 422 invalid object, other
4xx: an operator must act), naming the verb, kind and object.
"""

from __future__ import annotations

import builtins
import functools
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import httpx2
from lightkube import ApiError, Client, KubeConfig
from lightkube.config.kubeconfig import SingleConfig
from lightkube.config.models import Cluster, User
from lightkube.core.exceptions import ConfigError
from lightkube.generic_resource import GenericNamespacedResource, create_namespaced_resource
from lightkube.resources.core_v1 import PodLog
from lightkube.types import PatchType

from controller.drivers.kubernetes.settings import KubeSettings
from controller.errors import PermanentError, TransientError

Obj = dict[str, Any]
FIELD_MANAGER = "hyperhive"

LOG_LIMIT_BYTES = 4 * 1024 * 1024
"""Most bytes of a pod's log one journal read takes (``limitBytes``): 5000 lines (the most
``journal`` asks for) of ~800 bytes."""

_KINDS: dict[str, tuple[str, str, str]] = {
    "Pod": ("", "v1", "pods"),
    "Service": ("", "v1", "services"),
    "Secret": ("", "v1", "secrets"),
    "ConfigMap": ("", "v1", "configmaps"),
    "PersistentVolumeClaim": ("", "v1", "persistentvolumeclaims"),
    "StatefulSet": ("apps", "v1", "statefulsets"),
    "NetworkPolicy": ("networking.k8s.io", "v1", "networkpolicies"),
    "Sandbox": ("agents.x-k8s.io", "v1beta1", "sandboxes"),
}
"""kind → (API group, version, plural) of every kind the driver touches."""


class NotFound(Exception):
    """The object does not exist (404)."""


class Conflict(Exception):
    """409: the object already exists (create) or changed since it was read (replace, patch)."""


@functools.cache
def _resource(kind: str) -> Any:
    """lightkube's generic resource class of ``kind`` (a ``dict`` subclass). Typed ``Any``:
    lightkube's overloads are written for its model classes, and this module is the one
    place that crosses from its types into plain dicts (``_obj``). Cached: lightkube
    registers each class once and refuses a second one for a core kind."""
    group, version, plural = _KINDS[kind]
    res: type[GenericNamespacedResource] = create_namespaced_resource(group, version, kind, plural)
    return res


def _obj(value: Any) -> Obj:
    """A generic resource (a dict subclass) as a plain dict; TypeError for anything else."""
    if not isinstance(value, dict):
        raise TypeError(f"expected an object from the API, got {type(value).__name__}")
    return dict(value)


def load_config(cfg: KubeSettings, env: Mapping[str, str] | None = None) -> SingleConfig:
    """The cluster to talk to: ``cfg.kubeconfig`` (and ``cfg.context``) when set; else the
    pod's service account when running in a cluster; else ``$KUBECONFIG`` or
    ``~/.kube/config``. PermanentError when none can be loaded."""
    env = os.environ if env is None else env
    try:
        if cfg.kubeconfig:
            single = KubeConfig.from_file(cfg.kubeconfig).get(context_name=cfg.context)
        elif env.get("KUBERNETES_SERVICE_HOST"):
            single = KubeConfig.from_service_account().get()
        else:
            path = env.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
            single = KubeConfig.from_file(path).get(context_name=cfg.context)
    except (ConfigError, OSError, KeyError, ValueError) as exc:
        raise PermanentError(f"kubernetes: cannot load a cluster config: {exc}") from exc
    if single is None:
        raise PermanentError("kubernetes: the kubeconfig has no current context; set `context`")
    return single


def _labels(selector: str) -> dict[str, Any]:
    """``k=v,k2=v2`` as lightkube's ``labels`` argument."""
    out: dict[str, Any] = {}
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        out[key] = value
    return out


class KubeApi:
    """Dict-in, dict-out calls on the namespace ``namespace`` (module docstring)."""

    def __init__(self, config: SingleConfig, namespace: str, timeout: float = 15.0) -> None:
        self.namespace = namespace
        # httpx logs every request at INFO: one line per API call would drown the log
        logging.getLogger("httpx2").setLevel(
            max(logging.WARNING, logging.getLogger("httpx2").level)
        )
        self.client = Client(
            config=config,
            namespace=namespace,
            field_manager=FIELD_MANAGER,
            timeout=httpx2.Timeout(timeout),
            trust_env=False,
        )

    @classmethod
    def for_server(cls, url: str, namespace: str, token: str) -> KubeApi:
        """A client of the API server at ``url`` with a bearer ``token`` (the tests' stand-in)."""
        kc = KubeConfig.from_one(
            cluster=Cluster(server=url), user=User(token=token), namespace=namespace
        )
        single = kc.get()
        assert single is not None  # from_server always makes one context
        return cls(single, namespace)

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()

    # ------------------------------------------------------------ errors

    @staticmethod
    def _fail(verb: str, kind: str, name: str, exc: Exception) -> Exception:
        what = f"kubernetes: {verb} {kind}/{name}"
        if isinstance(exc, ApiError):
            code = exc.status.code or 0
            msg = exc.status.message or str(exc)
            if code == 404:
                return NotFound(f"{what}: {msg}")
            if code == 409:
                return Conflict(f"{what}: {msg}")
            if code >= 500 or code == 429:
                return TransientError(f"{what}: {code} {msg}")
            if code == 403:
                return PermanentError(
                    f"{what}: forbidden ({msg}); the controller's Role must allow it "
                    "(deploy/kubernetes/role.yaml)"
                )
            return PermanentError(f"{what}: {code} {msg}")
        return TransientError(f"{what}: {exc}")

    # ------------------------------------------------------------ verbs

    def get(self, kind: str, name: str) -> Obj | None:
        """The object, or None when it does not exist."""
        try:
            return _obj(self.client.get(_resource(kind), name))
        except (ApiError, httpx2.HTTPError) as exc:
            err = self._fail("get", kind, name, exc)
            if isinstance(err, NotFound):
                return None
            raise err from exc

    def create(self, obj: Obj) -> Obj:
        """Create ``obj``; Conflict when it exists."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        try:
            return _obj(self.client.create(_resource(kind).from_dict(obj)))
        except (ApiError, httpx2.HTTPError) as exc:
            raise self._fail("create", kind, name, exc) from exc

    def replace(self, obj: Obj) -> Obj:
        """PUT ``obj`` (its ``metadata.resourceVersion`` is the precondition: Conflict if stale)."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        try:
            return _obj(self.client.replace(_resource(kind).from_dict(obj)))
        except (ApiError, httpx2.HTTPError) as exc:
            raise self._fail("replace", kind, name, exc) from exc

    def patch(self, kind: str, name: str, patch: Obj, *, strategic: bool = False) -> Obj:
        """A JSON merge patch (RFC 7386), or a strategic merge patch for built-in kinds."""
        ptype = PatchType.STRATEGIC if strategic else PatchType.MERGE
        try:
            return _obj(self.client.patch(_resource(kind), name, patch, patch_type=ptype))
        except (ApiError, httpx2.HTTPError) as exc:
            raise self._fail("patch", kind, name, exc) from exc

    def delete(self, kind: str, name: str) -> bool:
        """Delete (background propagation: owned pods go too); False when it was absent."""
        try:
            self.client.delete(_resource(kind), name)
        except (ApiError, httpx2.HTTPError) as exc:
            err = self._fail("delete", kind, name, exc)
            if isinstance(err, NotFound):
                return False
            raise err from exc
        return True

    def list(self, kind: str, selector: str) -> list[Obj]:
        """Every ``kind`` in the namespace whose labels match ``selector`` (``k=v,...``)."""
        return self.list_at(kind, selector)[0]

    def list_at(self, kind: str, selector: str) -> tuple[builtins.list[Obj], str]:
        """``list`` and the collection's ``resourceVersion`` (where a watch starts from)."""
        try:
            found = self.client.list(_resource(kind), labels=_labels(selector))
            items = [_obj(o) for o in found]
            return items, str(found.resourceVersion)
        except (ApiError, httpx2.HTTPError) as exc:
            raise self._fail("list", kind, selector, exc) from exc

    def watch(self, kind: str, selector: str, since: str) -> Iterator[tuple[str, Obj]]:
        """``(event type, object)`` for changes of ``kind`` matching ``selector`` after
        resourceVersion ``since``, until an error (lightkube re-watches from the last
        resourceVersion it saw when the server ends a watch)."""
        try:
            found = self.client.watch(
                _resource(kind), labels=_labels(selector), resource_version=since
            )
            for event, obj in found:
                yield str(event), _obj(obj)
        except (ApiError, httpx2.HTTPError) as exc:
            raise self._fail("watch", kind, selector, exc) from exc

    def logs(self, pod: str, container: str, tail: int, limit: int = LOG_LIMIT_BYTES) -> str:
        """The last ``tail`` lines of ``container`` in ``pod``, at most ``limit`` bytes of them
        (``tailLines`` and ``limitBytes``; the read also stops at ``limit`` whatever the server
        sends: a harness that logs one endless line cannot fill the controller's memory).
        Undecodable bytes are replaced. NotFound without the pod.
        """
        # lightkube's Client.log has no limitBytes: the same request, one parameter more
        http = self.client._client
        try:
            br = http.prepare_request(
                "get",
                PodLog,
                name=pod,
                params={"container": container, "tailLines": tail, "limitBytes": limit},
            )
            resp = http.send(http.build_adapter_request(br), stream=True)
            try:
                if resp.is_error:
                    resp.read()  # a Status object from the API server, not the agent's log
                http.raise_for_status(resp)  # type: ignore[no-untyped-call]
                data = bytearray()
                for chunk in resp.iter_bytes():
                    data += chunk[: limit - len(data)]
                    if len(data) >= limit:
                        break
            finally:
                resp.close()
        except (ApiError, httpx2.HTTPError) as exc:
            raise self._fail("logs", "Pod", pod, exc) from exc
        return data.decode(errors="replace")
