"""deploy/kubernetes: the controller's manifests are valid, agree with each other and with
the driver, and the Role allows exactly what the driver does (and no more)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from controller.config import load_config
from controller.drivers.kubernetes.api import KubeApi
from controller.drivers.kubernetes.driver import KubernetesDriver
from controller.drivers.kubernetes.settings import Workload
from controller.model import Phase
from controller.paths import Layout
from tests.kubernetes.helpers import deployment
from tests.kubernetes.schemas import validate
from tests.kubernetes.standin import KINDS, FakeRunner, StandIn

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"


def manifests() -> dict[str, dict[str, Any]]:
    kust = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    return {name: yaml.safe_load((DEPLOY / name).read_text()) for name in kust["resources"]}


def test_kustomization_lists_every_manifest_and_each_is_valid() -> None:
    kust = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    on_disk = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml", "config.yaml"}
    assert set(kust["resources"]) == on_disk
    for name, obj in manifests().items():
        validate(obj)
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == kust["namespace"], name


def test_the_controller_config_agrees_with_the_manifests() -> None:
    cfg = load_config(DEPLOY / "config.yaml")
    m = manifests()
    dep = m["deployment.yaml"]
    svc = m["service.yaml"]
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    # agents' NetworkPolicies let in only the controller: its pods must carry those labels
    assert dict(cfg.kubernetes.controller_labels).items() <= pod_labels.items()
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    # the URL agents are given reaches the Service's api port, by a name the listener accepts
    url = urlsplit(cfg.kubernetes.api_url)
    assert url.hostname is not None and url.hostname.split(".")[0] == svc["metadata"]["name"]
    assert url.hostname in cfg.api.hosts  # type: ignore[union-attr]
    ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    assert url.port == ports["api"] == cfg.api.port  # type: ignore[union-attr]
    assert cfg.git is not None and cfg.git.port == ports["git"]
    assert cfg.kubernetes.namespace == "hyperhive"
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["command"][-1] == "/etc/hyperhive/config.yaml"


def allowed(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    out = set()
    for rule in role["rules"]:
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                for v in rule["verbs"]:
                    out.add((g, r, v))
    return out


def request_permission(method: str, path: str) -> tuple[str, str, str]:
    """The RBAC (apiGroup, resource, verb) an API request needs."""
    url = urlsplit(path)
    segs = [s for s in url.path.split("/") if s]
    if segs[0] == "api":
        group, rest = "", segs[2:]
    else:
        group, rest = segs[1], segs[3:]
    resource = rest[2]
    named = len(rest) > 3
    if len(rest) > 4:
        resource += "/" + rest[4]
    if method == "GET":
        verb = "get" if named else ("watch" if "watch=" in url.query else "list")
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
    assert KINDS[rest[2]]
    return group, resource, verb


def life(tmp_path: Path, workload: Workload) -> set[tuple[str, str, str]]:
    """Run the driver through an agent's whole life on the stand-in with ``workload``;
    the permissions of every request it made."""
    runner = FakeRunner()
    standin = StandIn(runner)
    standin.start()
    cfg = load_config(DEPLOY / "config.yaml")
    cfg = replace(cfg, kubernetes=replace(cfg.kubernetes, workload=workload))
    api = KubeApi.for_server(standin.url, cfg.kubernetes.namespace, standin.token)
    driver = KubernetesDriver(Layout(tmp_path / "s", tmp_path / "r"), cfg, api)
    pod = "hh-alice-agent" if workload is Workload.SANDBOX else "hh-alice-agent-0"
    try:
        driver.generation()  # starts the watches
        driver.create(deployment("alice"), lambda _: None)
        standin.wait_for(lambda: ("hyperhive", pod) in standin.runs)
        driver.observe()
        driver.journal("alice")
        driver.apply_manifest(deployment("alice", cfg="c2"))
        driver.create(deployment("alice", cfg="c3"), lambda _: None)
        driver.restart("alice")
        driver.stop("alice")
        driver.start("alice")
        standin.wait_for(lambda: ("hyperhive", pod) in standin.runs)
        standin.backoff = standin.backoff_cap = 30.0
        standin.wait_for(lambda: standin.runs[("hyperhive", pod)].container is not None)
        runner.crash(pod, 2)
        standin.wait_for(lambda: standin.runs[("hyperhive", pod)].container is None)
        assert driver.observe()["alice"].phase is Phase.FAILED
        driver.start("alice")
        driver.destroy("alice")
        driver.tombstones()
        driver.purge("alice")
        standin.wait_for(lambda: driver.watching)
    finally:
        driver.close()
        standin.stop()
    return {request_permission(m, p) for m, p in standin.requests}


def test_the_role_is_exactly_what_the_driver_does(tmp_path: Path) -> None:
    """Every request the driver made in an agent's life, with either workload kind, is
    allowed by role.yaml; and role.yaml grants nothing it never asked for."""
    needed = life(tmp_path / "a", Workload.STATEFULSET) | life(tmp_path / "b", Workload.SANDBOX)
    role = allowed(manifests()["role.yaml"])
    assert needed <= role, sorted(needed - role)
    assert role <= needed, sorted(role - needed)
